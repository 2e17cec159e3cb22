"""Operator commands: ``doctor``, ``rooms``, ``link``, ``db`` and ``healthcheck``.

``bot/ops/cli.py`` registers :data:`COMMANDS`; they live here so the CLI module
stays a thin list of entry points that several people can add to.

Why they look like this:

* They act through the same code as the running bot (``Rooms.revoke``, the
  outbox, the store's claims), so ending a room from a terminal is as safe
  next to running replicas as ``/meet end`` is: the room is claimed first, and
  the Slack edits it owes are leased rows that nobody sends twice.
* Every change is audited with actor ``cli`` (and the OS user in the detail).
* People get aligned tables; scripts get ``--json``. Progress bars go to
  stderr so ``--json`` output stays parseable.
* A join link is a credential: ``meetbot link`` prints it to stdout and
  nowhere else (no log line carries it).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bot.ops.common import settings_or_exit

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.ops.doctor import Check
    from bot.services import Services
    from bot.store import Store

__all__ = ["COMMANDS", "render_checks"]

USER_ID_RE = re.compile(r"^[UW][A-Z0-9]{2,31}$")
HEALTHCHECK_TIMEOUT_S = 2.0
CLI_ACTOR = "cli"


_settings = settings_or_exit


def _quiet_logging(settings: Settings | None, *, verbose: bool = False) -> None:
    """Operator tools print results; logs only for warnings (DEBUG when asked for)."""
    from bot.logs import setup_logging

    debug = verbose or (settings is not None and settings.log_level == "DEBUG")
    level = "DEBUG" if debug else "WARNING"
    fmt = settings.log_format if settings is not None else "text"
    setup_logging(level, fmt, settings.secrets() if settings is not None else ())


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


# --------------------------------------------------------------------------- doctor

_SYMBOL = {"ok": ("✓", "green"), "fail": ("✗", "red"), "warn": ("!", "yellow"), "skip": ("-", None)}


def render_checks(checks: Sequence[Check], *, verbose: bool = False, width: int = 100) -> str:
    """The checklist as text: a symbol per check, the fix under each ✗ and !."""
    title_width = max((len(c.title) for c in checks), default=10) + 2
    lines: list[str] = []
    for c in checks:
        symbol, colour = _SYMBOL[c.status.value]
        lines.append(
            f"  {click.style(symbol, fg=colour, bold=True)} {c.title:<{title_width}}{c.summary}"
        )
        indent = " " * (4 + title_width)
        if c.status.value in ("fail", "warn") or verbose:
            for detail in c.details:
                lines.append(_wrap(detail, width, indent + "· ", indent + "  "))
        if c.fix and c.status.value in ("fail", "warn"):
            for i, paragraph in enumerate(c.fix.split("\n")):
                first = indent + ("fix: " if i == 0 else "     ")
                lines.append(_wrap(paragraph, width, first, indent + "     "))
    fails = sum(c.status.value == "fail" for c in checks)
    warns = sum(c.status.value == "warn" for c in checks)
    if fails:
        verdict = click.style(f"{fails} problem(s) to fix", fg="red", bold=True)
    else:
        verdict = click.style("no problems", fg="green", bold=True)
    if warns:
        verdict += f", {warns} warning(s)"
    lines.append("")
    lines.append(verdict)
    return "\n".join(lines)


def _wrap(text: str, width: int, first: str, rest: str) -> str:
    # Never break inside a word: a URL the operator must copy stays on one line.
    return textwrap.fill(
        text,
        width=width,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The Slack app manifest to compare scopes with (default: ./manifest.yml).",
)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds per call.")
@click.option("-v", "--verbose", is_flag=True, help="Show all details and debug logs.")
def doctor(as_json: bool, manifest: Path | None, timeout: float, verbose: bool) -> None:
    """Check the configuration, database, Slack and AMS; say how to fix each problem.

    Exits 0 when nothing failed (warnings allowed), 1 otherwise.
    """
    from bot.config import ConfigError, load_settings
    from bot.ops.doctor import diagnose, failed

    try:
        loaded: Settings | None = load_settings()
    except ConfigError:
        loaded = None
    if verbose:
        _quiet_logging(loaded, verbose=True)
    else:  # the checklist says it all; library warnings would only repeat it
        from bot.logs import setup_logging

        setup_logging("CRITICAL", "text", loaded.secrets() if loaded else ())
    settings, checks = diagnose(manifest=manifest, timeout=timeout)
    if as_json:
        payload = {
            "ok": not failed(checks),
            "checks": [c.to_dict() for c in checks],
            "settings": settings.redacted() if settings is not None else None,
        }
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        click.echo("meetbot doctor")
        click.echo(render_checks(checks, verbose=verbose))
    sys.exit(1 if failed(checks) else 0)


# --------------------------------------------------------------------------- shared plumbing


def _store(settings: Settings) -> Store:
    """The bot's store; refuses to conjure an empty SQLite file out of a typo."""
    from bot.ops.doctor import sqlite_missing
    from bot.store import Store

    missing = sqlite_missing(settings.database_url)
    if missing:
        raise click.ClickException(
            f"the database file {missing} does not exist: check DATABASE_URL, or create it "
            "with `meetbot db upgrade`"
        )
    return Store(settings.database_url)


