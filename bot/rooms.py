"""The room lifecycle: open, invite, hand out links, end.

Everything here runs after Slack got its ack, on the bot's own worker threads.
State changes and the Slack messages they owe are written in one transaction
(the outbox); the outbox worker sends them. AMS is called outside database
transactions so a slow AMS never holds a database lock.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from bot import joinlinks, messages
from bot.ams import AmsClient, AmsError, AmsIdTaken, AmsNotFound
from bot.calls import participant_stream_id
from bot.config import Settings
from bot.durations import format_duration
from bot.logs import ContextThreadPoolExecutor, correlation_id
from bot.notify import SlackGateway, UnknownUser, UserInfo, acting_for
from bot.outbox import OutboxWorker, Rendered
from bot.store import Grant, Job, Outbox, OutboxState, Room, RoomState, Store
from bot.tokens import circle_link, mint_join_token, new_jti, new_room_id

log = logging.getLogger("meetbot.rooms")

#: Where replies meant for the person go when their request has no response_url
#: (clicks on the App Home): set with ``replies_to`` around the call.
REPLY_SINK: ContextVar[Callable[[str], None] | None] = ContextVar("meetbot_reply", default=None)


@contextmanager
def replies_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Send ``Rooms``' replies in this block (refusals, confirmations) to ``sink``."""
    reset = REPLY_SINK.set(sink)
    try:
        yield
    finally:
        REPLY_SINK.reset(reset)


LINK_RESEND_WINDOW_S = 30  # a second "Get my link" click within this sends nothing
CLEANUP_ATTEMPTS = 3  # deletes of a room whose create failed unclearly
STUCK_CREATING_S = 300  # far longer than a create with all its retries takes
AMS_MARKER = "meetbot"
MARK_CHUNK = 500  # rooms per IN (...) list when revokes are recorded in bulk
RECORD_WITHIN_S = 1.0  # the sweep records a revoke AMS confirmed within about this
#: users.info calls in flight for one room's people: a 30-person standup is
#: resolved in one Slack round trip, not four (Tier 4 takes such a burst).
LOOKUP_THREADS = 32

# What a failed DM means for the person who opened the room.
DM_FAILURE_REASONS = {
    "cannot_dm_bot": "is a bot",
    "user_not_found": "was not found",
    "user_disabled": "is deactivated",
    "account_inactive": "is deactivated",
    "channel_not_found": "can't receive DMs from this app",
}


class SecretSource(Protocol):
    """Where the current AMS stream secret comes from (static, or rotated)."""

    def current(self) -> tuple[int | None, str]: ...


@dataclass
class StaticSecret:
    secret: str

    def current(self) -> tuple[int | None, str]:
        return None, self.secret


