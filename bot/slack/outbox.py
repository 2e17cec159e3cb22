"""The outbox worker: sends owed Slack messages, at most as fast as Slack allows.

Rows are written by ``bot.rooms`` in the same transaction as the change that
owes them, so a crash never loses one. This worker claims due rows with a
lease, renders each at send time (so a DM sent late still says the right
thing and a token is minted only in memory; a room's invitations that leave
at once are rendered together as they are handed over), sends it, and records the Slack
channel and ts. A worker that dies leaves leases that run out; whoever claims
next sends the row. Retries happen here, never in the HTTP client, because
``chat.postMessage`` has no idempotency key.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from bot.logs import ContextThreadPoolExecutor, with_correlation
from bot.slack.gateway import SLACK_TIMEOUT_S, SlackGateway, SlackSendError, acting_for
from bot.slack.pacing import Pacer, Slot
from bot.store import Outbox, OutboxState, Store, now

log = logging.getLogger("meetbot.outbox")

LEASE_S = 30
MAX_ATTEMPTS = 8
MAX_INLINE_WAIT_S = 2.0  # the longest a paced post waits when it cannot be held (below)
INLINE_SLEEP_S = 0.05  # a paced post this close to its slot waits on its worker thread
SEND_BUDGET_S = SLACK_TIMEOUT_S + 5  # lease a held post must still have at its slot
#: Kinds sent with chat.postMessage, paced per channel (a room's invitations:
#: its DMs and its card); the rest are chat.update edits.
NEW_POST_KINDS = ("dm_link", "room_card")
#: How often the loop looks for watched rooms whose last invitation another
#: replica sent (a retried row any replica may claim): their requester is told too.
WATCH_RECHECK_S = 5.0
FANOUT_KINDS = NEW_POST_KINDS


@dataclass(frozen=True)
class Rendered:
    """A message ready to send: new post, or an edit of ``(channel, ts)``."""

    text: str
    blocks: list[dict[str, Any]]
    edit_ts: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Handover:
    """Rows :meth:`OutboxWorker.lease_new` leased to this worker as they were written,
    and, by position, the ``(slot, wait)`` each new post reserved in that
    transaction (None: none reserved yet; edits reserve nothing)."""

    rows: list[Outbox]
    slots: list[tuple[Slot | None, float] | None] | None


@dataclass(frozen=True)
class Prerendered:
    """A message rendered as its row was handed to a free worker (:meth:`OutboxWorker.adopt`,
    or a held post's release); ``message`` None: nothing to send. ``not_before``
    (monotonic): a held post's floors, read with its render, hold it until then."""

    message: Rendered | None
    not_before: float = 0.0


class Renderer(Protocol):
    def render(self, row: Outbox) -> Rendered | None: ...

    def render_many(self, rows: Sequence[Outbox]) -> list[Rendered | None]: ...


def _looks_first(row: Outbox) -> bool:
    """Whether sending ``row`` starts with a look at its channel's history: a DM
    with an earlier attempt whose outcome is unknown (it may have posted)."""
    return row.kind == "dm_link" and row.attempts - 1 > (row.settled_attempts or 0)


def worker_id() -> str:
    """Who holds a lease: the host (for people reading the table) and a random part.

    Kept within the 64-character lease columns: pod names can be 63 long.
    """
    return f"{socket.gethostname()[:48]}:{uuid.uuid4().hex[:8]}"


class OutboxWorker:
    """Background sender. ``kick()`` after writing rows so they go out at once."""

    def __init__(
        self,
        store: Store,
        slack: SlackGateway,
        renderer: Renderer,
        pacer: Pacer,
        *,
        workers: int = 8,
        poll_interval: float = 1.0,
        owner: str | None = None,
        lease: int = LEASE_S,
        on_result: Callable[[str, str], None] | None = None,
    ) -> None:
        """``renderer`` turns a row into the message to send (``bot.rooms.links.Links``);
        ``pacer`` spaces new posts as Slack's caps require, with every replica
        (``bot.slack.pacing``); ``on_result(kind, outcome)`` counts sends (metrics)."""
        self.store = store
        self.slack = slack
        self.renderer = renderer
        self.pacer = pacer
        self.owner = owner or worker_id()
        self.poll_interval = poll_interval
        self.lease = lease
        self._pool = ContextThreadPoolExecutor(max_workers=workers, thread_name_prefix="outbox")
        self._slots = threading.Semaphore(workers)
        self._workers = workers
        self._wake = threading.Event()
        # Set when the database may hold rows this process has not looked for:
        # new ones written here (kick), or more than the last claim could take.
        # Without it the loop claims only when a poll is due (_claim_due).
        self._claim_owed = threading.Event()
        self._claim_owed.set()
        self._next_poll = 0.0  # monotonic: when the loop looks next with nothing owed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Paced posts waiting for their slot, off the worker threads:
        # (due, row id, row, its reserved slot).
        self._held: list[tuple[float, int, Outbox, Slot]] = []
        # Rows handed over by their writer (adopt) waiting for a free worker, in
        # order: (row, its reserved (slot, wait) if a new post).
        self._ready: deque[tuple[Outbox, tuple[Slot | None, float] | None]] = deque()
        # Renders take turns (see _send).
        self._render_turn = threading.Lock()
        self._sending: set[int] = set()  # rows whose Slack call began, outcome not recorded
        self._sending_lock = threading.Lock()
        self._held_lock = threading.Lock()
        self._watchers: dict[str, Callable[[list[Outbox]], None]] = {}
        # Per watched room, the ids of its invitations handed over here (adopt) and
        # not finished here yet: until the last of them, finishing one needs no look
        # at the database to know the room still has invitations to send.
        self._unfinished: dict[str, set[int]] = {}
        # A watcher tells a requester how the invitations went (a response_url POST,
        # a Slack round trip): not on a sending thread, which a burst of rooms needs.
        self._told = ContextThreadPoolExecutor(max_workers=2, thread_name_prefix="outbox-done")
        self._watch_lock = threading.Lock()
        self._next_recheck = 0.0  # monotonic: when _recheck_watches looks next
        self.on_result = on_result

    # -- lifecycle ------------------------------------------------------
    def start(self) -> OutboxWorker:
        self._next_poll = time.monotonic() + self.poll_interval  # or at the first kick
        self._thread = threading.Thread(target=self._run, name="outbox-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 8.0) -> None:
        """Stop claiming, let sends in flight finish; unsent rows stay for others."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._told.shutdown(wait=True)
        # Rows we claimed but never started go back at once, not after the lease;
        # a send that began and never recorded its outcome stays unsure.
        with self._sending_lock:
            unsure = sorted(self._sending)
        released = self.store.release_outbox(self.owner, unsure=unsure)
        if released:
            log.info("handed back %d unsent messages", released)

    def kick(self) -> None:
        """New rows are waiting: look now rather than at the next poll."""
        self._claim_owed.set()
        self._wake.set()

    def lease_new(
        self, rows: Sequence[Outbox], *, at: int, tx: Session | None = None
    ) -> Handover | None:
        """Lease rows about to be written to this worker, if it runs (else None).

        Called inside the transaction ``tx`` that writes them; once it commits, the
        writer hands them over with :meth:`adopt`. A room's invitations then
        start at once, with no claim transaction and no wait for the loop: the
        requester's DM leaves milliseconds sooner. Their new posts reserve their
        slots in ``tx`` too, not in a transaction of their own before the first
        one can leave. Should this process die first, the lease runs out and any
        replica claims them as usual.
        """
        if self._thread is None or self._stop.is_set():
            return None  # nobody here would send them: they wait for a claim
        for r in rows:
            r.lease_owner = self.owner
            r.lease_until = at + self.lease
            r.attempts = 1  # as a claim counts it
        posts = [r for r in rows if r.kind in NEW_POST_KINDS]
        if tx is None or not posts:
            return Handover(list(rows), None)
        reserved = iter(self._reserve(posts, s=tx))
        return Handover(
            list(rows), [next(reserved) if r.kind in NEW_POST_KINDS else None for r in rows]
        )

    def adopt(self, handover: Handover) -> None:
        """Send the committed rows of a :meth:`lease_new` hand-over, as if just claimed.

        New posts take the slots they reserved as they were written, or reserve
        them here, together, in the rows' order; the rows go to free workers in
        that order, the rest as workers free up. Those that free workers take at
        once are rendered here first, together (:meth:`_prerender`); the rest
        are rendered when they go, from the state then.
        """
        rows, slots = handover.rows, handover.slots
        with self._watch_lock:
            for r in rows:
                if r.room_id in self._watchers and r.kind in FANOUT_KINDS:
                    self._unfinished.setdefault(r.room_id, set()).add(r.id)
        if slots is None:
            posts = [r for r in rows if r.kind in NEW_POST_KINDS]
            try:
                reserved = iter(self._reserve(posts))
                slots = [next(reserved) if r.kind in NEW_POST_KINDS else None for r in rows]
            except Exception:  # each post reserves its own slot when it is sent
                log.exception("reserving slots for %d new posts failed", len(posts))
                slots = [None] * len(rows)
        if self._stop.is_set():
            with self._held_lock:
                self._ready.extend(zip(rows, slots, strict=True))
            return  # stopping: stop() hands them back unsent
        at_once = 0  # how many of the first rows free workers take now
        with self._held_lock:
            if not self._ready:  # else they queue behind rows handed over earlier
                while at_once < len(rows) and self._slots.acquire(blocking=False):
                    at_once += 1
        prerendered = self._prerender(rows[:at_once], slots[:at_once])
        submitted = 0
        try:
            first = zip(rows[:at_once], slots[:at_once], prerendered, strict=True)
            for row, reserved, message in first:
                self._pool.submit(self._send_and_release, row, None, reserved, message)
                submitted += 1
        except RuntimeError:  # stopped meanwhile (the pool refuses work): likewise
            for _ in range(at_once - submitted):
                self._slots.release()
            return
        with self._held_lock:
            self._ready.extend(zip(rows[at_once:], slots[at_once:], strict=True))
        try:
            self._release_held()
        except RuntimeError:
            return
        self._wake.set()

    def _prerender(
        self, rows: list[Outbox], slots: list[tuple[Slot | None, float] | None]
    ) -> list[Prerendered | None]:
        """Render, from one read, the posts free workers take now whose slot is now.

        A room's invitations all leave at once. Rendered one by one on their
        sending threads, each read the room and its grant again while the
        others' sends shared the interpreter, and the last invitee's DM left
        about 15 ms after the requester's. Rendered here together, they leave
        within a few milliseconds of each other, milliseconds after this.
        """
        now_ = [
            i
            for i, reserved in enumerate(slots)
            if reserved is not None and reserved[0] is not None and reserved[1] <= INLINE_SLEEP_S
        ]
        out: list[Prerendered | None] = [None] * len(rows)
        for i, message in zip(now_, self._render_together([rows[i] for i in now_]), strict=True):
            out[i] = message
        return out

    def _render_together(self, rows: list[Outbox]) -> list[Prerendered | None]:
        """``rows`` rendered from one read; all None if that failed (each renders itself
        when it is sent)."""
        if not rows:
            return []
        try:
            with self._render_turn:
                messages = self.renderer.render_many(rows)
        except Exception:
            log.exception("rendering %d messages together failed", len(rows))
            return [None] * len(rows)
        return [Prerendered(m) for m in messages]

    def watch_room(
        self, room_id: str, callback: Callable[[list[Outbox]], None], *, check: bool = True
    ) -> None:
        """Call ``callback(rows)`` once none of the room's invitation messages is pending.

        ``check=False``: do not look now (a query); for rooms whose invitations
        are about to be handed over (:meth:`adopt`), which cannot have gone yet.
        """
        with self._watch_lock:
            self._watchers[room_id] = callback
        if check:
            self._check_watch(room_id)

    # -- loop -----------------------------------------------------------
    def _run(self) -> None:
        starved = False
        while not self._stop.is_set():
            self._wake.wait(self._until_next(starved))
            self._wake.clear()
            try:
                starved = self._release_held()
                if self._claim_due():
                    self.drain_once()
                self._recheck_watches()
            except Exception:  # the loop must survive a database hiccup
                log.exception("outbox pass failed")

    def _until_next(self, starved: bool) -> float:
        """How long the loop may sleep: until the next poll or the next held post's slot.

        ``starved``: a held post is due but every worker is busy; a worker that
        finishes wakes the loop, so there is no slot to wait for meanwhile.
        """
        poll = max(0.0, self._next_poll - time.monotonic())
        with self._held_lock:
            if starved or not self._held:
                return poll
            return max(0.0, min(poll, self._held[0][0] - time.monotonic()))

    def _claim_due(self) -> bool:
        """Whether this pass looks in the database: rows were written here since the
        last look (``kick``), the last claim took all it could, or a poll is due.

        The loop also wakes each time a send ends, to hand held posts to the freed
        worker; in a busy minute that is several times a second, and a claim is a
        write transaction (on SQLite, the one write lock every room's opening
        waits for) that would mostly find nothing. Rows other replicas write, retries
        coming due and leases running out are found by the poll, as when idle.
        """
        return self._claim_owed.is_set() or time.monotonic() >= self._next_poll

    def _hold(self, row: Outbox, due: float, slot: Slot) -> None:
        """Keep a paced post (still leased to us) in memory until ``due`` (monotonic)."""
        with self._held_lock:
            heapq.heappush(self._held, (due, row.id, row, slot))
        self._wake.set()

    def _release_held(self) -> bool:
        """Hand adopted rows, then the held posts whose slot has come, to free workers,
        first in order.

        True when one is due but no worker is free (a worker finishing wakes the loop).
        """
        while True:
            due: list[tuple[Outbox, Slot]] = []  # held posts whose slot has come
            with self._held_lock:
                if not self._ready and (not self._held or self._held[0][0] > time.monotonic()):
                    return False
                if not self._slots.acquire(blocking=False):
                    return True
                if self._ready:
                    row, reserved = self._ready.popleft()
                else:
                    # With it, those due within a short sleep (a round of a stand-up's
                    # DMs: slots reserved microseconds apart), as far as workers go.
                    soon = time.monotonic() + INLINE_SLEEP_S
                    while True:
                        _, _, row, slot = heapq.heappop(self._held)
                        due.append((row, slot))
                        if not (self._held and self._held[0][0] <= soon):
                            break
                        if not self._slots.acquire(blocking=False):
                            break
            if due:  # rendered on a sending thread: the loop goes on releasing meanwhile
                self._pool.submit(self._release, due)
            else:
                self._pool.submit(self._send_and_release, row, None, reserved)

    def _release(self, due: list[tuple[Outbox, Slot]]) -> None:
        """Send held posts whose slot has come, each on a worker already taken for it.

        A room's posts to different channels share slots, so they come together
        (a round of a stand-up's DMs). They are rendered together, from one read
        (not one each, on busy sending threads, one at a time), and then their
        channels' and ring slots' floors are read, once for all, right before
        they go: a late post before one of them (here or on another replica)
        may have moved its floor since it was reserved. One whose floor moved
        waits again in memory, off the workers, or in the database if that is
        further off than a post may wait here.
        """
        try:
            self._release_together(due)
        except Exception:  # on a pool thread: nobody else would hear of it
            log.exception("releasing %d held posts failed", len(due))

    def _release_together(self, due: list[tuple[Outbox, Slot]]) -> None:
        """:meth:`_release`'s work: render, read the floors, send or hold each again."""
        rendered = self._render_together([row for row, _ in due])
        try:
            waits = self.pacer.until_floors([slot for _, slot in due])
        except Exception:  # each reads its own floors when it is sent
            log.exception("reading the floors of %d held posts failed", len(due))
            waits = [0.0] * len(due)
            rendered = [None] * len(due)
        at = time.monotonic()
        going: list[tuple[Outbox, Slot, Prerendered | None]] = []
        for (row, slot), message, wait in zip(due, rendered, waits, strict=True):
            if wait > INLINE_SLEEP_S:
                self._slots.release()
                try:
                    self._wait_again(row, slot, wait)
                except Exception:  # its lease runs out and a claim sends it
                    log.exception("putting back outbox row %s failed", row.id)
                continue
            if message is not None:
                message = Prerendered(message.message, not_before=at + wait)
            going.append((row, slot, message))
        if not going:
            return
        for row, slot, message in going[:-1]:
            self._pool.submit(self._send_and_release, row, slot, None, message)
        row, slot, message = going[-1]  # the last on this thread, already a sending one
        self._send_and_release(row, slot, None, message)

    def drain_once(self) -> int:
        """Claim what fits in the free workers and hand it to them."""
        free = 0
        while self._slots.acquire(blocking=False):
            free += 1
        self._next_poll = time.monotonic() + self.poll_interval
        if not free:  # looked for when a worker frees up (it wakes the loop)
            self._claim_owed.set()
            return 0
        self._claim_owed.clear()  # before the look: a kick during it is not lost
        try:
            rows = self.store.claim_outbox(self.owner, at=now(), lease=self.lease, limit=free)
        except Exception:  # looked for again at the next poll
            for _ in range(free):
                self._slots.release()
            raise
        for _ in range(free - len(rows)):
            self._slots.release()
        # New posts reserve their slots for the whole batch at once, in claim order.
        posts = [r for r in rows if r.kind in NEW_POST_KINDS]
        reserved = dict(zip((r.id for r in posts), self._reserve(posts), strict=True))
        for row in rows:
            self._pool.submit(self._send_and_release, row, None, reserved.get(row.id))
        if len(rows) == free:
            self.kick()  # more may be waiting
        return len(rows)

    def _reserve(
        self, rows: list[Outbox], s: Session | None = None
    ) -> list[tuple[Slot | None, float]]:
        """Slots for claimed new posts (``bot.slack.pacing``), as far off as their lease
        allows; in ``s`` if given."""
        if not rows:
            return []
        horizon = max(
            MAX_INLINE_WAIT_S, min(r.lease_until or 0 for r in rows) - time.time() - SEND_BUDGET_S
        )
        return self.pacer.reserve_many([(r.team_id, r.channel) for r in rows], horizon=horizon, s=s)

    def _send_and_release(
        self,
        row: Outbox,
        held: Slot | None = None,
        reserved: tuple[Slot | None, float] | None = None,
        prerendered: Prerendered | None = None,
    ) -> None:
        try:
            self.send(row, held=held, may_hold=True, reserved=reserved, prerendered=prerendered)
        except Exception:
            log.exception("outbox row %s failed unexpectedly", row.id)
        finally:
            self._slots.release()
            self._wake.set()

    # -- one row ---------------------------------------------------------
    def send(
        self,
        row: Outbox,
        *,
        held: Slot | None = None,
        may_hold: bool = False,
        reserved: tuple[Slot | None, float] | None = None,
        prerendered: Prerendered | None = None,
    ) -> None:
        """Render and send one claimed row now (or at its channel's paced slot).

        ``may_hold``: a paced post may wait for its slot in memory (the worker's
        loop sends it then) instead of on this thread. ``held``: it did, and this
        is the slot it reserved. ``reserved``: its batch reserved ``(slot, wait)``.
        ``prerendered``: its message, rendered at its hand-over.
        """
        try:
            cid = json.loads(row.payload or "{}").get("cid")
        except ValueError:
            cid = None
        with acting_for(row.team_id, row.enterprise_id), with_correlation(cid):
            self._send(
                row, held=held, may_hold=may_hold, reserved=reserved, prerendered=prerendered
            )

    def _send(
        self,
        row: Outbox,
        *,
        held: Slot | None = None,
        may_hold: bool = False,
        reserved: tuple[Slot | None, float] | None = None,
        prerendered: Prerendered | None = None,
    ) -> None:
        # Slack's one-message-per-second-per-channel limit is for new posts;
        # edits (chat.update, Tier 3) are not paced per channel. A new post
        # waits for its channel's slot before it is rendered: rendering reads
        # the room and mints the link, and a post held for its slot would be
        # rendered twice (it is rendered when it goes, from the state then).
        new_post = row.kind in NEW_POST_KINDS
        slot = self._await_slot(row, held, may_hold, reserved) if new_post else None
        if new_post and slot is None:
            return
        if not self._still_ours(row):
            if slot is not None:  # its reserved start goes unused: give it back
                t = self.pacer.clock()
                self.pacer.posted(slot, t, t, counted=False)
            return
        # Rendered at the hand-over if a free worker took it then (_prerender); else
        # one render at a time: the posts of a claimed batch start together, and
        # rendering side by side they share the interpreter, each finishing as
        # late as the last. In turn, the first leaves after one render, not all.
        if prerendered is not None:
            rendered = prerendered.message
        else:
            with self._render_turn:
                rendered = self.renderer.render(row)
        if rendered is None:  # nothing to say any more (e.g. no DM to edit)
            self._finish(row, OutboxState.DONE, error="nothing to send")
            return
        if held is not None and slot is not None:
            if prerendered is None:  # not rendered at its release: its floors are read now
                if self._floor_moved(row, slot, may_hold):
                    return
            elif (left := prerendered.not_before - time.monotonic()) > 0:
                time.sleep(left)  # read with its render, at its release (_release)
        if _looks_first(row):
            # An earlier attempt's outcome is unknown (a timeout, a dropped
            # connection, a process that died between its claim and Slack's
            # answer): it may have posted. Look before sending again. Never after
            # a definite answer such as a 429: conversations.history can be
            # limited to one call a minute.
            try:
                found = self.slack.find_posted(row.channel, row.id)
            except SlackSendError as e:
                self._failed(row, e, posted=False)
                return
            if found is not None:
                self._finish(row, OutboxState.DONE, channel=found[0], ts=found[1])
                self._result(row.kind, "recovered")
                return
            row.settled_attempts = row.attempts - 1  # none of them posted, now we know
        with self._sending_lock:
            self._sending.add(row.id)  # until the outcome is recorded: see stop()
        floors: dict[str, float] = {}  # the pacing floors a new post moved (edits: none)
        try:
            if rendered.edit_ts:
                channel, ts = self.slack.update(
                    row.channel, rendered.edit_ts, rendered.text, rendered.blocks
                )
            else:
                assert slot is not None
                with self.pacer.turn(slot):  # after this process's last post there, if late
                    started = self.pacer.clock()  # the pacer's own time base
                    try:
                        channel, ts = self.slack.post(
                            row.channel, rendered.text, rendered.blocks, metadata=rendered.metadata
                        )
                    except SlackSendError as e:  # a 429 was refused, not counted, by Slack
                        self.pacer.posted(
                            slot, started, self.pacer.clock(), counted=e.retry_after is None
                        )
                        raise
                    except BaseException:  # whatever happened, Slack may have counted it
                        self.pacer.posted(slot, started, self.pacer.clock())
                        raise
                    floors = self.pacer.ended(slot, started, self.pacer.clock())
        except SlackSendError as e:
            self._failed(row, e)
            return
        self._finish(
            row,
            OutboxState.DONE,
            channel=channel,
            ts=ts,
            also=functools.partial(self.pacer.raise_floors, floors) if floors else None,
        )
        self._result(row.kind, "sent")

    def _await_slot(
        self,
        row: Outbox,
        held: Slot | None,
        may_hold: bool,
        reserved: tuple[Slot | None, float] | None,
    ) -> Slot | None:
        """Reserve the post's slot (``bot.slack.pacing``) and wait for it; None if put off.

        A slot further off than a short sleep is waited for in memory
        (``_hold``, the worker thread is freed) while the row's lease covers it;
        beyond that nothing is reserved and the row goes back to the database
        until then. ``held``: the row was held and its slot has come (it was
        rendered and its floors read as it was released, ``_release``). Either
        way it also waits for this process's turn at the channel
        (``Pacer.until_turn``: the post before it ended late).

        Waits are counted from now: a post reserved as it was written may have
        waited for a free worker since, and in a burst of rooms every sending
        thread asleep on a channel's slot is one the other posts cannot have.
        """
        if held is not None:  # its floors are read once it is rendered (_release)
            slot: Slot | None = held
            wait = held.start - self.pacer.clock()  # released up to a short sleep early
        else:
            slot, wait = reserved if reserved is not None else self._reserve_one(row, may_hold)
            if slot is None:
                self._put_back(row, self.pacer.clock() + wait)
                return None
            if reserved is not None:  # reserved as the row was written: count from now
                wait = slot.start - self.pacer.clock()
        wait = max(wait, self.pacer.until_turn(slot))
        if wait > INLINE_SLEEP_S and may_hold:
            self._hold(row, time.monotonic() + wait, slot)
            return None
        if wait > 0:
            time.sleep(wait)
        return slot

    def _floor_moved(self, row: Outbox, slot: Slot, may_hold: bool) -> bool:
        """:meth:`_release`'s look at the floors, for a held post it could not render:
        rendered now and about to go, it waits out a floor another post's end has
        set on its channel or ring slot since it was reserved
        (``Pacer.until_floor``); True if it went back to wait elsewhere (in
        memory, off the sending threads, or past what may wait there, in the
        database).

        Read after the render, not before: renders take turns, and a floor read
        before one could miss another replica's late post to the same channel,
        recorded meanwhile, and meet it at Slack (a 429, and the post's retry
        goes to the end of its channel's queue).
        """
        wait = self.pacer.until_floor(slot)
        if wait <= 0:
            return False
        if wait > MAX_INLINE_WAIT_S or (wait > INLINE_SLEEP_S and may_hold):
            self._wait_again(row, slot, wait)
            return True
        time.sleep(wait)
        return False

    def _wait_again(self, row: Outbox, slot: Slot, wait: float) -> None:
        """A held post whose floor moved ``wait`` seconds off waits for it again: in
        memory, off the sending threads, or past what may wait there, in the database."""
        if wait <= MAX_INLINE_WAIT_S:
            self._hold(row, time.monotonic() + wait, slot)
        else:
            self._put_back(row, self.pacer.clock() + wait)

    def _reserve_one(self, row: Outbox, may_hold: bool) -> tuple[Slot | None, float]:
        """Reserve a slot for one post now, as far off as it may wait (in memory if it
        ``may_hold``, while its lease covers it)."""
        horizon = MAX_INLINE_WAIT_S
        if may_hold:
            horizon = max(horizon, (row.lease_until or 0) - time.time() - SEND_BUDGET_S)
        return self.pacer.reserve(row.team_id, row.channel, horizon=horizon)

    def _still_ours(self, row: Outbox) -> bool:
        """Whether this copy of a row may be sent: its lease must outlast a send.

        A row waits in memory (for a free worker, for its paced slot) while its
        lease runs; a starved process can outwait the lease, and then the row is
        claimed again (by another replica, or by this process's own loop) and
        goes out from that claim. Sending this copy as well would post twice. So
        a copy with less lease left than a send may take renews it, if nobody
        claimed the row since, or gives the row up to that claim.
        """
        at = now()
        # A DM whose earlier attempt may have posted looks in the channel first:
        # one more Slack call before the post.
        budget = SEND_BUDGET_S + (SLACK_TIMEOUT_S if _looks_first(row) else 0)
        if (row.lease_until or 0) - at >= budget:
            return True
        until = at + max(self.lease, budget)
        if self.store.renew_outbox_lease(row.id, self.owner, was=row.lease_until, until=until):
            row.lease_until = until
            return True
        log.info("outbox row %s outwaited its lease and was claimed again: not sent here", row.id)
        self._not_ours_to_finish(row)
        return False

    def _failed(self, row: Outbox, e: SlackSendError, *, posted: bool = True) -> None:
        """``posted``: the failed call was the post itself (not the history check), so
        an unknown outcome leaves this attempt unsettled."""
        unknown = posted and e.unknown
        if e.retry_after is not None:
            if row.kind in NEW_POST_KINDS:
                self.pacer.pause(row.team_id, row.channel, e.retry_after)
            log.info(
                "slack rate-limited %s to %s; retry in %ss", row.kind, row.channel, e.retry_after
            )
            self._result(row.kind, "ratelimited")
            self._retry(row, e.retry_after, e.error, unknown=unknown)
        elif e.permanent or row.attempts >= MAX_ATTEMPTS:
            log.warning("giving up on %s to %s: %s", row.kind, row.channel, e.error)
            self._result(row.kind, "failed")
            self._finish(row, OutboxState.FAILED, error=e.error)
        else:
            delay = min(2**row.attempts, 300)
            log.info("slack error %s on %s; retry in %ss", e.error, row.kind, delay)
            self._result(row.kind, "retry")
            self._retry(row, delay, e.error, unknown=unknown)

    def _retry(self, row: Outbox, delay: int, error: str, *, unknown: bool = False) -> None:
        self._retry_at(row, now() + delay, error, unknown=unknown)

    def _put_back(self, row: Outbox, slot: float) -> None:
        """A post whose slot (unix seconds) is too far off goes back to the database.

        Due whole seconds before the slot (``not_before`` is in seconds and the loop
        polls each ``poll_interval``), so that it is claimed again, and held, in time
        for the slot rather than up to two seconds after it. Nothing was sent, so
        it does not count as an attempt (a second attempt looks for the post in the
        channel's history first).
        """
        due = math.floor(slot - self.poll_interval) - 1
        self.store.retry_outbox(
            row.id, self.owner, at=due, lease=row.lease_until, error="paced", tried=False
        )
        with self._sending_lock:
            self._sending.discard(row.id)
        self._not_ours_to_finish(row)

    def _retry_at(self, row: Outbox, at: int, error: str, *, unknown: bool = False) -> None:
        """Back to the database, due again at unix second ``at``.

        ``unknown``: this attempt may have posted; otherwise its outcome is known
        (Slack answered, or nothing was sent) and counts as settled.
        """
        settled = (row.settled_attempts or 0) + (0 if unknown else 1)
        self.store.retry_outbox(
            row.id, self.owner, at=at, lease=row.lease_until, error=error, settled=settled
        )
        with self._sending_lock:
            self._sending.discard(row.id)
        self._not_ours_to_finish(row)

    def _finish(self, row: Outbox, state: str, **kw: Any) -> None:
        self.store.finish_outbox(
            row.id, self.owner, state=state, lease=row.lease_until, on_owed=self.kick, **kw
        )
        with self._sending_lock:
            self._sending.discard(row.id)
        if row.room_id:
            self._check_watch(row.room_id, finished=row.id)

    def _not_ours_to_finish(self, row: Outbox) -> None:
        """A handed-over row went back to the database (a retry, a paced post put off,
        a copy given up): any replica may finish it, so the rooms' other rows
        finishing here look at the database again (and the loop's look,
        ``_recheck_watches``, finds it sent elsewhere)."""
        with self._watch_lock:
            unfinished = self._unfinished.get(row.room_id or "")
            if unfinished is not None:
                unfinished.discard(row.id)

    def _recheck_watches(self) -> None:
        """Report watched rooms with nothing left to send, every ``WATCH_RECHECK_S``.

        A room's invitations are handed to this process, and each one it finishes
        checks the room (``_check_watch``). But a row that is retried goes back
        to the database, and any replica may claim it: when another one sends a
        room's last invitation, nothing here would look again, and the requester
        would never hear how the invitations went. One query for all the rooms.
        """
        at = time.monotonic()
        if at < self._next_recheck:
            return
        self._next_recheck = at + WATCH_RECHECK_S
        with self._watch_lock:
            # A room with an invitation this process holds is not done: no need to ask.
            rooms = sorted(r for r in self._watchers if not self._unfinished.get(r))
        if not rooms:
            return
        busy = self.store.rooms_with_pending(rooms, FANOUT_KINDS)
        for room_id in rooms:
            if room_id not in busy:
                self._check_watch(room_id, idle=True)

    def _check_watch(
        self, room_id: str, *, idle: bool = False, finished: int | None = None
    ) -> None:
        """Report the room to its watcher if none of its invitations is pending
        (``idle``: known to be so already). ``finished``: the row this process just
        finished; while other invitations handed over here are unfinished, the
        room is not done, and no query is needed to know it (one per room, not
        one per message: a query is a millisecond of a post's dozen)."""
        with self._watch_lock:
            cb = self._watchers.get(room_id)
            if cb is None:
                return  # nobody waits on this room: no query
            unfinished = self._unfinished.get(room_id)
            if unfinished is not None and finished is not None:
                unfinished.discard(finished)
                if unfinished:
                    return
        # One read: whether any is pending, and what to report if none is.
        rows = [r for r in self.store.outbox_rows(room_id) if r.kind in FANOUT_KINDS]
        if not idle and any(r.state == OutboxState.PENDING for r in rows):
            return
        with self._watch_lock:
            self._unfinished.pop(room_id, None)
            if self._watchers.pop(room_id, None) is None:
                return  # another thread reported it
        self._told.submit(self._tell, cb, rows, room_id)

    @staticmethod
    def _tell(cb: Callable[[list[Outbox]], None], rows: list[Outbox], room_id: str) -> None:
        try:
            cb(rows)
        except Exception:  # a failed report must not be lost silently
            log.exception("reporting the invitations of room %s failed", room_id)

    def _result(self, kind: str, outcome: str) -> None:
        if self.on_result:
            self.on_result(kind, outcome)
