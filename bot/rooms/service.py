"""The room lifecycle: open, invite, hand out links, extend, remove a person, end.

Everything here runs after Slack got its ack, on the bot's own threads.
State changes and the Slack messages they owe are written in one transaction
(the outbox); the outbox worker sends them. AMS is called outside database
transactions so a slow AMS never holds a database lock.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.exc import IntegrityError

from bot import leases
from bot.ams.client import AmsClient, AmsError, AmsIdTaken, AmsInvalidId, AmsNotFound
from bot.ams.marker import ams_marker, is_ours
from bot.ams.stream_secret import SecretSource
from bot.config import Settings
from bot.durations import format_duration
from bot.logs import ContextThreadPoolExecutor, correlation_id
from bot.rooms.access import PLAY, PUBLISH, seen_recently
from bot.rooms.admission import (
    Admission,
    Admitted,
    OpenLookups,
    Refused,
    new_grant,
    refusal_record,
)
from bot.rooms.links import Links
from bot.rooms.replies import Replies
from bot.rooms.streams import Streams
from bot.slack import messages
from bot.slack.calls import SlackCalls
from bot.slack.gateway import SlackGateway, acting_for
from bot.slack.outbox import Handover, OutboxWorker
from bot.store import Grant, Outbox, OutboxState, Room, RoomState, Store
from bot.tokens import new_room_id

log = logging.getLogger("meetbot.rooms")

LINK_RESEND_WINDOW_S = 30  # a second "Get my link" click within this sends nothing
REISSUE_JOB = "reissue"  # the job lease of the stale-DM scan (Rooms.reissue_links)
REISSUE_LEASE_S = 60
CLEANUP_ATTEMPTS = 3  # deletes of a room whose create failed unclearly
STUCK_CREATING_S = 300  # far longer than a create with all its retries takes
MARK_CHUNK = 500  # rooms per IN (...) list when revokes are recorded in bulk
#: users.info calls in flight for one room's people: a 30-person standup is
#: resolved in one Slack round trip, not four (Tier 4 takes such a burst).
LOOKUP_THREADS = 32
#: An end counts AMS's live participants after stopping them, up to this many times.
CONFIRM_ATTEMPTS = 3
CONFIRM_PAUSE_S = 0.25  # before counting again, times the attempt: a stop takes a moment
SUBTRACK_PAGE_MARGIN = 50  # participants who may join between the count and the list


@dataclass
class Stopped:
    """What AMS said to the stops of one person's streams."""

    stopped: int = 0  # AMS stopped them: the person was disconnected
    failed: int = 0  # AMS did not answer: they may still be connected


#: Whose view of rooms changed, by workspace: (team, Grid org) -> people, in order.
People = dict[tuple[str, str | None], dict[str, None]]


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


