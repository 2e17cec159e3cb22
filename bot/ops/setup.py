"""``meetbot setup``: from nothing to a ``.env`` that ``meetbot doctor`` passes.

Why it looks like this:

* Every answer is checked by the rules ``meetbot serve`` applies
  (:func:`bot.config.load_settings`), not by a second set of rules here: a
  value is tried in an otherwise valid environment and the problems that name
  its variable are the error. A bad answer at a prompt is said and asked
  again; a bad flag stops with exit code 2, before anything is written.
* ``.env`` holds secrets, so it is created with mode 0600 under a temporary
  name in the same directory and renamed over the old one: no other user can
  read it at any moment, and a crash leaves either the old file or the new one.
* An existing ``.env`` is replaced only after a yes (or ``--force``); the
  variables in it that setup does not ask for are kept.
* Secrets are never printed: prompts hide what is typed, and the summary names
  the variables written, not their values.
* The Slack app manifest is printed with the public URL filled in, ready to
  paste, and the run ends with ``meetbot doctor``'s checklist. Its exit code is
  setup's: 0 when nothing failed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bot.config import ConfigError, load_settings, variable_names

__all__ = ["ASKED", "Question", "setup_command", "slack_manifest", "write_env_file"]

#: A valid environment to try one answer in (values nobody will use).
_VALID_BASE: Mapping[str, str] = {
    "SLACK_BOT_TOKEN": "xoxb-setup-check",
    "SLACK_SIGNING_SECRET": "setup-check",
    "AMS_URL": "https://ams.invalid",
    "AMS_JWT_SECRET": "s" * 32,
}

#: manifest.yml's stand-in for the bot's public URL.
EXAMPLE_URL = "https://meetbot.example.com"


@dataclass(frozen=True)
class Question:
    """One setting setup asks for: its variable, flag, prompt and flag help."""

    name: str
    prompt: str
    help: str
    secret: bool = False
    required: bool = True

    @property
    def option(self) -> str:
        return self.name.removeprefix("MEETBOT_").lower()

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")


#: What setup asks for, in order. The Slack app is made first (its manifest
#: needs the public URL), then its token and secret can be copied.
ASKED: tuple[Question, ...] = (
    Question(
        "MEETBOT_PUBLIC_URL", "The bot's public HTTPS URL", "Where Slack and AMS reach the bot."
    ),
    Question(
        "SLACK_BOT_TOKEN", "Slack Bot User OAuth Token (xoxb-…)", "The bot token.", secret=True
    ),
    Question(
        "SLACK_SIGNING_SECRET", "Slack Signing Secret", "The app's signing secret.", secret=True
    ),
    Question(
        "AMS_URL",
        "AMS URL, e.g. https://ams.example.com:5443",
        "Ant Media Server's base URL.",
    ),
    Question("AMS_APP", "AMS application that hosts Circle", "Default: Conference."),
    Question(
        "AMS_JWT_SECRET",
        "The application's jwtStreamSecretKey",
        "The AMS application's stream secret.",
        secret=True,
    ),
    Question(
        "AMS_REST_JWT_SECRET",
        "The application's jwtSecretKey, if its REST JWT is on (empty: none)",
        "The AMS application's REST JWT secret.",
        secret=True,
        required=False,
    ),
    Question(
        "AMS_ADMIN_EMAIL",
        "AMS management user, for doctor and rotation (empty: none)",
        "AMS management login.",
        required=False,
    ),
    Question(
        "AMS_ADMIN_PASSWORD",
        "Its password",
        "AMS management password.",
        secret=True,
        required=False,
    ),
    Question(
        "DATABASE_URL",
        "Database URL (empty: the SQLite file meetbot.db, one process only)",
        "postgresql://… for several replicas (default: SQLite).",
        required=False,
    ),
)
_DEFAULTS = {"AMS_APP": "Conference"}


def problems_with(name: str, value: str) -> list[str]:
    """What ``load_settings`` says about ``name=value`` alone (secrets never echoed)."""
    try:
        load_settings({**_VALID_BASE, name: value})
    except ConfigError as e:
        return [p for p in e.problems if p.startswith(name)]
    return []


def _needs_quotes(value: str) -> bool:
    return any(c.isspace() or c in "'\"#\\" for c in value) or not value.isprintable()


def _checker(name: str) -> Callable[[str], str]:
    """A click ``value_proc``/callback body: the value, stripped, or a UsageError."""

    def check(value: str) -> str:
        value = value.strip()
        if not value:
            return value
        found = problems_with(name, value)
        if name == "MEETBOT_PUBLIC_URL" and not found and not value.startswith("https://"):
            found = [f"{name} must start with https:// (Slack sends requests to HTTPS only)"]
        if not found and _needs_quotes(value):
            # Quotes would be kept as part of the value by `docker --env-file` and
            # kubectl's --from-env-file: write only values every reader reads alike.
            found = [f"{name} must not contain spaces, quotes, '#' or a backslash in a .env"]
        if found:
            raise click.BadParameter("; ".join(found))
        return value

    return check


def _option_callback(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    check = _checker(name)

    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        return None if value is None else check(value)

    return callback


# --------------------------------------------------------------------------- the manifest


def slack_manifest(template: Path, public_url: str) -> str:
    """``manifest.yml`` with every URL pointing at ``public_url``, its how-to header dropped.

    The header's instructions (replace the example URL) no longer apply once
    the URL is filled in; the comments on scopes and settings stay.
    """
    lines = template.read_text(encoding="utf-8").splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines).replace(EXAMPLE_URL, public_url.rstrip("/")) + "\n"


# --------------------------------------------------------------------------- .env


def _dotenv_line(name: str, value: str) -> str:
    """``NAME=value``, bare when it can be (what setup asks for always can).

    A value kept from an old .env that needs quoting is single-quoted, which
    python-dotenv and compose read literally.
    """
    if not _needs_quotes(value):
        return f"{name}={value}"
    if "'" in value or "\n" in value or "\r" in value:
        raise click.UsageError(f"{name} in the old .env cannot be written back; fix it by hand")
    return f"{name}='{value}'"


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write ``values`` to ``path`` as a .env, readable by this user only from the start.

    The file is made under a temporary name in the same directory with mode
    0600 (``mkstemp``), filled, flushed to disk, then renamed over ``path``.
    """
    lines = [_dotenv_line(k, v) for k, v in values.items()]
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=".env.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)  # mkstemp's 0600 already; said outright, whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# Written by `meetbot setup`. Secrets: keep this file to yourself.\n")
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- the command


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    for q in reversed(ASKED):
        help_text = q.help + (
            " Shows in ps and shell history: prefer the prompt." if q.secret else ""
        )
        f = click.option(
            q.flag, q.option, default=None, callback=_option_callback(q.name), help=help_text
        )(f)
    return f


