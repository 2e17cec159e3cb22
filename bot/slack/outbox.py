"""The outbox worker: sends owed Slack messages, at most as fast as Slack allows.

Rows are written by ``bot.rooms`` in the same transaction as the change that
owes them, so a crash never loses one. This worker claims due rows with a
lease, renders each at send time (so a DM sent late still says the right
thing and a token is minted only in memory), sends it, and records the Slack
channel and ts. A worker that dies leaves leases that run out; whoever claims
next sends the row. Retries happen here, never in the HTTP client, because
``chat.postMessage`` has no idempotency key.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.logs import ContextThreadPoolExecutor, with_correlation
from bot.slack.gateway import SLACK_TIMEOUT_S, SlackGateway, SlackSendError, acting_for
from bot.store import Outbox, OutboxState, Store, now

log = logging.getLogger("meetbot.outbox")

LEASE_S = 30
MAX_ATTEMPTS = 8
CHANNEL_GAP_S = 1.01  # Slack: about one message per second per channel
MAX_INLINE_WAIT_S = 2.0  # the longest a paced post waits when it cannot be held (below)
INLINE_SLEEP_S = 0.05  # a paced post this close to its slot waits on its worker thread
SEND_BUDGET_S = SLACK_TIMEOUT_S + 5  # lease a held post must still have at its slot
#: Kinds sent with chat.postMessage, paced per channel (a room's invitations:
#: its DMs and its card); the rest are chat.update edits.
NEW_POST_KINDS = ("dm_link", "room_card")
FANOUT_KINDS = NEW_POST_KINDS


@dataclass(frozen=True)
class Rendered:
    """A message ready to send: new post, or an edit of ``(channel, ts)``."""

    text: str
    blocks: list[dict[str, Any]]
    edit_ts: str | None = None
    metadata: dict[str, Any] | None = None


class Renderer(Protocol):
    def render(self, row: Outbox) -> Rendered | None: ...


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
        *,
        workers: int = 8,
        poll_interval: float = 1.0,
        owner: str | None = None,
        lease: int = LEASE_S,
        on_result: Callable[[str, str], None] | None = None,
    ) -> None:
        """``renderer`` turns a row into the message to send (``bot.rooms.links.Links``);
        ``on_result(kind, outcome)`` counts sends (metrics)."""
        self.store = store
        self.slack = slack
        self.renderer = renderer
        self.owner = owner or worker_id()
        self.poll_interval = poll_interval
        self.lease = lease
        self._pool = ContextThreadPoolExecutor(max_workers=workers, thread_name_prefix="outbox")
        self._slots = threading.Semaphore(workers)
        self._workers = workers
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_ok: dict[str, float] = {}  # channel -> next slot free to reserve
        self._send_floor: dict[str, float] = {}  # channel -> earliest start of its next post
        self._quickest: float | None = None  # the shortest chat.postMessage round trip seen
        self._pace_lock = threading.Lock()
        self._sending: set[int] = set()  # rows whose Slack call began, outcome not recorded
        # Paced posts waiting for their slot, off the worker threads: (due, row id, row).
        self._held: list[tuple[float, int, Outbox]] = []
        self._held_lock = threading.Lock()
        self._watchers: dict[str, Callable[[list[Outbox]], None]] = {}
        self._watch_lock = threading.Lock()
        self.on_result = on_result

    # -- lifecycle ------------------------------------------------------
    def start(self) -> OutboxWorker:
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
        # Rows we claimed but never started go back at once, not after the lease;
        # a send that began and never recorded its outcome stays unsure.
        with self._pace_lock:
            unsure = sorted(self._sending)
        released = self.store.release_outbox(self.owner, unsure=unsure)
        if released:
            log.info("handed back %d unsent messages", released)

    def kick(self) -> None:
        """New rows are waiting: look now rather than at the next poll."""
        self._wake.set()

    def watch_room(self, room_id: str, callback: Callable[[list[Outbox]], None]) -> None:
        """Call ``callback(rows)`` once none of the room's invitation messages is pending."""
        with self._watch_lock:
            self._watchers[room_id] = callback
        self._check_watch(room_id)

    # -- loop -----------------------------------------------------------
    def _run(self) -> None:
        starved = False
        while not self._stop.is_set():
            self._wake.wait(self._until_next(starved))
            self._wake.clear()
            try:
                starved = self._release_held()
                self.drain_once()
            except Exception:  # the loop must survive a database hiccup
                log.exception("outbox pass failed")

    def _until_next(self, starved: bool) -> float:
        """How long the loop may sleep: until the next poll or the next held post's slot.

        ``starved``: a held post is due but every worker is busy; a worker that
        finishes wakes the loop, so there is no slot to wait for meanwhile.
        """
        with self._held_lock:
            if starved or not self._held:
                return self.poll_interval
            return max(0.0, min(self.poll_interval, self._held[0][0] - time.monotonic()))

    def _hold(self, row: Outbox, due: float) -> None:
        """Keep a paced post (still leased to us) in memory until ``due`` (monotonic)."""
        with self._held_lock:
            heapq.heappush(self._held, (due, row.id, row))
        self._wake.set()

    def _release_held(self) -> bool:
        """Hand the held posts whose slot has come to free workers, first in slot order.

        True when one is due but no worker is free (a worker finishing wakes the loop).
        """
        while True:
            with self._held_lock:
                if not self._held or self._held[0][0] > time.monotonic():
                    return False
                if not self._slots.acquire(blocking=False):
                    return True
                _, _, row = heapq.heappop(self._held)
            self._pool.submit(self._send_and_release, row, True)

    def drain_once(self) -> int:
        """Claim what fits in the free workers and hand it to them."""
        free = 0
        while self._slots.acquire(blocking=False):
            free += 1
        if not free:
            return 0
        try:
            rows = self.store.claim_outbox(self.owner, at=now(), lease=self.lease, limit=free)
        except Exception:
            for _ in range(free):
                self._slots.release()
            raise
        for _ in range(free - len(rows)):
            self._slots.release()
        for row in rows:
            self._pool.submit(self._send_and_release, row)
        if len(rows) == free:
            self._wake.set()  # more may be waiting
        return len(rows)

    def _send_and_release(self, row: Outbox, held: bool = False) -> None:
        try:
            self.send(row, held=held, may_hold=True)
        except Exception:
            log.exception("outbox row %s failed unexpectedly", row.id)
        finally:
            self._slots.release()
            self._wake.set()

    # -- one row ---------------------------------------------------------
    def send(self, row: Outbox, *, held: bool = False, may_hold: bool = False) -> None:
        """Render and send one claimed row now (or at its channel's paced slot).

        ``may_hold``: a paced post may wait for its slot in memory (the worker's
        loop sends it then) instead of on this thread. ``held``: it did, and its
        slot is reserved.
        """
        try:
            cid = json.loads(row.payload or "{}").get("cid")
        except ValueError:
            cid = None
        with acting_for(row.team_id, row.enterprise_id), with_correlation(cid):
            self._send(row, held=held, may_hold=may_hold)

    def _send(self, row: Outbox, *, held: bool = False, may_hold: bool = False) -> None:
        # Slack's one-message-per-second-per-channel limit is for new posts;
        # edits (chat.update, Tier 3) are not paced per channel. A new post
        # waits for its channel's slot before it is rendered: rendering reads
        # the room and mints the link, and a post held for its slot would be
        # rendered twice (it is rendered when it goes, from the state then).
        new_post = row.kind in NEW_POST_KINDS
        if new_post and not self._await_slot(row, held=held, may_hold=may_hold):
            return
        rendered = self.renderer.render(row)
        if rendered is None:  # nothing to say any more (e.g. no DM to edit)
            self._finish(row, OutboxState.DONE, error="nothing to send")
            return
        if row.kind == "dm_link" and row.attempts - 1 > (row.settled_attempts or 0):
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
        if new_post and not self._await_start(row):
            return
        with self._pace_lock:
            self._sending.add(row.id)  # until the outcome is recorded: see stop()
        try:
            if rendered.edit_ts:
                channel, ts = self.slack.update(
                    row.channel, rendered.edit_ts, rendered.text, rendered.blocks
                )
            else:
                started = time.monotonic()
                channel, ts = self.slack.post(
                    row.channel, rendered.text, rendered.blocks, metadata=rendered.metadata
                )
                self._posted(row.channel, started, time.monotonic())
        except SlackSendError as e:
            self._failed(row, e)
            return
        self._finish(row, OutboxState.DONE, channel=channel, ts=ts)
        self._result(row.kind, "sent")

    def _await_slot(self, row: Outbox, *, held: bool, may_hold: bool) -> bool:
        """Reserve the channel's next slot and wait for it; False if the row was put off.

        A slot further off than a short sleep is waited for in memory
        (``_hold``, the worker thread is freed) while the row's lease covers it;
        beyond that the row goes back to the database until its slot. ``held``:
        the row was held, and its slot has come.
        """
        if held:
            return True
        horizon = MAX_INLINE_WAIT_S
        if may_hold:
            horizon = max(horizon, (row.lease_until or 0) - time.time() - SEND_BUDGET_S)
        wait = self._pace(row.channel, horizon)
        if wait > horizon:
            self._retry_at(row, math.ceil(time.time() + wait), "paced")
            return False
        if wait > INLINE_SLEEP_S and may_hold:
            self._hold(row, time.monotonic() + wait)
            return False
        if wait > 0:
            time.sleep(wait)
        return True

    def _await_start(self, row: Outbox) -> bool:
        """Right before the call: True to post now, False if the row was put off.

        The reserved slot is when to start; this keeps two posts' actual starts a
        full gap apart however late a thread woke up (or long it rendered) for
        the first.
        """
        while (wait := self._start_post(row.channel)) > 0:
            if wait > MAX_INLINE_WAIT_S:  # a 429 asked for longer
                self._retry_at(row, math.ceil(time.time() + wait), "paced")
                return False
            time.sleep(wait)
        return True

    def _pace(self, channel: str, horizon: float = MAX_INLINE_WAIT_S) -> float:
        """Reserve the channel's next send slot if it is within ``horizon`` seconds;
        return how long to wait for it."""
        with self._pace_lock:
            t = time.monotonic()
            slot = max(t, self._next_ok.get(channel, 0.0))
            if slot - t <= horizon:
                self._next_ok[channel] = slot + CHANNEL_GAP_S
            return slot - t

    def _posted(self, channel: str, started: float, ended: float) -> None:
        """A post took longer than the quickest: Slack may have counted it late.

        Where in a call Slack counts a post is unknown; at the latest it is when
        the answer leaves. So the next post starts no earlier than a gap after
        that, less the quickest round trip seen (the least it can take to be
        counted): on time after a normal call, later after a slow one.
        """
        with self._pace_lock:
            took = ended - started
            self._quickest = took if self._quickest is None else min(self._quickest, took)
            floor = ended + CHANNEL_GAP_S - self._quickest
            if floor > self._send_floor.get(channel, 0.0):
                self._send_floor[channel] = floor

    def _start_post(self, channel: str) -> float:
        """0 and the channel's post may start now (noted); else how long to wait."""
        with self._pace_lock:
            t = time.monotonic()
            floor = self._send_floor.get(channel, 0.0)
            if floor > t:
                return floor - t
            self._send_floor[channel] = t + CHANNEL_GAP_S
            return 0.0

    def _failed(self, row: Outbox, e: SlackSendError, *, posted: bool = True) -> None:
        """``posted``: the failed call was the post itself (not the history check), so
        an unknown outcome leaves this attempt unsettled."""
        unknown = posted and e.unknown
        if e.retry_after is not None:
            with self._pace_lock:
                self._next_ok[row.channel] = time.monotonic() + e.retry_after
                self._send_floor[row.channel] = time.monotonic() + e.retry_after
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

    def _retry_at(self, row: Outbox, at: int, error: str, *, unknown: bool = False) -> None:
        """Back to the database, due again at unix second ``at``.

        ``unknown``: this attempt may have posted; otherwise its outcome is known
        (Slack answered, or nothing was sent) and counts as settled.
        """
        settled = (row.settled_attempts or 0) + (0 if unknown else 1)
        self.store.finish_outbox(
            row.id,
            self.owner,
            state=OutboxState.PENDING,
            error=error,
            retry_at=at,
            settled=settled,
        )
        with self._pace_lock:
            self._sending.discard(row.id)

    def _finish(self, row: Outbox, state: str, **kw: Any) -> None:
        self.store.finish_outbox(row.id, self.owner, state=state, **kw)
        with self._pace_lock:
            self._sending.discard(row.id)
        if row.room_id:
            self._check_watch(row.room_id)

    def _check_watch(self, room_id: str) -> None:
        with self._watch_lock:
            cb = self._watchers.get(room_id)
        if cb is None:
            return  # nobody waits on this room: no query
        if self.store.outbox_pending(room_id, FANOUT_KINDS):
            return
        with self._watch_lock:
            if self._watchers.pop(room_id, None) is None:
                return  # another thread reported it
        cb([r for r in self.store.outbox_rows(room_id) if r.kind in FANOUT_KINDS])

    def _result(self, kind: str, outcome: str) -> None:
        if self.on_result:
            self.on_result(kind, outcome)