def _services(settings: Settings) -> Services:
    """The bot as ``serve`` builds it (``bot.services``), started never: operator commands
    call its parts directly. Leases it takes are named ``cli:<host>:<random>``."""
    from bot.services import Services
    from bot.slack.outbox import worker_id

    _store(settings).dispose()  # refuses to conjure an empty SQLite file out of a typo
    return Services(settings, owner=f"cli:{worker_id()}"[:64])  # lease columns are 64 wide


@contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    """Turn a database failure into one readable line (secrets redacted), exit 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.logs import redact

    try:
        yield
    except SQLAlchemyError as e:
        first = redact(str(e).splitlines()[0] if str(e) else type(e).__name__, settings.secrets())
        raise click.ClickException(
            f"database error: {first[:300]} (is it migrated? `meetbot db upgrade`)"
        ) from None


def _when(ts: int | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _iso(ts: int | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, for people reading a terminal."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = []
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def _now() -> int:
    from bot.store import now

    return now()


# --------------------------------------------------------------------------- rooms


def room_rows(store: Store, *, include_all: bool, limit: int) -> list[dict[str, Any]]:
    """Rooms with their number of people, open ones by end time, all ones newest first."""
    from sqlalchemy import func, select

    from bot.store import Grant, Room, RoomState

    # Open rooms: who can join now. All rooms: everyone who was ever in.
    people_q = select(Grant.room_id, func.count().label("n")).group_by(Grant.room_id)
    if not include_all:
        people_q = people_q.where(Grant.revoked_at.is_(None))
    people = people_q.subquery()
    q = select(Room, func.coalesce(people.c.n, 0)).outerjoin(people, people.c.room_id == Room.id)
    if include_all:
        q = q.order_by(Room.created_at.desc())
    else:
        q = q.where(Room.state.in_(RoomState.OPEN)).order_by(Room.expires_at)
    with store.read() as s:
        result = s.execute(q.limit(limit)).all()
    return [
        {
            "id": room.id,
            "state": room.state,
            "team_id": room.team_id,
            "owner_id": room.owner_id,
            "channel_id": room.channel_id,
            "topic": room.topic,
            "people": int(n),
            "created_at": room.created_at,
            "expires_at": room.expires_at,
            "ended_at": room.ended_at,
            "end_reason": room.end_reason,
        }
        for room, n in result
    ]


def _left(expires_at: int, now: int) -> str:
    from bot.durations import format_duration

    if expires_at <= now:
        return f"overdue {format_duration(now - expires_at)}"
    return format_duration(expires_at - now)


@click.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Ended and failed rooms too, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--limit", type=click.IntRange(1), default=500, show_default=True)
@click.pass_context
def rooms(ctx: click.Context, show_all: bool, as_json: bool, limit: int) -> None:
    """List open rooms (or --all), or end them: `meetbot rooms end ID`."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    _quiet_logging(settings)
    store = _store(settings)
    try:
        with _database_errors(settings):
            rows = room_rows(store, include_all=show_all, limit=limit)
    finally:
        store.dispose()
    if as_json:
        for r in rows:
            for key in ("created_at", "expires_at", "ended_at"):
                r[key.replace("_at", "")] = _iso(r[key])
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No rooms." if show_all else "No open rooms.")
        return
    now = _now()
    headers = ["ROOM", "STATE", "OWNER", "CHANNEL", "PEOPLE", "CREATED (UTC)"]
    headers += ["ENDED (UTC)", "TOPIC"] if show_all else ["ENDS (UTC)", "LEFT", "TOPIC"]
    body = []
    for r in rows:
        line = [r["id"], r["state"], r["owner_id"], r["channel_id"], r["people"]]
        line.append(_when(r["created_at"]))
        if show_all:
            line.append(_when(r["ended_at"]))
        else:
            line += [_when(r["expires_at"]), _left(r["expires_at"], now)]
        topic = r["topic"] or ""
        line.append(topic if len(topic) <= 40 else topic[:39] + "…")
        body.append(line)
    click.echo(table(headers, body))
    click.echo(f"\n{len(rows)} room(s)" + (f" (limit {limit})" if len(rows) == limit else ""))


