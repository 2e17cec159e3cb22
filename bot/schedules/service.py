"""Team-room schedules: database rows, fired exactly once by whichever replica claims them.

Why rows and not APScheduler jobs: every replica ticks (``bot/schedules/ticker.py``)
and APScheduler's job store is never shared, so the database is the only place
that can decide, once, that "the 09:30 standup of Tuesday" has been fired.

A firing has two steps, so that no side effect ever happens inside a claim:

1. **Claim** (one transaction, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
   ``BEGIN IMMEDIATE`` on SQLite): each due schedule gets an ``Occurrence`` row,
   unique per (schedule, run time), holding a fresh room id and a lease for the
   claimer, and its ``next_run_at`` moves on. Whoever commits first owns it.
2. **Fire** (outside that transaction): the lease holder opens the room through
   ``Rooms.open_room`` with the occurrence's room id. A replica that dies
   mid-fire leaves a lease that runs out; the next one fires with the *same*
   room id, so AMS ends up with one room whatever happened (``Rooms._create``
   finds its own room on AMS, or an active row, instead of making a second).

Missed runs (the bot was down) are fired only while they are younger than one
room-length, and only the newest one: a week of downtime never opens a burst
of stale rooms. Older ones become ``skipped`` occurrences, logged at WARNING.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bot.config import Settings
from bot.durations import format_duration
from bot.logs import ContextThreadPoolExecutor
from bot.rooms.service import OpenRequest, RoomError, Rooms
from bot.schedules.rules import Recurrence, next_run, parse_when
from bot.slack import messages
from bot.slack.gateway import SlackGateway, UnknownUser, acting_for
from bot.store import Occurrence, Room, RoomState, Schedule, Store
from bot.tokens import new_room_id

__all__ = [
    "FIRE_LEASE_S",
    "MAX_SCHEDULES_PER_CHANNEL",
    "OccurrenceState",
    "ScheduleError",
    "Schedules",
    "cancel_schedule",
    "describe",
    "list_schedules",
    "schedules_report",
    "slack_date",
]

log = logging.getLogger("meetbot.schedules")

#: How long a claimer may take to fire one occurrence before another replica may.
FIRE_LEASE_S = 120
#: Backoff after AMS (or Slack) refused a firing: 30 s, 60 s, ... up to 5 min.
RETRY_BASE_S = 30
RETRY_MAX_S = 300
#: A channel with more team rooms than this is abuse or a script gone wrong.
MAX_SCHEDULES_PER_CHANNEL = 25
MAX_NAME = 80
#: Bound on the catch-up walk through missed runs (hourly rules, 24 h rooms).
_MAX_CATCH_UP_STEPS = 200


class OccurrenceState:
    """pending → fired, or pending → failed (→ retried while in the window), or skipped."""

    PENDING = "pending"
    FIRED = "fired"
    SKIPPED = "skipped"
    FAILED = "failed"


class ScheduleError(Exception):
    """A refusal whose ``user_message`` can be shown to the Slack user as is."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


# -- presentation --------------------------------------------------------------------


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def slack_date(ts: int) -> str:
    """A date and time each reader sees in their own zone, with a UTC fallback."""
    fallback = _dt(ts).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(ts)}^{{date_short_pretty}} at {{time}}|{fallback}>"


def recurrence_of(s: Schedule) -> Recurrence:
    return Recurrence(s.kind, s.spec)  # type: ignore[arg-type]


def invitees_of(s: Schedule) -> list[str]:
    try:
        value = json.loads(s.invitees or "[]")
    except ValueError:
        return []
    return [str(u) for u in value] if isinstance(value, list) else []


def describe(s: Schedule) -> str:
    """One mrkdwn line for people: name, id, rule, length, who, and the next run."""
    rule = recurrence_of(s).describe(s.tz)
    who = invitees_of(s)
    line = (
        f"*{messages.escape(s.name)}* (`{s.id}`): {rule}, for {format_duration(s.duration)}, "
        f"in <#{s.channel_id}>, by <@{s.creator_id}>"
    )
    if who:
        line += ", with " + messages.mention_list(who)
    if s.active and s.next_run_at is not None:
        line += f". Next: {slack_date(s.next_run_at)}"
    elif s.cancelled_at is not None:
        line += ". Stopped"
    else:
        line += ". Finished"
    return line