def _ask(q: Question) -> str:
    default = _DEFAULTS.get(q.name, None if q.required else "")
    return click.prompt(
        q.prompt,
        default=default,
        show_default=bool(_DEFAULTS.get(q.name)),
        hide_input=q.secret,
        value_proc=_checker(q.name),
    )


@click.command("setup")
@_options
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".env"),
    show_default=True,
    help="Where to write the settings (`meetbot serve` reads ./.env).",
)
@click.option("--force", is_flag=True, help="Replace an existing .env without asking.")
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The Slack app manifest to fill in (default: ./manifest.yml).",
)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="doctor: s per call.")
@click.option(
    "--no-check",
    is_flag=True,
    help="Only write .env and print the manifest: no database upgrade, no doctor "
    "(when the bot runs elsewhere, e.g. in Docker; run doctor there).",
)
def setup_command(
    env_file: Path,
    force: bool,
    manifest: Path | None,
    timeout: float,
    no_check: bool,
    **given: Any,
) -> None:
    """Ask for the public URL, AMS and the secrets; write .env; print the Slack
    manifest; run doctor.

    Values given as flags are not asked for. When every required value comes
    from flags, nothing else is asked (the optional ones stay unset), so
    scripts can run it. Exits 0 when doctor finds nothing failed.
    """
    from bot.ops.doctor import find_manifest

    template = find_manifest(manifest)
    if template is None or not template.is_file():
        raise click.UsageError(
            "manifest.yml not found: run from the meetbot directory or pass --manifest PATH"
        )
    values = {q.name: given[q.option] for q in ASKED if given[q.option]}
    interactive = any(not given[q.option] for q in ASKED if q.required)
    if env_file.exists() and not force:
        question = f"{env_file} exists. Replace it (variables setup does not ask for are kept)?"
        if not click.confirm(question, default=False):
            click.echo(f"Left {env_file} as it was; nothing written.", err=True)
            sys.exit(1)

    answered = set(values)
    for q in ASKED:
        skip = q.name in values or (not interactive and not q.required)
        if q.name == "AMS_ADMIN_PASSWORD" and not values.get("AMS_ADMIN_EMAIL"):
            skip = True  # no login, no password: an old one goes with the old email
            if "AMS_ADMIN_EMAIL" in answered:
                answered.add(q.name)
        if not skip:
            answered.add(q.name)  # left empty: unset, even if the old file had it
            answer = _ask(q)
            if answer:
                values[q.name] = answer
        if q.name == "MEETBOT_PUBLIC_URL":  # the Slack app comes first: its token is next
            _show_manifest(template, values[q.name])

    from dotenv import dotenv_values

    kept = {}
    if env_file.exists():
        old = dotenv_values(env_file)
        kept = {k: v for k, v in old.items() if k not in answered and v is not None}
    merged = {**kept, **values}
    try:
        load_settings(merged)
    except ConfigError as e:
        click.echo("meetbot setup: these settings would not start meetbot:", err=True)
        for problem in e.problems:
            click.echo(f"  {problem}", err=True)
        click.echo(f"Nothing written to {env_file}.", err=True)
        sys.exit(2)
    write_env_file(env_file, merged)
    click.echo(f"\nWrote {env_file} (readable by you only): {', '.join(values)}")
    if kept:
        click.echo(f"Kept from the old file: {', '.join(kept)}")
    shadowed = sorted(k for k in variable_names() if os.environ.get(k) and k in merged)
    if shadowed:
        click.echo(
            "Note: set in this shell's environment too, which wins over .env: "
            + ", ".join(shadowed)
        )
    if env_file.resolve() != (Path.cwd() / ".env").resolve():
        click.echo(f"`meetbot serve` reads ./.env: start it in {env_file.resolve().parent}.")
    if no_check:
        click.echo("Not checked (--no-check): run `meetbot doctor` where the bot runs.")
        return
    sys.exit(_migrate_and_check(merged, template, timeout))