@dataclass
class EndResult:
    room_id: str
    ok: bool
    message: str


def end_room(ops: Services, room_id: str, *, reason: str) -> EndResult:
    """Revoke one room as ``/meet end`` would, actor ``cli``; says why when it cannot."""
    from bot.store import RoomState

    room = ops.store.room(room_id)
    if room is None:
        return EndResult(room_id, False, "no such room")
    if room.state != RoomState.ACTIVE:
        return EndResult(room_id, False, f"not active (state {room.state})")
    if ops.rooms.revoke(room_id, actor=CLI_ACTOR, reason=reason):
        return EndResult(room_id, True, "ended")
    after = ops.store.room(room_id)
    if after is not None and after.state == RoomState.REVOKED:
        return EndResult(room_id, True, "ended (by another worker)")
    if after is not None and after.lease_until and after.lease_until >= _now():
        return EndResult(room_id, False, "another worker is ending it right now")
    return EndResult(room_id, False, "AMS did not confirm (see the warning above); will be retried")


def send_owed_edits(ops: Services, room_ids: Sequence[str], *, progress: bool) -> tuple[int, int]:
    """Send the Slack edits the ended rooms owe (DMs and cards say "ended").

    Claims only these rooms' rows, so work owed elsewhere stays with the running
    bot. Rows Slack's pace cannot take now stay pending for the bot to send.
    Returns ``(sent, left)``.
    """
    from bot.store import OutboxState

    rows = []
    for room_id in room_ids:
        rows += ops.store.claim_outbox(
            ops.outbox.owner, at=_now(), lease=ops.outbox.lease, limit=1000, room_id=room_id
        )
    if not rows:
        return 0, 0
    if progress and len(rows) > 1:
        with click.progressbar(rows, label="Editing Slack messages", file=sys.stderr) as bar:
            for row in bar:
                ops.outbox.send(row)
    else:
        for row in rows:
            ops.outbox.send(row)
    left = 0
    for room_id in room_ids:
        left += sum(r.state == OutboxState.PENDING for r in ops.store.outbox_rows(room_id))
    return len(rows), left


def _expired_ids(store: Store, limit: int) -> list[str]:
    from sqlalchemy import select

    from bot.store import Room, RoomState

    with store.read() as s:
        q = (
            select(Room.id)
            .where(Room.state == RoomState.ACTIVE, Room.expires_at <= _now())
            .order_by(Room.expires_at)
            .limit(limit)
        )
        return list(s.scalars(q))


def _active_ids(store: Store) -> list[str]:
    from sqlalchemy import select

    from bot.store import Room, RoomState

    with store.read() as s:
        return list(s.scalars(select(Room.id).where(Room.state == RoomState.ACTIVE)))