# -- queries shared with the CLI (no Slack needed) ----------------------------------


def list_schedules(
    store: Store,
    team_id: str | None = None,
    *,
    channel_id: str | None = None,
    include_inactive: bool = False,
) -> list[Schedule]:
    """Schedules in id order; by default only those that will still open a room."""
    with store.read() as s:
        q = select(Schedule).order_by(Schedule.id)
        if team_id is not None:
            q = q.where(Schedule.team_id == team_id)
        if channel_id is not None:
            q = q.where(Schedule.channel_id == channel_id)
        if not include_inactive:
            q = q.where(Schedule.active.is_(True))
        return list(s.scalars(q))


def cancel_schedule(
    store: Store, schedule_id: int, *, actor: str, at: int, team_id: str | None = None
) -> Schedule | None:
    """Stop a schedule; None when there is no active one with that id (in that team).

    A conditional UPDATE, so two people stopping it at once both get a clear
    answer and exactly one audit row is written.
    """
    with store.write() as tx:
        q = update(Schedule).where(Schedule.id == schedule_id, Schedule.active.is_(True))
        if team_id is not None:
            q = q.where(Schedule.team_id == team_id)
        done = tx.execute(q.values(active=False, cancelled_at=at, next_run_at=None)).rowcount
        if not done:
            return None
        row = tx.get(Schedule, schedule_id)
        assert row is not None
        store.audit(
            tx, "unschedule", actor=actor, team_id=row.team_id, schedule_id=row.id, name=row.name
        )
        return row


def _as_dict(s: Schedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "team_id": s.team_id,
        "channel_id": s.channel_id,
        "creator_id": s.creator_id,
        "name": s.name,
        "when": recurrence_of(s).describe(),
        "kind": s.kind,
        "spec": s.spec,
        "tz": s.tz,
        "duration": s.duration,
        "invitees": invitees_of(s),
        "next_run_at": s.next_run_at,
        "next_run": _dt(s.next_run_at).isoformat() if s.next_run_at is not None else None,
        "active": bool(s.active),
        "created_at": s.created_at,
        "cancelled_at": s.cancelled_at,
    }