def _show_manifest(template: Path, public_url: str) -> None:
    click.echo(
        "\nSlack app manifest: at https://api.slack.com/apps choose Create New App → "
        "From an app manifest, paste everything between the lines, install the app, "
        "then copy its Bot User OAuth Token and Signing Secret.\n"
    )
    click.echo("-" * 72)
    click.echo(slack_manifest(template, public_url), nl=False)
    click.echo("-" * 72 + "\n")


def _migrate_and_check(values: Mapping[str, str], manifest: Path, timeout: float) -> int:
    """Bring the database's schema up (as `meetbot db upgrade`), then doctor's checklist."""
    from bot.logs import redact, setup_logging
    from bot.ops.admin import render_checks
    from bot.ops.doctor import diagnose, failed
    from bot.store import Store

    # What `meetbot serve` will see: the environment wins over .env.
    env = {**values, **{k: v for k, v in os.environ.items() if k in variable_names()}}
    try:
        settings = load_settings(env)
    except ConfigError:
        settings = None  # doctor's first check lists the problems
    setup_logging("CRITICAL", "text", settings.secrets() if settings else ())
    if settings is not None:
        store = Store(settings.database_url)
        try:
            store.migrate()
            click.echo("Database: schema up to date.")
        except Exception as e:  # doctor below says what is wrong with it, and how to fix it
            first = redact(f"{type(e).__name__}: {e}".splitlines()[0], settings.secrets())
            click.echo(f"Database: not migrated ({first[:200]}).")
        finally:
            store.dispose()
    click.echo("\nmeetbot doctor")
    _, checks = diagnose(env, manifest=manifest, timeout=timeout)
    click.echo(render_checks(checks))
    if failed(checks):
        click.echo("\nFix what doctor marks ✗, then run `meetbot doctor` again.")
        return 1
    click.echo("\nReady: start it with `meetbot serve`.")
    return 0