@rooms.command("end")
@click.argument("room_ids", nargs=-1)
@click.option(
    "--all-expired", is_flag=True, help="End every active room past its end (scheduler stuck?)."
)
@click.option("--all", "end_all", is_flag=True, help="End EVERY active room (an emergency).")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
@click.option("--reason", default=None, help="Why, for the audit log.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def rooms_end(
    room_ids: tuple[str, ...],
    all_expired: bool,
    end_all: bool,
    yes: bool,
    reason: str | None,
    as_json: bool,
) -> None:
    """End rooms: stop and delete them on AMS, and edit their DMs and channel cards.

    Exits 1 if any room could not be ended.
    """
    if sum(bool(x) for x in (room_ids, all_expired, end_all)) != 1:
        raise click.UsageError("give room ids, or --all-expired, or --all (one of them)")
    settings = _settings()
    _quiet_logging(settings)
    ops = _services(settings)
    try:
        with _database_errors(settings):
            if all_expired:
                ids = _expired_ids(ops.store, limit=100_000)
            elif end_all:
                ids = _active_ids(ops.store)
                if ids and not yes:
                    click.confirm(
                        f"End all {len(ids)} active rooms now? Everyone in them is cut off",
                        abort=True,
                        err=True,
                    )
            else:
                ids = list(room_ids)
            why = reason or (
                "time is up (ended from the command line)"
                if all_expired
                else f"ended from the command line by {_os_user()}"
            )
            results = _end_many(ops, ids, reason=why, progress=not as_json)
            ended = [r.room_id for r in results if r.ok]
            sent, left = send_owed_edits(ops, ended, progress=not as_json)
    finally:
        ops.stop()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "results": [r.__dict__ for r in results],
                    "slack_edits_sent": sent,
                    "slack_edits_left": left,
                },
                indent=2,
            )
        )
    else:
        if not results:
            click.echo("No rooms to end.")
        for r in results:
            mark = click.style("✓", fg="green") if r.ok else click.style("✗", fg="red")
            click.echo(f"{mark} {r.room_id}: {r.message}")
        if sent:
            click.echo(f"Slack: {sent - left} message edit(s) sent", nl=False)
            click.echo(f", {left} left for the running bot" if left else "")
    if any(not r.ok for r in results):
        sys.exit(1)


def _end_many(ops: Services, ids: list[str], *, reason: str, progress: bool) -> list[EndResult]:
    if progress and len(ids) > 1:
        with click.progressbar(ids, label="Ending rooms", file=sys.stderr) as bar:
            return [end_room(ops, room_id, reason=reason) for room_id in bar]
    return [end_room(ops, room_id, reason=reason) for room_id in ids]


# --------------------------------------------------------------------------- link


class LinkRefused(Exception):
    """Why no link can be made; the message is for the operator."""


def support_link(
    services: Services,
    room_id: str,
    user_id: str,
    *,
    actor: str = CLI_ACTOR,
    display_name: str | None = None,
) -> tuple[str, int]:
    """A personal join link for ``user_id`` through the room's grant (made when missing).

    Only for someone the admission policy admits (``bot/rooms/admission.py``):
    an invitee, the owner, a member of the room's channel; asking Slack with the
    room's workspace token. The grant and an audit row are committed before the
    token exists, so every link handed out is on record. Returns ``(link, exp)``;
    never logs the link.
    """
    from bot.rooms.admission import plain
    from bot.store import RoomState
    from bot.tokens import circle_link, mint_join_token

    store, settings = services.store, services.settings
    try:
        _, secret = services.secrets.current()
    except Exception as e:  # NoCurrentSecret, VaultError: their messages hold no secret
        raise LinkRefused(f"no stream secret to sign with: {e}") from None
    if not secret:
        raise LinkRefused("no stream secret to sign with (AMS_JWT_SECRET is unset)")
    room = store.room(room_id)
    if room is None:
        raise LinkRefused(f"no room {room_id}")
    if room.state != RoomState.ACTIVE:
        raise LinkRefused(f"room {room_id} is not active (state {room.state})")
    grant, refusal = services.rooms.grant_for(
        room, user_id, via="cli", actor=actor, display_name=display_name
    )
    if refusal is not None:
        raise LinkRefused(f"{plain(refusal.about)}; not handing out a link")
    assert grant is not None
    with store.write() as tx:
        store.audit(
            tx,
            "link",
            actor=actor,
            team_id=room.team_id,
            room_id=room_id,
            user=user_id,
            os_user=_os_user(),
        )
    token = mint_join_token(
        room_id=room_id, user_id=user_id, exp=grant.exp, jti=grant.jti, secret=secret
    )
    name = grant.display_name or display_name
    return circle_link(settings.ams_url, settings.ams_app, room_id, token, name), grant.exp