def schedules_report(store: Store, *, as_json: bool = False, include_inactive: bool = False) -> str:
    """What ``meetbot schedules`` prints: a table for people or JSON for scripts."""
    rows = [_as_dict(s) for s in list_schedules(store, include_inactive=include_inactive)]
    if as_json:
        return json.dumps(rows, indent=2)
    if not rows:
        return "No schedules." if include_inactive else "No active schedules."
    header = ("ID", "TEAM", "CHANNEL", "NAME", "WHEN", "FOR", "NEXT RUN (UTC)", "CREATOR", "STATE")
    table = [header]
    for r in rows:
        state = "active" if r["active"] else ("stopped" if r["cancelled_at"] else "finished")
        nxt = r["next_run"][:16].replace("T", " ") if r["next_run"] else "-"
        table.append(
            (
                str(r["id"]),
                r["team_id"],
                r["channel_id"],
                r["name"][:30],
                f"{r['when']} ({r['tz']})",
                format_duration(r["duration"]),
                nxt,
                r["creator_id"],
                state,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


# -- the service ----------------------------------------------------------------------


class Schedules:
    """Create, list, stop and fire team-room schedules."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        rooms: Rooms,
        slack: SlackGateway,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.rooms = rooms
        self.slack = slack
        self.clock = clock
        self._pool: ThreadPoolExecutor | None = None

    def now(self) -> int:
        return int(self.clock())

    # -- create ---------------------------------------------------------------------
    def create(
        self,
        team_id: str,
        channel_id: str,
        creator_id: str,
        name: str,
        when_text: str,
        duration: int | None,
        invitees: Sequence[str],
        *,
        enterprise_id: str | None = None,
    ) -> Schedule:
        """Store a new schedule, in the creator's Slack time zone.

        Raises ScheduleError (message fit for Slack) for a bad name, time,
        length or invitee; nothing is stored then.
        """
        name = " ".join((name or "").split())
        if not name:
            raise ScheduleError("A team room needs a name, e.g. `standup`.")
        if len(name) > MAX_NAME:
            raise ScheduleError(f"Keep the name to {MAX_NAME} characters.")
        max_ttl = self.settings.max_room_ttl
        length = self.settings.room_ttl if duration is None else int(duration)
        if length <= 0:
            raise ScheduleError("A team room has to last longer than 0 minutes.")
        if length > max_ttl:
            raise ScheduleError(
                f"{format_duration(length)} is too long: a room can last at most "
                f"{format_duration(max_ttl)}."
            )
        invitees = [u for u in dict.fromkeys(invitees) if u != creator_id]
        try:
            people = self.rooms.resolve_people(
                creator_id, invitees, team_id=team_id, enterprise_id=enterprise_id
            )
        except RoomError as e:
            raise ScheduleError(
                e.user_message.replace("I didn't open a room", "I didn't schedule it", 1)
            ) from None
        creator = people[0].info
        tz = (creator.tz if creator else None) or "UTC"  # whose clock "09:30" means
        t = self.now()
        try:
            rec = parse_when(when_text, now_utc=_dt(t), tz=tz)
            first = next_run(rec, tz, _dt(t))
        except ValueError as e:
            raise ScheduleError(f"I couldn't schedule *{messages.escape(name)}*: {e}") from None
        if first is None:
            raise ScheduleError(f"*{messages.escape(name)}* would never happen: pick a later time.")
        with self.store.write() as tx:
            count = len(
                list(
                    tx.scalars(
                        select(Schedule.id).where(
                            Schedule.team_id == team_id,
                            Schedule.channel_id == channel_id,
                            Schedule.active.is_(True),
                        )
                    )
                )
            )
            if count >= MAX_SCHEDULES_PER_CHANNEL:
                raise ScheduleError(
                    f"This channel already has {count} team rooms, the most it may have. "
                    "Stop one with `/meet unschedule &lt;id&gt;` (see `/meet schedules`)."
                )
            row = Schedule(
                team_id=team_id,
                enterprise_id=enterprise_id,
                channel_id=channel_id,
                creator_id=creator_id,
                name=name,
                kind=rec.kind,
                spec=rec.spec,
                tz=tz,
                duration=length,
                invitees=json.dumps([p.user_id for p in people[1:]]),
                next_run_at=int(first.timestamp()),
                active=True,
                created_at=t,
            )
            tx.add(row)
            tx.flush()
            self.store.audit(
                tx,
                "schedule",
                actor=creator_id,
                team_id=team_id,
                schedule_id=row.id,
                name=name,
                when=rec.describe(tz),
                duration=length,
                channel=channel_id,
            )
        log.info("schedule %s (%s) created by %s", row.id, rec.describe(tz), creator_id)
        return row

    def confirmation(self, s: Schedule) -> str:
        """What the creator is told once a schedule is stored."""
        rule = recurrence_of(s).describe(s.tz)
        who = invitees_of(s)
        people = f", with {messages.mention_list(who)}" if who else ""
        first = slack_date(s.next_run_at) if s.next_run_at is not None else "never"
        return (
            f"Scheduled *{messages.escape(s.name)}* (`{s.id}`): {rule}, for "
            f"{format_duration(s.duration)}{people}. The room card goes to <#{s.channel_id}> "
            f"and everyone gets their link by DM. First room: {first}.\n"
            f"Stop it with `/meet unschedule {s.id}`."
        )

    # -- read -----------------------------------------------------------------------
    def get(self, schedule_id: int) -> Schedule | None:
        with self.store.read() as s:
            return s.get(Schedule, schedule_id)

    def list_for_channel(self, team_id: str, channel_id: str) -> list[Schedule]:
        """The channel's schedules that will still open a room."""
        return list_schedules(self.store, team_id, channel_id=channel_id)

    def list_all(self, team_id: str | None = None) -> list[Schedule]:
        """Active schedules of one workspace, or of every workspace."""
        return list_schedules(self.store, team_id)

    def channel_text(self, team_id: str, channel_id: str) -> str:
        """`/meet schedules`: this channel's team rooms, one line each."""
        rows = self.list_for_channel(team_id, channel_id)
        if not rows:
            return (
                "No team rooms are scheduled in this channel. Add one with "
                "`/meet schedule standup every weekday at 09:30 for 15m @someone`."
            )
        lines = ["*Team rooms in this channel:*"]
        lines += [f"• {describe(s)}" for s in rows]
        lines.append("Stop one with `/meet unschedule &lt;id&gt;`.")
        return "\n".join(lines)

    def occurrences(self, schedule_id: int) -> list[Occurrence]:
        with self.store.read() as s:
            q = (
                select(Occurrence)
                .where(Occurrence.schedule_id == schedule_id)
                .order_by(Occurrence.run_at)
            )
            return list(s.scalars(q))

    # -- cancel ---------------------------------------------------------------------
    def stop_workspace(self, team_id: str) -> int:
        """Stop every schedule of a workspace the app was removed from."""
        with self.store.write() as tx:
            stopped = tx.execute(
                update(Schedule)
                .where(Schedule.team_id == team_id, Schedule.active.is_(True))
                .values(active=False, cancelled_at=int(self.clock()), next_run_at=None)
            ).rowcount
            if stopped:
                self.store.audit(
                    tx, "schedules_stopped", actor="slack", team_id=team_id, count=stopped
                )
        return stopped

    def cancel(self, team_id: str, schedule_id: str | int, user_id: str) -> str:
        """`/meet unschedule`: its creator or a workspace admin. Returns the answer to show."""
        try:
            sid = int(str(schedule_id).strip())
        except ValueError:
            return f"`{schedule_id}` is not a schedule id: `/meet schedules` shows them."
        row = self.get(sid)
        if row is None or row.team_id != team_id:
            return f"I don't know a schedule `{sid}` in this workspace (see `/meet schedules`)."
        if not row.active:
            return f"*{messages.escape(row.name)}* (`{sid}`) is not scheduled any more."
        if row.creator_id != user_id:
            try:
                admin = self.slack.user_info(user_id).is_admin
            except Exception:  # Slack down or unknown user: no proof of admin rights
                admin = False
            if not admin:
                return (
                    f"Only <@{row.creator_id}>, who scheduled *{messages.escape(row.name)}*, "
                    "or a workspace admin can stop it."
                )
        done = cancel_schedule(self.store, sid, actor=user_id, at=self.now(), team_id=team_id)
        if done is None:
            return f"*{messages.escape(row.name)}* (`{sid}`) is not scheduled any more."
        log.info("schedule %s stopped by %s", sid, user_id)
        return f"Stopped *{messages.escape(row.name)}* (`{sid}`): no more rooms will open for it."

    # -- firing ---------------------------------------------------------------------
    def fire_due(self, owner: str, *, now: int | None = None, limit: int = 50) -> int:
        """Claim what is due and fire it; returns how many rooms were opened (or found open).

        Safe to call from any number of replicas and threads at once, and
        again after a crash: see the module docs.
        """
        t = self.now() if now is None else int(now)
        claimed = self.claim_due(owner, now=t, limit=limit)
        taken = self._take_abandoned(owner, t, limit)
        ids = list(dict.fromkeys([*claimed, *taken]))
        if not ids:
            return 0
        if len(ids) == 1:
            return int(self._fire(ids[0], owner, t))
        results = self._fire_pool().map(lambda i: self._fire(i, owner, t), ids)
        return sum(1 for ok in results if ok)

    def claim_due(self, owner: str, *, now: int | None = None, limit: int = 50) -> list[int]:
        """Step 1: in one transaction, turn due schedules into leased occurrences.

        Returns the ids of the pending occurrences now leased to ``owner``. A
        caller that dies after this leaves them to be fired by whoever comes
        along once the lease ran out.
        """
        t = self.now() if now is None else int(now)
        pending: list[int] = []
        with self.store.write() as tx:
            q = (
                select(Schedule)
                .where(Schedule.active.is_(True), Schedule.next_run_at.is_not(None))
                .where(Schedule.next_run_at <= t)
                .order_by(Schedule.next_run_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            for sch in list(tx.scalars(q)):
                occ = self._materialise(tx, sch, owner, t)
                if occ is not None:
                    pending.append(occ.id)
        return pending

    def _materialise(self, tx: Session, sch: Schedule, owner: str, t: int) -> Occurrence | None:
        """Record the due run of ``sch`` (fire or skip) and move it to its next run."""
        run_at = int(sch.next_run_at or 0)
        try:
            rec = recurrence_of(sch)
            fire_at = _latest_due(rec, sch.tz, run_at, t, sch.duration)
            after = next_run(rec, sch.tz, _dt(max(t, fire_at if fire_at is not None else run_at)))
        except ValueError as e:
            # e.g. a time zone that vanished from the tz database: stop, loudly,
            # rather than fail every sweep (and every other schedule with it).
            log.error("schedule %s cannot be computed any more (%s): stopped", sch.id, e)
            sch.active = False
            sch.next_run_at = None
            self.store.audit(
                tx, "schedule_broken", actor="scheduler", team_id=sch.team_id, error=str(e)
            )
            return None
        if fire_at != run_at:
            log.warning(
                "schedule %s (%s): the run due at %s was missed by %ss, more than one "
                "room-length (%ss); not firing it%s",
                sch.id,
                sch.name,
                _dt(run_at).isoformat(),
                t - run_at,
                sch.duration,
                f", firing the run of {_dt(fire_at).isoformat()} instead" if fire_at else "",
            )
            self._add(tx, sch, run_at, OccurrenceState.SKIPPED, t, error="missed: bot was down")
            self.store.audit(
                tx,
                "schedule_skipped",
                actor="scheduler",
                team_id=sch.team_id,
                schedule_id=sch.id,
                run_at=run_at,
            )
        occ = None
        if fire_at is not None:
            occ = self._add(tx, sch, fire_at, OccurrenceState.PENDING, t, owner=owner)
        sch.next_run_at = int(after.timestamp()) if after is not None else None
        if after is None:
            sch.active = False  # a one-off, or a rule that never fires again
        return occ

    def _add(
        self,
        tx: Session,
        sch: Schedule,
        run_at: int,
        state: str,
        t: int,
        *,
        owner: str | None = None,
        error: str | None = None,
    ) -> Occurrence | None:
        exists = tx.scalar(
            select(Occurrence.id).where(
                Occurrence.schedule_id == sch.id, Occurrence.run_at == run_at
            )
        )
        if exists is not None:  # the unique key would refuse it: it was handled already
            return None
        occ = Occurrence(
            schedule_id=sch.id,
            run_at=run_at,
            room_id=new_room_id(),
            state=state,
            lease_owner=owner,
            lease_until=t + FIRE_LEASE_S if owner else None,
            attempts=0,
            error=error,
            created_at=t,
        )
        tx.add(occ)
        tx.flush()
        return occ

    def _take_abandoned(self, owner: str, t: int, limit: int) -> list[int]:
        """Lease occurrences that a dead replica left, or that wait for a retry.

        Their lease (or backoff, kept in ``lease_until``) ran out. Those whose
        room-length window closed meanwhile are skipped instead: a room that
        opens after its meeting ended helps nobody.
        """
        window_open = Occurrence.run_at + Schedule.duration >= t
        expired = or_(Occurrence.lease_until.is_(None), Occurrence.lease_until < t)
        base = (
            select(Occurrence)
            .join(Schedule, Schedule.id == Occurrence.schedule_id)
            .where(expired)
            .order_by(Occurrence.run_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Occurrence)
        )
        with self.store.write() as tx:
            stale = tx.scalars(
                base.where(Occurrence.state == OccurrenceState.PENDING).where(~window_open)
            )
            for occ in list(stale):
                log.warning(
                    "occurrence %s of schedule %s (due %s) was never fired within one "
                    "room-length: skipped",
                    occ.id,
                    occ.schedule_id,
                    _dt(occ.run_at).isoformat(),
                )
                occ.state = OccurrenceState.SKIPPED
                occ.error = "not fired within one room-length"
                occ.lease_owner = occ.lease_until = None
            rows = list(
                tx.scalars(
                    base.where(
                        Occurrence.state.in_((OccurrenceState.PENDING, OccurrenceState.FAILED))
                    ).where(window_open)
                )
            )
            for occ in rows:
                occ.lease_owner = owner
                occ.lease_until = t + FIRE_LEASE_S
            return [occ.id for occ in rows]

    def _renew(self, occ_id: int, owner: str, t: int, room_id: str | None = None) -> bool:
        """Re-check (and extend) our lease right before a side effect."""
        values: dict[str, Any] = {"lease_until": max(t, self.now()) + FIRE_LEASE_S}
        if room_id is not None:
            values["room_id"] = room_id
        with self.store.write() as tx:
            return bool(
                tx.execute(
                    update(Occurrence)
                    .where(Occurrence.id == occ_id, Occurrence.lease_owner == owner)
                    .where(Occurrence.state.in_((OccurrenceState.PENDING, OccurrenceState.FAILED)))
                    .values(**values)
                ).rowcount
            )

    def _fire(self, occ_id: int, owner: str, t: int) -> bool:
        """Step 2: open the occurrence's room, unless it is open already."""
        if not self._renew(occ_id, owner, t):
            return False  # someone else has it now
        with self.store.read() as s:
            occ = s.get(Occurrence, occ_id)
            sch = s.get(Schedule, occ.schedule_id) if occ is not None else None
        if occ is None or sch is None:
            return False
        if sch.cancelled_at is not None:
            self._finish(occ, owner, OccurrenceState.SKIPPED, error="schedule stopped")
            return False
        room = self.store.room(occ.room_id)
        if room is not None and room.state in (RoomState.ACTIVE, RoomState.REVOKED):
            # Opened by an earlier try that died before saying so.
            self._finish(occ, owner, OccurrenceState.FIRED)
            return True
        room_id = occ.room_id
        if room is not None and room.state == RoomState.FAILED:
            # AMS refused that id before and the sweep may still delete it there:
            # this try gets a fresh one, recorded before anything is created.
            room_id = new_room_id()
            if not self._renew(occ_id, owner, t, room_id=room_id):
                return False
        # No request to act for: every Slack call below (users.info, the card,
        # the DMs, the notice) goes out with the schedule's workspace's token.
        with acting_for(sch.team_id, sch.enterprise_id):
            return self._open(occ, sch, owner, t, room_id)

    def _open(self, occ: Occurrence, sch: Schedule, owner: str, t: int, room_id: str) -> bool:
        heard: list[str] = []  # what Rooms would tell a requester: why it failed
        try:
            invitees = self._invitable(invitees_of(sch))
            opened = self.rooms.open_room(
                OpenRequest(
                    team_id=sch.team_id,
                    user_id=sch.creator_id,
                    channel_id=sch.channel_id,
                    topic=sch.name,
                    invitees=tuple(invitees),
                    duration=sch.duration,
                    enterprise_id=sch.enterprise_id,
                    schedule_id=sch.id,
                    room_id=room_id,
                    notify=heard.append,
                )
            )
        except Exception as e:  # Slack or the database hiccuped: retry on a later pass
            log.warning("firing schedule %s failed: %s", sch.id, e, exc_info=True)
            self._failed(occ, owner, t, f"{type(e).__name__}: {e}")
            return False
        if opened is None:
            failed_room: Room | None = self.store.room(room_id)
            reason = (failed_room.end_reason if failed_room else None) or "refused (see the log)"
            log.warning("schedule %s: room %s did not open: %s", sch.id, room_id, reason)
            self._failed(occ, owner, t, reason)
            if not occ.attempts:
                # Said once in the channel the card was due in, not on every retry.
                self._tell_late(sch, occ.run_at, heard[0] if heard else "")
            return False
        self._finish(occ, owner, OccurrenceState.FIRED)
        log.info("schedule %s fired: room %s", sch.id, opened.id)
        return True

    def _tell_late(self, sch: Schedule, run_at: int, reason: str) -> None:
        """Tell the schedule's channel that its room did not open (best effort)."""
        text = messages.schedule_late(
            name=sch.name, due=run_at, until=run_at + sch.duration, reason=reason
        )
        try:
            self.slack.post(sch.channel_id, text)
        except Exception as e:  # the retry goes on whether or not Slack heard this
            log.warning("could not tell %s that schedule %s is late: %s", sch.channel_id, sch.id, e)

    def _invitable(self, invitees: list[str]) -> list[str]:
        """Drop invitees who left, were deactivated or turned out to be bots.

        One person gone must not cancel the whole team's room. Slack being
        down raises, so the firing is retried rather than sent to nobody.
        """
        keep: list[str] = []
        for user in invitees:
            try:
                info = self.slack.user_info(user)
            except UnknownUser:
                log.info("invitee %s no longer exists: not invited", user)
                continue
            if info.is_bot or info.deleted:
                log.info("invitee %s is a bot or deactivated: not invited", user)
                continue
            keep.append(user)
        return keep

    def _finish(self, occ: Occurrence, owner: str, state: str, error: str | None = None) -> None:
        with self.store.write() as tx:
            row = tx.get(Occurrence, occ.id)
            if row is None or row.lease_owner != owner:
                return
            row.state = state
            row.error = error[:200] if error else None
            row.lease_owner = row.lease_until = None
            if state == OccurrenceState.FIRED:
                sch = tx.get(Schedule, row.schedule_id)
                self.store.audit(
                    tx,
                    "schedule_fired",
                    actor="scheduler",
                    team_id=sch.team_id if sch else None,
                    room_id=row.room_id,
                    schedule_id=row.schedule_id,
                    run_at=row.run_at,
                )

    def _failed(self, occ: Occurrence, owner: str, t: int, error: str) -> None:
        """Leave it for a later pass, after a backoff kept in ``lease_until``."""
        with self.store.write() as tx:
            row = tx.get(Occurrence, occ.id)
            if row is None or row.lease_owner != owner:
                return
            row.attempts = (row.attempts or 0) + 1
            row.state = OccurrenceState.FAILED
            row.error = error[:200]
            row.lease_owner = None
            row.lease_until = max(t, self.now()) + min(
                RETRY_BASE_S * 2 ** (row.attempts - 1), RETRY_MAX_S
            )

    def close(self) -> None:
        """Wait for firings in progress (their leases would otherwise have to run out)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _fire_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ContextThreadPoolExecutor(
                max_workers=max(1, self.settings.ams_concurrency), thread_name_prefix="fire"
            )
        return self._pool


def _latest_due(rec: Recurrence, tz: str, run_at: int, t: int, duration: int) -> int | None:
    """The newest run in ``[max(run_at, t - duration), t]``, or None if there is none.

    Runs older than one room-length are not worth a room; of the younger ones
    only the newest is fired, so a long downtime never ends in a burst.
    """
    lo = max(run_at, t - duration)
    if run_at >= lo:
        cand = run_at
    else:
        nxt = next_run(rec, tz, _dt(lo - 1))
        if nxt is None:
            return None
        cand = int(nxt.timestamp())
    if cand > t:
        return None
    for _ in range(_MAX_CATCH_UP_STEPS):
        nxt = next_run(rec, tz, _dt(cand))
        if nxt is None or int(nxt.timestamp()) > t:
            break
        cand = int(nxt.timestamp())
    return cand