class RoomError(Exception):
    """A refusal with a message meant for the Slack user as is."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


@dataclass(frozen=True)
class OpenRequest:
    team_id: str
    user_id: str
    channel_id: str
    topic: str
    invitees: tuple[str, ...] = ()
    duration: int | None = None
    response_url: str | None = None
    enterprise_id: str | None = None
    schedule_id: int | None = None
    extra_grants: tuple[str, ...] = field(default=())
    # Chosen in advance by a schedule's occurrence, so a retried firing creates
    # (or finds) the very same AMS room instead of a second one.
    room_id: str | None = None
    # How the requester hears the outcome when there is no response_url (the
    # App Home's modal, a shortcut without one): called with the text.
    notify: Callable[[str], None] | None = field(default=None, compare=False)


def ams_marker(team_id: str) -> str:
    """The ``metaData`` that marks an AMS broadcast as made by this bot."""
    return json.dumps({AMS_MARKER: 1, "team": team_id}, separators=(",", ":"))


def is_ours(broadcast: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(broadcast.get("metaData") or "{}").get(AMS_MARKER))
    except (ValueError, AttributeError):
        return False


class Rooms:
    """Room operations with their side effects on AMS, the database and Slack."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ams: AmsClient,
        slack: SlackGateway,
        secrets: SecretSource,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ams = ams
        self.slack = slack
        self.secrets = secrets
        self.clock = clock
        self.outbox: OutboxWorker | None = None
        self._lookup_pool = ContextThreadPoolExecutor(
            max_workers=LOOKUP_THREADS, thread_name_prefix="users"
        )
        self.owner = "rooms"
        self._ams_executor: ThreadPoolExecutor | None = None
        self.on_event: Callable[[str], None] | None = None  # metrics hook: "created" etc.
        # Whose view of rooms changed: (team, users) after open/end/extend/kick (App Home).
        self.on_change: Callable[[str, list[str]], None] | None = None
        # Slack Calls (bot/calls.py): a room AMS created, before it is activated
        # (its card must carry the Call), and a room just revoked (off the transaction).
        self.on_opening: Callable[[Room], object] | None = None
        self.on_revoked: Callable[[Room], object] | None = None

    def now(self) -> int:
        return int(self.clock())

    def close(self) -> None:
        """Let in-flight lookups and revokes finish; free their threads."""
        self._lookup_pool.shutdown(wait=True)
        if self._ams_executor is not None:
            self._ams_executor.shutdown(wait=True)

    # -- people ---------------------------------------------------------
    def resolve_people(self, requester: str, invitees: Sequence[str]) -> list[UserInfo]:
        """users.info for everyone, refusing bots, unknown and deactivated users."""
        ids = [requester, *[u for u in invitees if u != requester]]
        asked = [self.slack.ask_user(u, self._lookup_pool) for u in ids]
        results = [self._judge(u, f) for u, f in zip(ids, asked, strict=True)]
        problems = [msg for _, msg in results if msg]
        if problems:
            raise RoomError("I didn't open a room: " + "; ".join(problems) + ".")
        people = [info for info, _ in results if info]
        owner = people[0]
        if owner.is_guest and not self.settings.allow_guests:
            raise RoomError(
                "Guest accounts can join rooms they are invited to, but can't open rooms here. "
                "Ask a full member of the workspace to invite you."
            )
        return people

    @staticmethod
    def _judge(user_id: str, asked: Future[UserInfo]) -> tuple[UserInfo | None, str | None]:
        """Who ``user_id`` is, or why they cannot be in a room."""
        try:
            info = asked.result()
        except UnknownUser:
            return None, f"I can't find <@{user_id}>"
        except Exception as e:  # Slack down: say so rather than guess
            log.warning("users.info failed: %s", type(e).__name__)
            return None, f"Slack didn't tell me who <@{user_id}> is (try again in a moment)"
        if info.is_bot:
            return None, f"<@{user_id}> is a bot and can't join a room"
        if info.deleted:
            return None, f"<@{user_id}> is deactivated"
        return info, None

    # -- open -------------------------------------------------------------
    def open_room(self, req: OpenRequest) -> Room | None:
        """Create the room on AMS and owe everyone their DM. Tells the requester."""
        with acting_for(req.team_id, req.enterprise_id):
            return self._open_room(req)

    def _open_room(self, req: OpenRequest) -> Room | None:
        try:
            people = self.resolve_people(req.user_id, req.invitees)
            room = self._create(req, people)
        except RoomError as e:
            self._tell_requester(req, e.user_message)
            return None
        if self.outbox:
            self.outbox.watch_room(room.id, lambda rows: self._fanout_done(req, room, rows))
            self.outbox.kick()
        return room

    def _create(self, req: OpenRequest, people: list[UserInfo]) -> Room:
        s = self.settings
        duration = req.duration or s.room_ttl
        start = self.now()
        fields = dict(
            team_id=req.team_id,
            enterprise_id=req.enterprise_id,
            owner_id=req.user_id,
            channel_id=req.channel_id,
            topic=req.topic[:200],
            state=RoomState.CREATING,
            created_at=start,
            expires_at=start + duration,
            schedule_id=req.schedule_id,
            attempts=0,
            next_attempt_at=0,
        )
        for attempt in range(2):
            room = Room(id=req.room_id or new_room_id(), **fields)
            with self.store.write() as tx:
                prior = tx.get(Room, req.room_id) if req.room_id else None
                if prior is not None and prior.state != RoomState.CREATING:
                    if prior.state == RoomState.FAILED:
                        raise RoomError(f"Room `{prior.id}` failed to open ({prior.end_reason}).")
                    return prior  # opened by an earlier try: never a second room
                if req.schedule_id is None:
                    open_count = self.store.count_open_rooms(tx, req.team_id, req.user_id)
                    if open_count >= s.max_open_rooms_per_user:
                        raise RoomError(
                            f"You already have {open_count} open rooms, the most one person may "
                            "have. End one with `/meet end &lt;room-id&gt;` (see `/meet list`)."
                        )
                if prior is not None:  # an earlier try died before AMS's answer was kept
                    for key, value in fields.items():
                        setattr(prior, key, value)
                    room = prior
                else:
                    tx.add(room)
            try:
                self.ams.create_room(
                    room.id,
                    messages.topic_or_default(req.topic),
                    start,
                    room.expires_at,
                    metadata=ams_marker(req.team_id),
                )
                break
            except AmsIdTaken:
                if req.room_id is not None and self._ours_on_ams(room.id):
                    break  # made by an earlier try whose answer was lost: it is this room
                # Not ours: never delete it. 128 random bits colliding means
                # something odd; one fresh id, then give up.
                self._mark_failed(room.id, "id taken on AMS", ours_on_ams=False)
                if attempt == 1 or req.room_id is not None:
                    raise RoomError(
                        "The video server refused the new room's id twice. Try again; "
                        "if it keeps happening, tell your admin."
                    ) from None
            except AmsError as e:
                log.warning("AMS create failed for room %s: %s", room.id, e)
                self._mark_failed(room.id, type(e).__name__)
                self._cleanup_on_ams(room.id)
                raise RoomError(f"I couldn't open the room: {e.user_message}") from None
        self._hook(self.on_opening, room)
        return self._activate(room, req, people)

    def _ours_on_ams(self, room_id: str) -> bool:
        """Whether the broadcast ``room_id`` on AMS carries this bot's marker."""
        try:
            return is_ours(self.ams.get_room(room_id))
        except AmsError:
            return False

    def _mark_failed(self, room_id: str, reason: str, *, ours_on_ams: bool = True) -> None:
        """Record a room that never opened.

        ``ours_on_ams``: the create may still land on AMS after we gave up (a
        slow AMS finishes the request later), so the sweep deletes the id a few
        more times (``cleanup_failed``). Never for an id that AMS said belongs
        to someone else.
        """
        with self.store.write() as tx:
            row = tx.get(Room, room_id)
            if row is not None:
                row.state = RoomState.FAILED
                row.end_reason = reason
                row.ended_at = self.now()
                row.attempts = 0 if ours_on_ams else CLEANUP_ATTEMPTS
                row.next_attempt_at = self.now() + self._cleanup_delay()
                self.store.audit(
                    tx,
                    "open_failed",
                    actor=row.owner_id,
                    team_id=row.team_id,
                    room_id=room_id,
                    reason=reason,
                )
        if row is not None:
            self._event("failed")

    def cleanup_failed(self) -> int:
        """Delete, again, AMS rooms whose create failed unclearly (see ``_mark_failed``).

        A room stuck in ``creating`` (its worker died, or the database refused
        the activation) is failed first, so it is cleaned up the same way.
        """
        t = self.now()
        cleaned = 0
        with self.store.write() as tx:
            stuck = tx.execute(
                update(Room)
                .where(Room.state == RoomState.CREATING, Room.created_at < t - STUCK_CREATING_S)
                .values(
                    state=RoomState.FAILED,
                    end_reason="never finished opening",
                    ended_at=t,
                    attempts=0,
                    next_attempt_at=t,
                )
            ).rowcount
        for _ in range(stuck or 0):
            self._event("failed")
        with self.store.read() as s:
            ids = list(
                s.scalars(
                    select(Room.id)
                    .where(Room.state == RoomState.FAILED, Room.attempts < CLEANUP_ATTEMPTS)
                    .where(Room.next_attempt_at <= t)
                    .limit(200)
                )
            )
        for room_id in ids:
            with self.store.write() as tx:
                claimed = tx.execute(
                    update(Room)
                    .where(Room.id == room_id, Room.state == RoomState.FAILED)
                    .where(Room.attempts < CLEANUP_ATTEMPTS, Room.next_attempt_at <= t)
                    .values(
                        attempts=Room.attempts + 1,
                        next_attempt_at=t + self._cleanup_delay() * 4,
                    )
                ).rowcount
            if claimed:
                self._cleanup_on_ams(room_id)
                cleaned += 1
        return cleaned

    def _cleanup_delay(self) -> int:
        """Long enough for a create that AMS is still chewing on to have landed."""
        return int(2 * self.settings.ams_timeout) + 1

    def _cleanup_on_ams(self, room_id: str) -> None:
        """After an unclear create (timeout, 5xx), make sure nothing stays on AMS."""
        try:
            self.ams.delete_room(room_id)
        except AmsError as e:
            # Reconciliation removes it later: it carries our marker.
            log.warning("could not clean up room %s on AMS: %s", room_id, e)

    def _activate(self, room: Room, req: OpenRequest, people: list[UserInfo]) -> Room:
        version, _ = self.secrets.current()
        exp = room.expires_at + self.settings.token_grace
        t = self.now()
        with self.store.write() as tx:
            row = tx.get(Room, room.id)
            assert row is not None
            row.state = RoomState.ACTIVE
            for person in people:
                grant = Grant(
                    room_id=row.id,
                    team_id=row.team_id,
                    enterprise_id=row.enterprise_id,
                    user_id=person.id,
                    display_name=(person.display_name or person.name)[:120],
                    jti=new_jti(),
                    exp=exp,
                    secret_version=version,
                    link_sent_at=t,
                    created_at=t,
                )
                tx.add(grant)
                tx.flush()
                tx.add(self._outbox(row, "dm_link", person.id, grant_id=grant.id))
            tx.add(self._outbox(row, "room_card", row.channel_id))
            self.store.audit(
                tx,
                "open",
                actor=req.user_id,
                team_id=row.team_id,
                room_id=row.id,
                invitees=[p.id for p in people[1:]],
                expires_at=row.expires_at,
            )
            room = row
        log.info("room %s opened by %s for %d people", room.id, req.user_id, len(people))
        self._event("created")
        self.room_changed(room.id)
        return room

    def _dm_edit(self, room: Room, grant: Grant, mode: str) -> Outbox:
        """The outbox row that edits ``grant``'s DM in place (``mode``: ended, reissue, kicked)."""
        return self._outbox(
            room,
            "dm_update",
            grant.dm_channel or grant.user_id,
            grant_id=grant.id,
            payload={"mode": mode},
        )

    def _outbox(self, room: Room, kind: str, channel: str, **kw: Any) -> Outbox:
        payload = dict(kw.pop("payload", {}))
        cid = correlation_id.get()
        if cid:
            payload["cid"] = cid  # the send is logged under the request that owed it
        return Outbox(
            team_id=room.team_id,
            enterprise_id=room.enterprise_id,
            kind=kind,
            room_id=room.id,
            channel=channel,
            payload=json.dumps(payload),
            state=OutboxState.PENDING,
            attempts=0,
            not_before=0,
            created_at=self.now(),
            **kw,
        )

    def _fanout_done(self, req: OpenRequest, room: Room, rows: list[Outbox]) -> None:
        """Tell the requester how the invitations went (and post the card if we could not)."""
        card = next((r for r in rows if r.kind == "room_card"), None)
        if card is not None and card.state == OutboxState.FAILED and req.response_url:
            # Private channel or DM the bot is not in: response_url still works.
            current = self.store.room(room.id)
            if current is not None and current.state == RoomState.ACTIVE:
                text, blocks = messages.room_card(
                    room_id=room.id,
                    topic=room.topic,
                    owner_id=room.owner_id,
                    expires_at=room.expires_at,
                    call_id=current.slack_call_id,
                )
                self.slack.respond(req.response_url, text, blocks=blocks, in_channel=True)
        dms = [r for r in rows if r.kind == "dm_link"]
        sent = [r.channel for r in dms if r.state == OutboxState.DONE]
        failed = [r for r in dms if r.state == OutboxState.FAILED]
        title = messages.escape(messages.topic_or_default(room.topic))
        lines = [f"Your room *{title}* is open until {messages.when(room.expires_at)}."]
        if sent:
            lines.append("Personal links went by DM to " + messages.mention_list(sent) + ".")
        for r in failed:
            reason = DM_FAILURE_REASONS.get(r.error or "", f"could not be reached ({r.error})")
            lines.append(
                f":warning: I couldn't DM <@{r.channel}>: they {reason}. "
                "They can still press *Get my link* on the room's message."
            )
        self._tell_requester(req, "\n".join(lines))

    # -- links ------------------------------------------------------------
    def send_link(self, team_id: str, room_id: str, user_id: str, response_url: str | None) -> bool:
        """A "Get my link" click: DM the clicker their own link, once per click burst."""
        room = self.store.room(room_id, team_id)
        if room is None or room.state != RoomState.ACTIVE:
            self._tell(response_url, "This room has ended. Start a new one with `/meet`.")
            return False
        try:
            info = self.slack.user_info(user_id)
        except Exception:
            info = None
        t = self.now()
        version, _ = self.secrets.current()
        refusal = None
        with self.store.write() as tx:
            q = (
                select(Grant)
                .where(Grant.room_id == room_id, Grant.user_id == user_id)
                .with_for_update()
            )
            grant = tx.scalars(q).first()
            if grant is None and info is None:
                # Fail closed: without users.info we cannot tell a guest from a member.
                refusal = "Slack didn't tell me who you are just now; please try again in a moment."
            elif (
                grant is None
                and info is not None
                and info.is_guest
                and not self.settings.allow_guests
            ):
                refusal = "Guests can only join rooms they were invited to."
            elif grant is not None and grant.revoked_at is not None:
                refusal = "The room's owner removed you from this room."
            elif (
                grant is not None
                and grant.link_sent_at
                and (t - grant.link_sent_at < LINK_RESEND_WINDOW_S)
            ):
                refusal = "Your link is in your DMs with me."
            else:
                if grant is None:
                    grant = Grant(
                        room_id=room_id,
                        team_id=team_id,
                        enterprise_id=room.enterprise_id,
                        user_id=user_id,
                        display_name=(info.display_name if info else None),
                        jti=new_jti(),
                        exp=room.expires_at + self.settings.token_grace,
                        secret_version=version,
                        created_at=t,
                    )
                    tx.add(grant)
                    tx.flush()
                grant.link_sent_at = t
                tx.add(self._outbox(room, "dm_link", user_id, grant_id=grant.id))
                self.store.audit(tx, "link", actor=user_id, team_id=team_id, room_id=room_id)
        # Replies go out after the transaction: never hold the write lock over HTTP.
        if refusal is not None:
            self._tell(response_url, refusal)
            return False
        if self.outbox:
            self.outbox.kick()
        self._tell(response_url, "I've sent your personal link to you by DM.")
        return True

    # -- end ----------------------------------------------------------------
    def end_room(self, team_id: str, room_id: str, user_id: str, response_url: str | None) -> bool:
        """`/meet end`: owner or workspace admin only."""
        room = self.store.room(room_id, team_id)
        if room is None:
            self._tell(response_url, f"I don't know a room `{room_id}` in this workspace.")
            return False
        if room.owner_id != user_id:
            try:
                admin = self.slack.user_info(user_id).is_admin
            except Exception:
                admin = False
            if not admin:
                self._tell(
                    response_url,
                    f"Only the room's owner (<@{room.owner_id}>) or a workspace admin can end it.",
                )
                return False
        if room.state != RoomState.ACTIVE:
            self._tell(response_url, f"Room `{room_id}` has already ended.")
            return False
        ok = self.revoke(room_id, actor=user_id, reason=f"ended by <@{user_id}>")
        if ok:
            self._tell(response_url, f"Ended *{messages.escape(room.topic or 'the room')}*.")
        elif (now := self.store.room(room_id)) is not None and (
            now.state != RoomState.ACTIVE or now.lease_owner is not None
        ):
            # Not claimed: a double click, or the sweep, is ending it right now.
            self._tell(response_url, f"Room `{room_id}` has already ended (or is ending now).")
        else:
            self._tell(
                response_url,
                "I couldn't reach the video server to end the room. I'll keep trying; "
                "meanwhile its links still work until they expire.",
            )
        return ok

    def revoke(self, room_id: str, *, actor: str, reason: str) -> bool:
        """Stop and delete the room on AMS, then end it here and owe the edits.

        The room is claimed first so that a sweep and a `/meet end` (or two
        replicas) never work on it at once. It is marked revoked only once AMS
        confirms the room is gone; otherwise it stays due with a backoff.
        """
        if not self._claim(room_id):
            return False
        return self._revoke_claimed(room_id, actor=actor, reason=reason)

    def _claim(self, room_id: str) -> bool:
        """Take an active room nobody holds, for one revoke (a lease, see ``lease_s``)."""
        t = self.now()
        with self.store.write() as tx:
            claimed = tx.execute(
                update(Room)
                .where(Room.id == room_id, Room.state == RoomState.ACTIVE)
                .where(or_(Room.lease_until.is_(None), Room.lease_until < t))
                .values(lease_owner=self.owner, lease_until=t + self.lease_s())
            ).rowcount
        return bool(claimed)

    def _revoke_claimed(self, room_id: str, *, actor: str, reason: str) -> bool:
        try:
            self._end_on_ams(room_id)
        except AmsError as e:
            self._revoke_failed(room_id, e)
            return False
        return self._mark_revoked(room_id, actor=actor, reason=reason)

    def _end_on_ams(self, room_id: str) -> None:
        """Stop and delete the room on AMS; returns once AMS confirmed it gone.

        The AMS half of a revoke, and all the sweep's AMS threads do: no
        database, no hooks. Raises ``AmsError`` when AMS did not confirm.
        """
        try:
            self.ams.stop_room(room_id)
        except AmsNotFound:
            pass
        self.ams.delete_room(room_id)  # False: already gone, which is what we want

    def _mark_revoked(self, room_id: str, *, actor: str, reason: str) -> bool:
        """The database half of a revoke: state, grants, and the edits owed."""
        return bool(self._mark_revoked_many([room_id], actor=actor, reason=reason))

    def _mark_revoked_many(self, room_ids: Sequence[str], *, actor: str, reason: str) -> list[Room]:
        """The database half of revokes AMS confirmed, for many rooms in one transaction.

        Rooms, grants, the edits owed (outbox) and one audit row per room are
        written together; then the hooks run once for the batch (one
        ``on_change`` per workspace with everyone involved). Only rooms still
        active are recorded, so a room is never revoked (or audited) twice.
        Returns the rooms this call revoked.
        """
        if not room_ids:
            return []
        t = self.now()
        rooms: list[Room] = []
        people: dict[str, dict[str, None]] = {}  # team -> owners and grantees, in order
        with self.store.write() as tx:
            for i in range(0, len(room_ids), MARK_CHUNK):
                rooms += self._mark_revoked_in(tx, room_ids[i : i + MARK_CHUNK], t, reason, people)
            self.store.audit_many(
                tx, "revoke", actor=actor, rooms=[(r.team_id, r.id) for r in rooms], reason=reason
            )
        for room in rooms:
            log.info("room %s revoked (%s)", room.id, reason)
            self._event("revoked")
        self._people_changed(people)
        for room in rooms:
            self._hook(self.on_revoked, room)
        if rooms and self.outbox:
            self.outbox.kick()
        return rooms

    def _mark_revoked_in(
        self,
        tx: Any,
        room_ids: Sequence[str],
        t: int,
        reason: str,
        people: dict[str, dict[str, None]],
    ) -> list[Room]:
        """``_mark_revoked_many`` for up to ``MARK_CHUNK`` rooms, inside ``tx``."""
        rooms = list(
            tx.scalars(
                select(Room)
                .where(Room.id.in_(room_ids), Room.state == RoomState.ACTIVE)
                .with_for_update()
            )
        )
        if not rooms:
            return []
        ids = [r.id for r in rooms]
        tx.execute(
            update(Room)
            .where(Room.id.in_(ids), Room.state == RoomState.ACTIVE)
            .values(
                state=RoomState.REVOKED,
                ended_at=t,
                end_reason=reason[:200],
                lease_owner=None,
                lease_until=None,
            ),
            execution_options={"synchronize_session": "evaluate"},
        )
        by_id = {r.id: r for r in rooms}
        # Plain rows, not Grant objects: only what the edits and the App Home need.
        grants = tx.execute(
            select(Grant.id, Grant.room_id, Grant.user_id, Grant.dm_channel, Grant.dm_ts)
            .where(Grant.room_id.in_(ids))
            .order_by(Grant.id)
        ).all()
        tx.execute(
            update(Grant)
            .where(Grant.room_id.in_(ids), Grant.revoked_at.is_(None))
            .values(revoked_at=t),
            execution_options={"synchronize_session": False},
        )
        for room in rooms:
            people.setdefault(room.team_id, {})[room.owner_id] = None
        for g in grants:
            room = by_id[g.room_id]
            people[room.team_id][g.user_id] = None
            if g.dm_ts:
                tx.add(self._dm_edit(room, g, "ended"))
        for room in rooms:
            if room.channel_ts:
                tx.add(self._outbox(room, "card_update", room.channel_id))
        return rooms

    def end_workspace(self, team_id: str, *, reason: str) -> int:
        """The app left a workspace: end every room of it on AMS.

        Its messages cannot be edited any more (the token is gone), so the
        owed edits fail fast and are recorded as failed.
        """
        with self.store.read() as s:
            ids = list(
                s.scalars(
                    select(Room.id).where(Room.team_id == team_id, Room.state == RoomState.ACTIVE)
                )
            )
        return sum(1 for room_id in ids if self.revoke(room_id, actor="slack", reason=reason))

    def mark_vanished(self, room_id: str) -> bool:
        """A room that is active here but gone from AMS: end it here too, tell people."""
        if not self._claim(room_id):
            return False
        return self._mark_revoked(
            room_id, actor="reconcile", reason="the room disappeared from the video server"
        )

    def _revoke_failed(self, room_id: str, e: Exception) -> None:
        self._revoke_failed_many([(room_id, e)])

    def _revoke_failed_many(self, failures: Sequence[tuple[str, Exception]]) -> None:
        """Rooms AMS did not confirm gone: each stays due, with its backoff, in one
        transaction; the lease goes, so a later sweep (or replica) retries them."""
        if not failures:
            return
        for room_id, e in failures:
            log.warning("revoking room %s failed on AMS: %s", room_id, e)
        t = self.now()
        with self.store.write() as tx:
            ids = [room_id for room_id, _ in failures]
            for i in range(0, len(ids), MARK_CHUNK):
                for room in tx.scalars(select(Room).where(Room.id.in_(ids[i : i + MARK_CHUNK]))):
                    room.attempts = (room.attempts or 0) + 1
                    room.next_attempt_at = t + min(15 * 2 ** (room.attempts - 1), 600)
                    room.lease_owner = None
                    room.lease_until = None

    # -- expiry sweep ---------------------------------------------------------
    def lease_s(self) -> int:
        """How long a claimed room is ours: a revoke's worst case (stop and delete,
        each retried with AMS's timeout) plus a margin. After that, a room whose
        worker died is taken over by whoever sweeps next."""
        return int(self.settings.ams_timeout * 8) + 10

    def sweep_expired(self, *, max_batches: int = 200) -> int:
        """Revoke every room past its end that nobody else is revoking.

        Rooms are claimed in small batches (a lease each, see
        ``Store.claim_due_rooms``) and stopped and deleted on AMS
        ``ams_concurrency`` at a time. The next batch is claimed while a pool's
        worth of work is still queued, so AMS is never left idle waiting for a
        batch's slowest room. The AMS threads only call AMS; this thread records
        the rooms AMS confirmed gone in bulk (``_mark_revoked_many``: one
        transaction and one App Home refresh per batch). A room AMS refuses to
        delete stays due, with a backoff, and is retried by a later sweep.
        At most ``max_batches × 4 × ams_concurrency`` rooms per call.
        """
        concurrency = self.settings.ams_concurrency
        # Small claims: what one replica claims, others cannot take, and a claimed
        # room waits behind at most three pools' worth of revokes (its lease).
        batch = concurrency * 2
        record = concurrency * 4  # rooms per bulk write (one transaction)
        budget = max_batches * concurrency * 4
        pool = self._ams_pool()
        running: dict[Future[None], str] = {}
        gone: list[str] = []
        failed: list[tuple[str, Exception]] = []
        since = 0.0  # when the oldest result not yet recorded came in
        done = 0
        more = True
        while True:
            if more and budget > 0 and len(running) <= concurrency:
                claimed = self.store.claim_due_rooms(
                    self.owner, at=self.now(), lease=self.lease_s(), limit=min(batch, budget)
                )
                budget -= len(claimed)
                more = len(claimed) == batch
                for room in claimed:
                    running[pool.submit(self._end_on_ams, room.id)] = room.id
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            if not gone and not failed:
                since = time.monotonic()
            for future in finished:
                room_id = running.pop(future)
                try:
                    future.result()
                except Exception as e:
                    if not isinstance(e, AmsError):
                        log.error("revoking room %s failed", room_id, exc_info=e)
                    failed.append((room_id, e))
                else:
                    gone.append(room_id)
            # In bulk, but never long after AMS answered (a slow AMS answers rarely).
            if (
                len(gone) + len(failed) >= record
                or not running
                or time.monotonic() - since >= RECORD_WITHIN_S
            ):
                done += self._record_sweep(gone, failed)
                gone, failed = [], []
        return done

    def _record_sweep(self, gone: list[str], failed: list[tuple[str, Exception]]) -> int:
        """Record a sweep's batch: rooms AMS confirmed gone, and rooms it did not."""
        self._revoke_failed_many(failed)
        return len(self._mark_revoked_many(gone, actor="scheduler", reason="time is up"))

    def _ams_pool(self) -> ThreadPoolExecutor:
        if self._ams_executor is None:
            self._ams_executor = ContextThreadPoolExecutor(
                max_workers=self.settings.ams_concurrency, thread_name_prefix="ams"
            )
        return self._ams_executor

    # -- extend and re-issue ------------------------------------------------------
    def extend(
        self,
        team_id: str,
        room_id: str,
        user_id: str,
        duration: int,
        response_url: str | None,
        *,
        expect_expires_at: int | None = None,
    ) -> bool:
        """Give a room more time (owner only), within MEETBOT_MAX_ROOM_TTL.

        Tokens carry the room's end in ``exp``, so every DM is edited in place
        with a fresh link; the old one would die at the old end.
        ``expect_expires_at``: the end the person saw when they clicked; a
        second click on the same button (or a replica racing) then extends once.
        """
        max_ttl = self.settings.max_room_ttl
        refusal = None
        with self.store.write() as tx:
            room = tx.get(Room, room_id, with_for_update=True)
            if room is None or room.team_id != team_id:
                refusal = f"I don't know a room `{room_id}` in this workspace."
            elif room.owner_id != user_id:
                refusal = f"Only the room's owner (<@{room.owner_id}>) can extend it."
            elif room.state != RoomState.ACTIVE:
                refusal = f"Room `{room_id}` has already ended."
            elif expect_expires_at is not None and room.expires_at != expect_expires_at:
                refusal = (
                    f"Room `{room_id}` was already extended: it runs until "
                    f"{messages.when(room.expires_at)}."
                )
            elif room.expires_at + duration - room.created_at > max_ttl:
                left = max(0, room.created_at + max_ttl - room.expires_at)
                refusal = (
                    f"A room can last at most {format_duration(max_ttl)} in all; this one can "
                    f"get {format_duration(left)} more at most."
                )
            if refusal is None and room is not None:
                new_end, topic = self._extend_in(tx, room, duration, user_id)
        if refusal is not None:
            self._tell(response_url, refusal)
            return False
        if self.outbox:
            self.outbox.kick()
        self.room_changed(room_id)
        self._tell(
            response_url,
            f"*{messages.escape(messages.topic_or_default(topic))}* now runs until "
            f"{messages.when(new_end)}. Everyone's link was renewed in place.",
        )
        return True

    def _extend_in(self, tx: Any, room: Room, duration: int, user_id: str) -> tuple[int, str]:
        new_end = room.expires_at + duration
        room.expires_at = new_end
        grants = tx.scalars(
            select(Grant).where(Grant.room_id == room.id, Grant.revoked_at.is_(None))
        )
        for g in grants:
            g.exp = new_end + self.settings.token_grace
            if g.dm_ts:
                tx.add(self._dm_edit(room, g, "reissue"))
        if room.channel_ts:
            tx.add(self._outbox(room, "card_update", room.channel_id))
        self.store.audit(
            tx,
            "extend",
            actor=user_id,
            team_id=room.team_id,
            room_id=room.id,
            expires_at=new_end,
        )
        return new_end, room.topic

    def reissue_links(self, version: int | None) -> int:
        """After a secret rotation, edit every active room's DMs with links that work.

        Claimed by inserting a marker job row for the version, so with several
        replicas exactly one of them owes the edits.
        """
        name = f"reissue:{version}"
        with self.store.read() as s:
            if s.get(Job, name) is not None:
                return 0
        count = 0
        try:
            with self.store.write() as tx:
                tx.add(
                    Job(name=name, lease_owner=self.owner, next_run_at=0, last_run_at=self.now())
                )
                tx.flush()
                rows = tx.execute(
                    select(Grant, Room)
                    .join(Room, Room.id == Grant.room_id)
                    .where(Room.state == RoomState.ACTIVE, Grant.revoked_at.is_(None))
                ).all()
                for g, room in rows:
                    g.secret_version = version
                    if g.dm_ts:
                        tx.add(self._dm_edit(room, g, "reissue"))
                        count += 1
                self.store.audit(tx, "reissue", actor="scheduler", version=version, dms=count)
        except IntegrityError:
            return 0  # another replica took this version
        if self.outbox:
            self.outbox.kick()
        log.info("re-issued %d links for secret version %s", count, version)
        return count

    # -- rendering for the outbox --------------------------------------------
    def render(self, row: Outbox) -> Rendered | None:
        """Turn an outbox row into the message to send now, from current state."""
        with self.store.read() as s:
            room = s.get(Room, row.room_id) if row.room_id else None
            grant = s.get(Grant, row.grant_id) if row.grant_id else None
        if room is None:
            return None
        if row.kind == "room_card" or row.kind == "card_update":
            text, blocks = messages.room_card(
                room_id=room.id,
                topic=room.topic,
                owner_id=room.owner_id,
                expires_at=room.expires_at,
                ended=room.state != RoomState.ACTIVE,
                call_id=room.slack_call_id,
            )
            if row.kind == "card_update":
                return Rendered(text, blocks, edit_ts=room.channel_ts) if room.channel_ts else None
            return Rendered(text, blocks, metadata=self._metadata(row))
        if grant is None:
            return None
        if row.kind == "dm_link":
            if room.state != RoomState.ACTIVE or grant.revoked_at is not None:
                return None  # ended before the DM went out: nothing worth saying
            text, blocks = self._invite(room, grant)
            return Rendered(text, blocks, metadata=self._metadata(row))
        if row.kind == "dm_update":
            if not grant.dm_ts:
                return None
            payload = json.loads(row.payload or "{}")
            if payload.get("mode") == "ended" or room.state != RoomState.ACTIVE:
                text, blocks = messages.ended_dm(
                    room_id=room.id, topic=room.topic, reason=payload.get("reason")
                )
            elif payload.get("mode") == "kicked" or grant.revoked_at is not None:
                # Also for a re-issue queued before a kick: never a link for a revoked grant.
                text, blocks = messages.kicked_dm(
                    room_id=room.id, topic=room.topic, owner_id=room.owner_id
                )
            else:
                text, blocks = self._invite(room, grant)
            return Rendered(text, blocks, edit_ts=grant.dm_ts)
        log.error("unknown outbox kind %s", row.kind)
        return None

    def link_for(self, room: Room, grant: Grant, *, direct: bool = False) -> str:
        """The personal link of one grant, as it goes into a DM.

        With MEETBOT_PUBLIC_URL: ``{public}/join/<id>`` (bot/joinlinks.py), which
        mints the token only when clicked. Otherwise, or with ``direct=True``
        (that click), the Circle link minted now with the current secret.
        """
        if not direct:
            public = joinlinks.public_link(self, room, grant)
            if public is not None:
                return public
        _, secret = self.secrets.current()
        token = mint_join_token(
            room_id=room.id, user_id=grant.user_id, exp=grant.exp, jti=grant.jti, secret=secret
        )
        stream_id = None
        if self.settings.slack_calls and room.slack_call_id:
            stream_id = participant_stream_id(self.settings, room.id, grant.user_id)
        return circle_link(
            self.settings.ams_url,
            self.settings.ams_app,
            room.id,
            token,
            grant.display_name,
            stream_id=stream_id,
        )

    def _invite(self, room: Room, grant: Grant) -> tuple[str, list[dict[str, Any]]]:
        link = self.link_for(room, grant)
        return messages.invite_dm(
            room_id=room.id,
            topic=room.topic,
            owner_id=room.owner_id,
            expires_at=room.expires_at,
            link=link,
            is_owner=grant.user_id == room.owner_id,
        )

    @staticmethod
    def _metadata(row: Outbox) -> dict[str, Any]:
        # Lets a recovering sender find a message it posted but did not record.
        return {"event_type": "meetbot_outbox", "event_payload": {"outbox_id": row.id}}

    # -- misc -----------------------------------------------------------------
    def list_text(self, team_id: str, user_id: str) -> str:
        return messages.room_list(self.store.open_rooms_of(team_id, user_id))

    def _tell(self, response_url: str | None, text: str) -> None:
        sink = REPLY_SINK.get()
        if response_url:
            self.slack.respond(response_url, text)
        elif sink is not None:
            sink(text)
        else:
            log.info("no response_url for a reply to the user")

    def _tell_requester(self, req: OpenRequest, text: str) -> None:
        """Through the request's response_url, else its ``notify`` (Home, shortcuts)."""
        if req.response_url or req.notify is None:
            self._tell(req.response_url, text)
            return
        try:
            req.notify(text)
        except Exception:
            log.exception("could not tell the requester of room %s", req.room_id or "(new)")

    def room_changed(self, room_id: str) -> None:
        """Call ``on_change`` with the room's owner and grantees; never raises.

        The room operation already happened: a failure to refresh somebody's
        App Home must not turn it into an error.
        """
        if self.on_change is None:
            return
        try:
            room = self.store.room(room_id)
            if room is None:
                return
            grants = self.store.grants_of(room_id, include_revoked=True)
            users = list(dict.fromkeys([room.owner_id, *(g.user_id for g in grants)]))
            self.on_change(room.team_id, users)
        except Exception:
            log.exception("on_change hook failed for room %s", room_id)

    def _people_changed(self, people: dict[str, dict[str, None]]) -> None:
        """``on_change`` once per workspace for many rooms (team → users); never raises."""
        if self.on_change is None:
            return
        for team_id, users in people.items():
            try:
                self.on_change(team_id, list(users))
            except Exception:
                log.exception("on_change hook failed for %d people", len(users))

    def _event(self, name: str) -> None:
        if self.on_event:
            self.on_event(name)

    @staticmethod
    def _hook(fn: Callable[[Room], object] | None, room: Room) -> None:
        """Run an optional room hook; its failure never fails the room operation."""
        if fn is None:
            return
        try:
            fn(room)
        except Exception:
            log.exception("room hook %s failed for room %s", getattr(fn, "__name__", fn), room.id)