@click.command()
@click.argument("room_id")
@click.option("--user", "user_id", required=True, help="Slack user id, e.g. U012ABCDEF.")
@click.option("--name", default=None, help="Display name to prefill in Circle.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the bare link.")
def link(room_id: str, user_id: str, name: str | None, as_json: bool) -> None:
    """Print a personal join link for USER in ROOM_ID (for support), and audit it.

    The link is a credential: it goes to stdout only. Send it to that person only.
    """
    user_id = user_id.strip().upper()
    if not USER_ID_RE.fullmatch(user_id):
        raise click.BadParameter("a Slack user id looks like U012ABCDEF", param_hint="--user")
    settings = _settings()
    _quiet_logging(settings)
    services = _services(settings)
    try:
        with _database_errors(settings):
            url, exp = support_link(services, room_id, user_id, display_name=name)
    except LinkRefused as e:
        raise click.ClickException(str(e)) from None
    finally:
        services.stop()
    if as_json:
        click.echo(json.dumps({"room_id": room_id, "user": user_id, "link": url, "exp": exp}))
    else:
        click.echo(url)
        click.echo(f"(valid until {_when(exp)} UTC; for {user_id} only)", err=True)


# --------------------------------------------------------------------------- db


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Bring the schema to this meetbot's newest revision (safe to run again)."""
    from alembic.runtime.migration import MigrationContext

    from bot.store import Store

    settings = _settings()
    _quiet_logging(settings)
    store = Store(settings.database_url)
    try:
        with _database_errors(settings):
            store.migrate()
            with store.engine.connect() as conn:
                heads = MigrationContext.configure(conn).get_current_heads()
    finally:
        store.dispose()
    click.echo(f"database schema at {', '.join(heads)} (head)")


# --------------------------------------------------------------------------- healthcheck


def _port() -> str:
    """PORT as ``serve`` sees it: the environment first, then ``./.env``, else 3000."""
    port = os.environ.get("PORT")
    dotenv_path = Path.cwd() / ".env"
    if not port and dotenv_path.is_file():
        from dotenv import dotenv_values

        port = dotenv_values(dotenv_path).get("PORT")
    return (port or "3000").strip()


@click.command()
@click.option("--url", default=None, help="Default: http://127.0.0.1:$PORT/healthz.")
@click.option("--timeout", type=float, default=HEALTHCHECK_TIMEOUT_S, show_default=True)
def healthcheck(url: str | None, timeout: float) -> None:
    """Exit 0 when the bot on this machine answers /healthz, else 1 (Docker HEALTHCHECK).

    Needs no configuration beyond PORT, so a broken .env still yields a clear
    "unhealthy" rather than a crash of the probe itself.
    """
    import urllib.error
    import urllib.request

    target = url or f"http://127.0.0.1:{_port()}/healthz"
    if not target.startswith(("http://", "https://")):
        click.echo(f"unhealthy: {target} is not an http(s) URL", err=True)
        sys.exit(1)
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:  # noqa: S310 - checked above
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except Exception as e:
        click.echo(f"unhealthy: {target}: {type(e).__name__}", err=True)
        sys.exit(1)
    if status != 200:
        click.echo(f"unhealthy: {target} answered HTTP {status}", err=True)
        sys.exit(1)
    click.echo("healthy")


#: Registered on ``meetbot`` by ``bot/ops/cli.py``.
@click.command("reconcile")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def reconcile_now(as_json: bool) -> None:
    """Compare AMS's rooms with the database now (the bot does it every
    MEETBOT_RECONCILE_INTERVAL): remove rooms marked as meetbot's that the
    database does not know or knows as ended, and end rooms gone from AMS."""
    import time as _time

    from bot.ams.reconcile import reconcile

    settings = _settings()
    _quiet_logging(settings)
    ops = _services(settings)

    def walk(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        items = list(items)
        if as_json or not items:
            yield from items
            return
        with click.progressbar(items, label="Checking rooms on AMS", file=sys.stderr) as bar:
            yield from bar

    try:
        with _database_errors(settings):
            out = reconcile(
                ops.store,
                ops.ams,
                ops.rooms.mark_vanished,
                now=int(_time.time()),
                remove=ops.rooms.end_on_ams,
                progress=walk,
            )
            sent, left = send_owed_edits(ops, out.vanished, progress=False)
    finally:
        ops.stop()
    if as_json:
        click.echo(json.dumps({"seen": out.seen, "removed": out.deleted, "ended": out.vanished}))
    else:
        click.echo(str(out))


COMMANDS: list[click.Command] = [doctor, rooms, link, db, healthcheck, reconcile_now]