class Rooms:
    """Room operations with their side effects on AMS, the database and Slack."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ams: AmsClient,
        slack: SlackGateway,
        secrets: SecretSource,
        links: Links,
        outbox: OutboxWorker,
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
        streams: Streams | None = None,
        calls: SlackCalls | None = None,
        on_change: Callable[[str, list[str], str | None], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        """``owner`` names this process in leases; ``streams`` knows whose streams AMS
        carries (what a kick and an end stop); ``calls`` registers rooms as Slack
        Calls; ``on_change(team, users, org)`` hears whose view of rooms changed (the App
        Home); ``on_event(name)`` counts "created", "revoked" and "failed" (metrics)."""
        self.settings = settings
        self.store = store
        self.ams = ams
        self.slack = slack
        self.secrets = secrets
        self.links = links
        self.outbox = outbox
        self.owner = owner
        self.clock = clock
        self.streams = streams or Streams(store)
        self.calls = calls
        self.on_change = on_change
        self.on_event = on_event
        self.replies = Replies(store, slack)
        self.admission = Admission(settings, slack)
        self._lookup_pool = ContextThreadPoolExecutor(
            max_workers=LOOKUP_THREADS, thread_name_prefix="users"
        )

    def now(self) -> int:
        return int(self.clock())

    def close(self) -> None:
        """Let in-flight lookups finish; free their threads."""
        self._lookup_pool.shutdown(wait=True)

    # -- people ---------------------------------------------------------
    def resolve_people(
        self,
        requester: str,
        invitees: Sequence[str],
        *,
        team_id: str,
        enterprise_id: str | None = None,
    ) -> list[Admitted]:
        """The owner and invitees of a room about to open, as the admission policy
        admits them; a RoomError (for the requester) when any of them is refused."""
        lookups = self.admission.ask_for_open(
            team_id, enterprise_id, requester, invitees, lookups=self._lookup_pool
        )
        return self._admitted(lookups)

    def _admitted(self, lookups: OpenLookups) -> list[Admitted]:
        decisions = self.admission.decide_open(lookups)
        refused = [d for d in decisions if isinstance(d, Refused)]
        problems = [d.about for d in refused if d.why != "guest_owner"]
        if problems:
            raise RoomError("I didn't open a room: " + "; ".join(problems) + ".")
        if refused:
            raise RoomError(refused[0].message)
        return [d for d in decisions if isinstance(d, Admitted)]

    # -- open -------------------------------------------------------------
    def open_room(self, req: OpenRequest) -> Room | None:
        """Create the room on AMS and owe everyone their DM. Tells the requester."""
        with acting_for(req.team_id, req.enterprise_id):
            return self._open_room(req)

    def _open_room(self, req: OpenRequest) -> Room | None:
        try:
            room, owed = self._create(req)
        except RoomError as e:
            self.replies.tell_requester(req.response_url, req.notify, e.user_message)
            return None

        def done(rows: list[Outbox]) -> None:
            self.replies.fanout_done(room, rows, req.response_url, req.notify)

        if owed is None:
            self.outbox.kick()
            # It reports rows finished before it (its check is a query).
            self.outbox.watch_room(room.id, done)
            self.room_changed(room.id)  # the App Homes concerned
            return room
        # Handed over to this process's outbox: nothing of it can have been sent
        # before the hand-over, so the watch needs no check. And nothing to read
        # for the App Homes: everyone invited has a DM among the rows. The DMs'
        # sending threads then have the interpreter to themselves.
        self.outbox.watch_room(room.id, done, check=False)
        self.outbox.adopt(owed)  # written leased to this process: sent with no claim
        users = [room.owner_id, *(r.channel for r in owed.rows if r.kind == "dm_link")]
        self.homes_changed(room.team_id, users, room.enterprise_id)
        return room

    def _create(self, req: OpenRequest) -> tuple[Room, Handover | None]:
        """Write the room, create it on AMS, then activate it with everyone's grant.

        Returns the room and the invitations it owes that this process's outbox
        leased as they were written (``OutboxWorker.lease_new``; none when the
        room was opened by an earlier try, or no outbox runs here).

        Slack says who everyone is (``users.info``) while AMS creates the room: a
        link waits for the longer of the two calls, not for both. A person the
        admission policy refuses then withdraws the new room from AMS and from
        here before the requester hears (``_withdraw``).
        """
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
        lookups: OpenLookups | None = None
        for attempt in range(2):
            room = Room(id=req.room_id or new_room_id(), **fields)
            with self.store.write() as tx:
                prior = tx.get(Room, req.room_id) if req.room_id else None
                if prior is not None and prior.state != RoomState.CREATING:
                    if prior.state == RoomState.FAILED:
                        raise RoomError(f"Room `{prior.id}` failed to open ({prior.end_reason}).")
                    return prior, None  # opened by an earlier try: never a second room
                if req.schedule_id is None:
                    # Count and insert as one step per person (PostgreSQL: an advisory lock).
                    self.store.lock_person(tx, req.team_id, req.user_id)
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
            if lookups is None:  # started after the write: its threads do not slow it
                lookups = self.admission.ask_for_open(
                    req.team_id,
                    req.enterprise_id,
                    req.user_id,
                    req.invitees,
                    lookups=self._lookup_pool,
                )
            try:
                self.ams.create_room(
                    room.id,
                    messages.topic_or_default(req.topic),
                    start,
                    room.expires_at,
                    metadata=ams_marker(req.team_id, self.deployment()),
                )
                break
            except AmsIdTaken:
                if req.room_id is not None and self._ours_on_ams(room.id):
                    break  # made by an earlier try whose answer was lost: it is this room
                # Not ours: never delete it. 128 random bits colliding means
                # something odd; one fresh id, then give up.
                self.mark_failed(room.id, "id taken on AMS", ours_on_ams=False)
                if attempt == 1 or req.room_id is not None:
                    raise RoomError(
                        "The video server refused the new room's id twice. Try again; "
                        "if it keeps happening, tell your admin."
                    ) from None
            except AmsError as e:
                log.warning("AMS create failed for room %s: %s", room.id, e)
                self.mark_failed(room.id, type(e).__name__)
                self.cleanup_on_ams(room.id)
                raise RoomError(f"I couldn't open the room: {e.user_message}") from None
        assert lookups is not None
        try:
            admitted = self._admitted(lookups)
        except RoomError:
            self._withdraw(room.id)
            raise
        if self.calls is not None:
            self.calls.register(room)  # before activation: the card must carry the Call
        return self._activate(room, req, admitted)

    def _ours_on_ams(self, room_id: str) -> bool:
        """Whether the broadcast ``room_id`` on AMS carries this deployment's marker."""
        try:
            return is_ours(self.ams.get_room(room_id), self.deployment())
        except AmsError:
            return False

    def deployment(self) -> str:
        """This deployment's identity (``Store.deployment_id``), which marks its rooms on AMS."""
        value = self.store.deployment_id()
        assert value is not None
        return value

    def mark_failed(
        self, room_id: str, reason: str, *, ours_on_ams: bool = True, refused: bool = False
    ) -> None:
        """Record a room that never opened.

        ``ours_on_ams``: the create may still land on AMS after we gave up (a
        slow AMS finishes the request later), so the sweep deletes the id a few
        more times (``Sweep.failed_opens``). Never for an id that AMS said belongs
        to someone else. ``refused``: the requester named someone who cannot be
        invited; that is not a failure an operator should count.
        """
        with self.store.write() as tx:
            row = tx.get(Room, room_id)
            if row is not None:
                row.state = RoomState.FAILED
                row.end_reason = reason
                row.ended_at = self.now()
                row.attempts = 0 if ours_on_ams else CLEANUP_ATTEMPTS
                row.next_attempt_at = self.now() + self.cleanup_delay()
                self.store.audit(
                    tx,
                    "open_failed",
                    actor=row.owner_id,
                    team_id=row.team_id,
                    room_id=room_id,
                    reason=reason,
                )
        if row is not None and not refused:
            self.event("failed")

    def cleanup_delay(self) -> int:
        """Long enough for a create that AMS is still chewing on to have landed."""
        return int(2 * self.settings.ams_timeout) + 1

    def cleanup_on_ams(self, room_id: str) -> None:
        """After an unclear create (timeout, 5xx), make sure nothing stays on AMS."""
        try:
            self.ams.delete_room(room_id)
        except AmsError as e:
            # Reconciliation removes it later: it carries our marker.
            log.warning("could not clean up room %s on AMS: %s", room_id, e)

    def _withdraw(self, room_id: str) -> None:
        """Undo a room made on AMS for a request that is then refused (someone named
        cannot be invited): gone from AMS, gone here, as if never asked. If AMS
        does not confirm, the room is failed and the sweep deletes it later."""
        try:
            self.ams.delete_room(room_id)
        except AmsError as e:
            log.warning("could not withdraw room %s from AMS: %s", room_id, e)
            self.mark_failed(room_id, "someone could not be invited", refused=True)
            return
        with self.store.write() as tx:
            tx.execute(delete(Room).where(Room.id == room_id, Room.state == RoomState.CREATING))

    def _activate(
        self, room: Room, req: OpenRequest, people: list[Admitted]
    ) -> tuple[Room, Handover | None]:
        version, _ = self.secrets.current()
        t = self.now()
        with self.store.write() as tx:
            # The room as written in _create (committed, detached), taken back into this
            # transaction rather than read again: only its state changes.
            row = room
            tx.add(row)
            row.state = RoomState.ACTIVE
            grants = [
                new_grant(
                    row, person, secret_version=version, now=t, grace=self.settings.token_grace
                )
                for person in people
            ]
            for grant in grants:
                grant.link_sent_at = t
            tx.add_all(grants)
            tx.flush()  # one INSERT for all: the grants' ids, for their DMs' rows
            # The requester's DM first: the outbox sends in this order.
            owed = [self._outbox(row, "dm_link", g.user_id, grant_id=g.id) for g in grants]
            owed.append(self._outbox(row, "room_card", row.channel_id))
            handover = self.outbox.lease_new(owed, at=t, tx=tx)
            tx.add_all(owed)
            self.store.audit(
                tx,
                "open",
                actor=req.user_id,
                team_id=row.team_id,
                room_id=row.id,
                invitees=[p.user_id for p in people[1:]],
                expires_at=row.expires_at,
            )
            room = row
        log.info("room %s opened by %s for %d people", room.id, req.user_id, len(people))
        self.event("created")
        return room, handover

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

    # -- links ------------------------------------------------------------
    def send_link(self, team_id: str, room_id: str, user_id: str, response_url: str | None) -> bool:
        """A "Get my link" click: DM the clicker their own link, once per click burst.

        Whether they may have one is the admission policy's answer
        (``bot/rooms/admission.py``); a forged click is refused like a real one.
        """
        room = self.store.room(room_id, team_id)
        if room is None or room.state != RoomState.ACTIVE:
            self.replies.tell(response_url, "This room has ended. Start a new one with `/meet`.")
            return False
        decision = self.admission.for_room(
            room, user_id, self.grant_of(room_id, user_id), team_id=team_id
        )
        t = self.now()
        version, _ = self.secrets.current()
        refusal = decision.message if isinstance(decision, Refused) else None
        if refusal is None:
            with self.store.write() as tx:
                grant = tx.scalars(
                    select(Grant)
                    .where(Grant.room_id == room_id, Grant.user_id == user_id)
                    .with_for_update()
                ).first()
                if grant is not None:  # theirs already, or made (or barred) since the decision
                    decision = self.admission.for_room(room, user_id, grant)
                if isinstance(decision, Refused):
                    refusal = decision.message
                elif (
                    grant is not None
                    and grant.link_sent_at
                    and (t - grant.link_sent_at < LINK_RESEND_WINDOW_S)
                ):
                    refusal = "Your link is in your DMs with me."
                else:
                    if grant is None:
                        grant = new_grant(
                            room,
                            decision,
                            secret_version=version,
                            now=t,
                            grace=self.settings.token_grace,
                        )
                        tx.add(grant)
                        tx.flush()
                    grant.link_sent_at = t
                    tx.add(self._outbox(room, "dm_link", user_id, grant_id=grant.id))
                    self.store.audit(
                        tx,
                        "link",
                        actor=user_id,
                        team_id=team_id,
                        room_id=room_id,
                        admitted_as=decision.role,
                    )
        # Replies go out after the transaction: never hold the write lock over HTTP.
        if refusal is not None:
            self.replies.tell(response_url, refusal)
            return False
        self.outbox.kick()
        self.replies.tell(response_url, "I've sent your personal link to you by DM.")
        return True

    def grant_of(self, room_id: str, user_id: str) -> Grant | None:
        """The person's grant in the room (revoked ones too), or None."""
        with self.store.read() as s:
            return s.scalar(select(Grant).where(Grant.room_id == room_id, Grant.user_id == user_id))

    def grant_for(
        self,
        room: Room,
        user_id: str,
        *,
        via: str,
        actor: str | None = None,
        team_id: str | None = None,
        display_name: str | None = None,
    ) -> tuple[Grant | None, Refused | None]:
        """The person's grant, made now if the admission policy admits them.

        For the paths that hand out a link without a DM: a Slack Call sign-in
        (``via="slack_call"``, ``team_id`` the workspace they signed in to) and
        ``meetbot link`` (``via="cli"``). ``(grant, None)``, or ``(None, refusal)``.
        A new grant is audited (``grant``, by ``actor``, default the person).
        """
        decision = self.admission.for_room(
            room, user_id, self.grant_of(room.id, user_id), team_id=team_id
        )
        if isinstance(decision, Refused):
            return None, decision
        if decision.grant is not None:
            return decision.grant, None
        version, _ = self.secrets.current()
        grant = new_grant(
            room, decision, secret_version=version, now=self.now(), grace=self.settings.token_grace
        )
        if display_name:
            grant.display_name = display_name[:120]
        try:
            with self.store.write() as tx:
                tx.add(grant)
                self.store.audit(
                    tx,
                    "grant",
                    actor=actor or user_id,
                    team_id=room.team_id,
                    room_id=room.id,
                    user=user_id,
                    via=via,
                    admitted_as=decision.role,
                )
        except IntegrityError:  # the same person, a second tab (or a kick), at the same moment
            decision = self.admission.for_room(room, user_id, self.grant_of(room.id, user_id))
            if isinstance(decision, Refused):
                return None, decision
            return decision.grant, None
        return grant, None

    # -- end ----------------------------------------------------------------
    def end_room(self, team_id: str, room_id: str, user_id: str, response_url: str | None) -> bool:
        """`/meet end`: owner or workspace admin only."""
        room = self.store.room(room_id, team_id)
        if room is None:
            self.replies.tell(response_url, f"I don't know a room `{room_id}` in this workspace.")
            return False
        if room.owner_id != user_id:
            try:
                admin = self.slack.user_info(user_id).is_admin
            except Exception:
                admin = False
            if not admin:
                self.replies.tell(
                    response_url,
                    f"Only the room's owner (<@{room.owner_id}>) or a workspace admin can end it.",
                )
                return False
        if room.state != RoomState.ACTIVE:
            self.replies.tell(response_url, f"Room `{room_id}` has already ended.")
            return False
        ok = self.revoke(room_id, actor=user_id, reason=f"ended by <@{user_id}>")
        if ok:
            self.replies.tell(response_url, f"Ended *{messages.escape(room.topic or 'the room')}*.")
        elif (now := self.store.room(room_id)) is not None and (
            now.state != RoomState.ACTIVE or now.lease_owner is not None
        ):
            # Not claimed: a double click, or the sweep, is ending it right now.
            self.replies.tell(
                response_url, f"Room `{room_id}` has already ended (or is ending now)."
            )
        else:
            self.replies.tell(
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
            self.end_on_ams(room_id, self.streams.of_rooms([room_id]).get(room_id, ()))
        except AmsError as e:
            self._revoke_failed(room_id, e)
            return False
        return self._mark_revoked(room_id, actor=actor, reason=reason)

    def end_on_ams(self, room_id: str, streams: Sequence[str] = ()) -> None:
        """Disconnect everyone in the room, confirm it, then delete it on AMS.

        ``streams``: the participant streams the publish webhook recorded for the
        room and no hook said had ended (``Streams.of_rooms``), each stopped by
        id. Then AMS's ``active-subtracks-count`` must say 0 (or the room is gone,
        404). While it does not, the room is stopped (Enterprise stops its
        participants; Community Edition ignores ``stopSubtracks``), each stream
        AMS lists as active is stopped by id (that works on both), and it is
        counted again. Only then the room is deleted: a Community-Edition DELETE
        removes the records and leaves the people connected. The DELETE stops the
        room itself first (``deleteSubtracks`` defaults to true), so a room
        nobody is in costs two calls, a count and a delete, plus one per recorded
        stream.

        The AMS half of a revoke, and all the sweep's AMS threads do: no
        database, no hooks. Raises ``AmsError`` when AMS did not confirm; the
        room then stays due and is tried again.
        """
        for stream_id in streams:
            self._stop_stream(stream_id)
        for attempt in range(1, CONFIRM_ATTEMPTS + 1):
            try:
                live = self.ams.participant_count(room_id)
            except AmsNotFound:
                break  # gone; or AMS's datastore failed the read: the delete settles both
            if live == 0:
                break
            if attempt == CONFIRM_ATTEMPTS:
                raise AmsError(
                    f"AMS still counts {live} live participant(s) in room {room_id} after "
                    f"stopping them {attempt - 1} times; the room stays due and is tried again",
                    user_message="The video server did not disconnect everyone.",
                )
            try:
                self.ams.stop_room(room_id)
                tracks = self.ams.active_subtracks(room_id, 0, live + SUBTRACK_PAGE_MARGIN)
            except AmsNotFound:
                break
            for track in tracks:
                stream_id = track.get("streamId")
                if isinstance(stream_id, str) and stream_id and stream_id != room_id:
                    self._stop_stream(stream_id)
            time.sleep(CONFIRM_PAUSE_S * attempt)
        self.ams.delete_room(room_id)  # False: already gone, which is what we want

    def _stop_stream(self, stream_id: str) -> bool:
        """Stop one participant stream; False when AMS says it was not live (or is unknown)."""
        try:
            return self.ams.stop_stream(stream_id)
        except (AmsNotFound, AmsInvalidId):
            return False

    def _mark_revoked(self, room_id: str, *, actor: str, reason: str) -> bool:
        """The database half of a revoke: state, grants, and the edits owed."""
        return bool(self.record_revoked([room_id], actor=actor, reason=reason))

    def record_revoked(self, room_ids: Sequence[str], *, actor: str, reason: str) -> list[Room]:
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
        people: People = {}  # (team, org) -> owners and grantees, in order
        with self.store.write() as tx:
            for i in range(0, len(room_ids), MARK_CHUNK):
                rooms += self._mark_revoked_in(tx, room_ids[i : i + MARK_CHUNK], t, reason, people)
            self.store.audit_many(
                tx, "revoke", actor=actor, rooms=[(r.team_id, r.id) for r in rooms], reason=reason
            )
        for room in rooms:
            log.info("room %s revoked (%s)", room.id, reason)
            self.event("revoked")
        self._people_changed(people)
        if self.calls is not None:
            for room in rooms:
                self.calls.room_ended(room)
        if rooms:
            self.outbox.kick()
        return rooms

    def _mark_revoked_in(
        self,
        tx: Any,
        room_ids: Sequence[str],
        t: int,
        reason: str,
        people: People,
    ) -> list[Room]:
        """``record_revoked`` for up to ``MARK_CHUNK`` rooms, inside ``tx``."""
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
            people.setdefault((room.team_id, room.enterprise_id), {})[room.owner_id] = None
        for g in grants:
            room = by_id[g.room_id]
            people[(room.team_id, room.enterprise_id)][g.user_id] = None
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
        # Someone ended it (or the app left the workspace): it is due now, whatever
        # its planned end, so the sweep keeps trying and AMS's checks refuse its links.
        self.record_revoke_failed([(room_id, e)], due_now=True)

    def record_revoke_failed(
        self, failures: Sequence[tuple[str, Exception]], *, due_now: bool = False
    ) -> None:
        """Rooms AMS did not confirm gone: each stays due, with its backoff, in one
        transaction; the lease goes, so a later sweep (or replica) retries them.
        ``due_now``: the room's end moves to now (an explicit end, not an expiry)."""
        if not failures:
            return
        for room_id, e in failures:
            log.warning("revoking room %s failed on AMS: %s", room_id, e)
        t = self.now()
        with self.store.write() as tx:
            ids = [room_id for room_id, _ in failures]
            for i in range(0, len(ids), MARK_CHUNK):
                for room in tx.scalars(select(Room).where(Room.id.in_(ids[i : i + MARK_CHUNK]))):
                    if due_now and room.expires_at > t:
                        room.expires_at = t
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
            self.replies.tell(response_url, refusal)
            return False
        self.outbox.kick()
        self.room_changed(room_id)
        self.replies.tell(
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

    # -- remove one person ---------------------------------------------------------
    def kick(
        self,
        team_id: str,
        room_id: str,
        user_id: str,
        target_id: str,
        response_url: str | None,
    ) -> bool:
        """`/meet kick <room> @person`: withdraw one person's link (the room's owner only).

        The grant is marked revoked, their DM is edited to say they were removed
        (an outbox ``dm_update`` with mode ``kicked``), and an audit row is
        written, in one transaction. Someone who never had a link gets a revoked
        grant anyway, so "Get my link" refuses them too. Whether their current
        token stops working depends on AMS's authorization webhook: the reply to
        the owner says which.
        """
        t = self.now()
        refusal = None
        had_link = False
        grant_id: int | None = None
        topic, expires_at = "", t
        with self.store.write() as tx:
            room = tx.get(Room, room_id)
            if room is None or room.team_id != team_id:
                refusal = f"I don't know a room `{room_id}` in this workspace."
            elif room.owner_id != user_id:
                refusal = f"Only the room's owner (<@{room.owner_id}>) can remove people from it."
            elif room.state != RoomState.ACTIVE:
                refusal = f"Room `{room_id}` has already ended."
            elif target_id == user_id:
                refusal = (
                    "You can't remove yourself from your own room. "
                    f"To close it for everyone, use `/meet end {room_id}`."
                )
            if refusal is None and room is not None:
                grant = tx.scalars(
                    select(Grant)
                    .where(Grant.room_id == room_id, Grant.user_id == target_id)
                    .with_for_update()
                ).first()
                if grant is not None and grant.revoked_at is not None:
                    refusal = f"<@{target_id}> was already removed from this room."
                elif grant is None:
                    # Bar them from every other way in (Get my link, a Call, support).
                    tx.add(refusal_record(room, target_id, now=t, grace=self.settings.token_grace))
                else:
                    had_link = True
                    grant_id = grant.id
                    grant.revoked_at = t
                    if grant.dm_ts:
                        tx.add(self._dm_edit(room, grant, "kicked"))
                if refusal is None:
                    self.store.audit(
                        tx, "kick", actor=user_id, team_id=team_id, room_id=room_id, user=target_id
                    )
                    topic, expires_at = room.topic, room.expires_at
        if refusal is not None:
            self.replies.tell(response_url, refusal)
            return False
        log.info("room %s: %s removed %s", room_id, user_id, target_id)
        self.outbox.kick()
        stopped = self._stop_streams_of(grant_id) if grant_id is not None else Stopped()
        if self.calls is not None:
            self.calls.participant(room_id, target_id, joined=False)
        self.room_changed(room_id)
        webhook = bool(self.settings.webhook_secret)
        self.replies.tell(
            response_url,
            messages.kick_reply(
                target_id,
                topic=topic,
                room_id=room_id,
                had_link=had_link,
                webhook=webhook,
                token_exp=expires_at + self.settings.token_grace,
                stopped=stopped.stopped,
                not_stopped=stopped.failed,
                publish_checked=webhook and seen_recently(self.store, PUBLISH, t),
                play_checked=webhook and seen_recently(self.store, PLAY, t),
            ),
        )
        return True

    def _stop_streams_of(self, grant_id: int) -> Stopped:
        """Stop, on AMS, the streams the publish webhook recorded for one grant.

        Stopping a participant's own stream closes their connection (both
        editions); when their client reconnects, the publish and play checks
        refuse the revoked grant. Nobody else's stream is touched.
        """
        out = Stopped()
        for stream_id in self.streams.of_grant(grant_id):
            try:
                if self._stop_stream(stream_id):
                    out.stopped += 1
            except AmsError as e:
                log.warning("could not stop a stream of a removed person: %s", e)
                out.failed += 1
        return out

    def reissue_links(self, version: int | None) -> int:
        """Edit every active DM whose link was minted with a secret other than ``version``.

        Right after a rotation that is every active room's DMs. On later sweeps
        it is the DMs rendered with the old secret in the moments around the
        rotation: rendered before it, landed after this ran (their grant's
        ``secret_version``, recorded at rendering, is the old one). A DM whose
        edit is still owed is not owed a second one; one replica at a time
        (a job lease) looks.
        """
        if version is None:
            return 0
        t = self.now()
        if not leases.claim(self.store, REISSUE_JOB, self.owner, now=t, lease=REISSUE_LEASE_S):
            return 0
        count = 0
        try:
            with self.store.write() as tx:
                owed = exists().where(
                    Outbox.grant_id == Grant.id,
                    Outbox.kind == "dm_update",
                    Outbox.state == OutboxState.PENDING,
                )
                rows = tx.execute(
                    select(Grant, Room)
                    .join(Room, Room.id == Grant.room_id)
                    .where(Room.state == RoomState.ACTIVE, Grant.revoked_at.is_(None))
                    .where(Grant.dm_ts.is_not(None), Grant.secret_version.is_not(None))
                    .where(Grant.secret_version != version, ~owed)
                    .order_by(Grant.id)
                ).all()
                for g, room in rows:
                    tx.add(self._dm_edit(room, g, "reissue"))
                count = len(rows)
                if count:
                    self.store.audit(tx, "reissue", actor="scheduler", version=version, dms=count)
        finally:
            leases.release(self.store, REISSUE_JOB, self.owner)
        if count:
            self.outbox.kick()
            log.info("re-issued %d links for secret version %s", count, version)
        return count

    # -- misc -----------------------------------------------------------------
    def list_text(self, team_id: str, user_id: str) -> str:
        return messages.room_list(self.store.open_rooms_of(team_id, user_id))

    def room_changed(self, room_id: str) -> None:
        """Call ``on_change`` with the room's owner and grantees; never raises.

        The room operation already happened: a failure to refresh somebody's
        App Home must not turn it into an error.
        """
        if self.on_change is None:
            return
        try:
            room = self.store.room(room_id)
            grants = self.store.grants_of(room_id, include_revoked=True) if room else []
        except Exception:
            log.exception("could not read whose App Homes room %s changes", room_id)
            return
        if room is not None:
            users = [room.owner_id, *(g.user_id for g in grants)]
            self.homes_changed(room.team_id, users, room.enterprise_id)

    def homes_changed(self, team_id: str, users: list[str], enterprise_id: str | None) -> None:
        """Call ``on_change`` for these people; never raises (as :meth:`room_changed`)."""
        if self.on_change is None:
            return
        try:
            self.on_change(team_id, list(dict.fromkeys(users)), enterprise_id)
        except Exception:
            log.exception("on_change hook failed for %d people", len(users))

    def _people_changed(self, people: People) -> None:
        """``on_change`` once per workspace for many rooms (team → users); never raises."""
        for (team_id, org), users in people.items():
            self.homes_changed(team_id, list(users), org)

    def event(self, name: str) -> None:
        """Count ``name`` ("created", "revoked", "failed") through ``on_event`` (metrics)."""
        if self.on_event:
            self.on_event(name)
