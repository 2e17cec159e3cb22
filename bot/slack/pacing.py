"""Slack's posting limits, kept once for every replica: when may the next post start?

``chat.postMessage`` allows about one message a second per channel and a
workspace-wide cap (``MEETBOT_SLACK_POST_CAP``, N posts in any window of W
seconds); past either Slack answers 429 and the post is lost time. Several
replicas post for one workspace, so the budget lives in the database
(``slack_pace``, see ``bot.store.SlackPace``) and each post *reserves* its start
in one short transaction before it is sent:

* **the channel**: a start at least ``CHANNEL_GAP_S`` after the channel's
  previous reserved start, and not before its ``floor_at`` (set when a post
  ends, and by a 429's Retry-After);
* **the workspace**: post number ``k`` starts at least W after post ``k - N``
  did. The last N starts are kept in a ring of N rows; each post takes the next
  slot. Posts ``k``, ``k + N``, ``k + 2N`` … are then W apart, so no window of
  W holds more than N of them: bursts of N go out at once, as Slack allows,
  and nothing waits longer than the cap requires.

A start more than ``horizon`` seconds off is not reserved (the caller puts the
post back in the outbox until then), so a slot is never held by a post that is
not waiting for it.

Where Slack counts a post within the call is not known; at the latest it is
when the answer leaves. So when a post ends, the channel's floor moves to a gap
after that, and its ring slot's floor to a window after that, each less the
quickest round trip seen (the least a call can take to be counted): on time
after a normal call, later after a slow one. Until a few round trips were seen
the quickest is not trusted (a process's first calls are its slowest) and
nothing is taken off. A post that waited for its slot in memory checks both
floors again just before it starts.

A reservation spaces the *starts*; a post can still start late (the interpreter
was busy, Slack answered the post before it slowly) and meet the next post to
its channel at Slack, which answers 429 and so pauses the whole workspace. So
each process also keeps, in memory, its own posts' turns per channel
(:meth:`Pacer.turn`): a post starts only once this process's previous post to
the channel has ended and a gap has passed since Slack counted it. Lateness then
delays the posts behind it instead of costing a 429.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from bot.leases import insert_ignore
from bot.store import SlackPace, Store

__all__ = ["CHANNEL_GAP_S", "Pacer", "Slot"]

CHANNEL_GAP_S = 1.01  # Slack: about one message per second per channel
#: Added to the workspace window: the calls' own jitter must not make Slack count
#: a post just inside the window of the one N posts earlier.
WINDOW_MARGIN_S = 0.1
#: A post counted no later than this after its reserved start moves no floor: the
#: reservation's own spacing (a gap over Slack's second, the window's margin) covers it.
ON_TIME_S = 0.01
#: Round trips seen before the quickest of them is taken off a floor.
TRUSTED_ROUND_TRIPS = 5
#: The longest a post waits for its turn behind this process's post to the same
#: channel (more than a Slack call's timeout): past it, it goes anyway.
MAX_TURN_WAIT_S = 30.0
#: Channels whose next turn is remembered before the past ones are forgotten.
TURNS_KEPT = 1024

# Run for every post, built once (see ``bot.store._RECORD_OUTCOME``).
_LOCK_KEYS = (
    select(SlackPace)
    .where(SlackPace.key.in_(bindparam("keys", expanding=True)))
    .order_by(SlackPace.key)  # one lock order for every replica
    .with_for_update()
)
_FLOORS = select(SlackPace.key, SlackPace.floor_at).where(
    SlackPace.key.in_(bindparam("keys", expanding=True))
)
_RAISE_FLOOR = (
    update(SlackPace)
    .where(SlackPace.key == bindparam("pace_key"), SlackPace.floor_at < bindparam("floor"))
    .values(floor_at=bindparam("floor"))
)


@dataclass(frozen=True)
class Slot:
    """A reserved start (unix seconds) for one post to ``channel``, and its ring slot."""

    team: str
    channel: str
    start: float
    ring: str = ""  # the key of the workspace ring slot the post took


class Pacer:
    """Reserves post starts under Slack's per-channel and workspace caps, for all replicas."""

    def __init__(
        self,
        store: Store,
        *,
        cap: tuple[int, int],
        clock: Callable[[], float] = time.time,
        gap: float = CHANNEL_GAP_S,
    ) -> None:
        """``cap``: (N posts, per W seconds), the workspace's ``chat.postMessage`` cap."""
        self.store = store
        self.posts, self.window = cap
        self.clock = clock
        self.gap = gap
        self._quickest: float | None = None  # the shortest post round trip this process saw
        self._round_trips = 0
        self._known: set[str] = set()  # keys whose rows exist (no row is ever deleted)
        self._lock = threading.Lock()
        # This process's posts per channel key (see turn()): those under way, and
        # the earliest start of the next one.
        self._turns = threading.Condition()
        self._under_way: set[str] = set()
        self._next_turn: dict[str, float] = {}

    def reserve(self, team: str, channel: str, *, horizon: float) -> tuple[Slot | None, float]:
        """Reserve the earliest start allowed for a post to ``channel``.

        Returns ``(slot, wait)``: the reserved slot and how long until it, or
        ``(None, wait)`` when the earliest start is more than ``horizon`` seconds
        off (nothing is reserved; try again after ``wait``).
        """
        return self.reserve_many([(team, channel)], horizon=horizon)[0]

    def reserve_many(
        self, posts: list[tuple[str, str]], *, horizon: float, s: Session | None = None
    ) -> list[tuple[Slot | None, float]]:
        """:meth:`reserve` for several ``(team, channel)`` posts, in order, in one
        transaction: a batch the outbox claimed costs one round of locks, and its
        first post (a room's requester's DM) gets the first slot. ``s``: the
        caller's transaction (the one that writes the posts), else one of its own."""
        if s is None:
            with self.store.write() as tx:
                return self.reserve_many(posts, horizon=horizon, s=tx)
        keys = sorted({k for t, c in posts for k in (_channel_key(t, c), _workspace_key(t))})
        out: list[tuple[Slot | None, float]] = []
        rows = self._locked(s, *keys)
        rings = self._rings(s, rows, posts)
        for team, channel in posts:
            slot, wait = self._reserve_in(s, rows, rings, team, channel, horizon)
            out.append((slot, wait))
            if slot is not None:
                keys.append(slot.ring)
        # Once committed; should ``s`` roll back, a key taken for made is made again
        # when found missing (``_locked``).
        self._known.update(keys)
        return out

    def _rings(
        self, s: Session, rows: dict[str, SlackPace], posts: list[tuple[str, str]]
    ) -> dict[str, SlackPace]:
        """The ring slots this batch may take (the next ones of each workspace), locked,
        in one query; the workspace rows are locked already, so no one else moves them."""
        wanted: set[str] = set()
        for team in {t for t, _ in posts}:
            ws = _workspace_key(team)
            seq = rows[ws].seq
            count = min(self.posts, sum(1 for t, _ in posts if t == team))
            wanted.update(f"{ws}:{(seq + i) % self.posts}" for i in range(count))
        return {r.key: r for r in s.scalars(_LOCK_KEYS, {"keys": sorted(wanted)})}

    def _reserve_in(
        self,
        s: Session,
        rows: dict[str, SlackPace],
        rings: dict[str, SlackPace],
        team: str,
        channel: str,
        horizon: float,
    ) -> tuple[Slot | None, float]:
        c, w = rows[_channel_key(team, channel)], rows[_workspace_key(team)]
        ring_key = f"{_workspace_key(team)}:{w.seq % self.posts}"
        ring = rings.get(ring_key)
        ring_at = ring.next_at if ring is not None else 0.0
        ring_floor = ring.floor_at if ring is not None else 0.0
        now = self.clock()
        start = max(
            now,
            c.next_at,
            c.floor_at,
            w.floor_at,
            ring_at + self.window + WINDOW_MARGIN_S if ring_at else 0.0,
            ring_floor,
        )
        if start - now > horizon:
            return None, start - now
        c.next_at = start + self.gap
        w.seq += 1
        if ring is None:
            rings[ring_key] = SlackPace(key=ring_key, next_at=start, floor_at=0.0, seq=0)
            s.add(rings[ring_key])
        else:
            ring.next_at = start
        return Slot(team, channel, start, ring_key), max(0.0, start - now)

    def until_floor(self, slot: Slot) -> float:
        """Seconds until ``slot`` may start a post (0: now), for a post that waited: its
        channel's floor and its ring slot's (the post N before it may have ended late)."""
        return self.until_floors([slot])[0]

    def until_floors(self, slots: Sequence[Slot]) -> list[float]:
        """:meth:`until_floor` for several slots, from one read."""
        keys = sorted({k for slot in slots for k in _floor_keys(slot)})
        if not keys:
            return []
        with self.store.read() as s:
            floors = {k: f for k, f in s.execute(_FLOORS, {"keys": keys})}
        now = self.clock()
        return [
            max(0.0, max((floors.get(k, 0.0) for k in _floor_keys(slot)), default=0.0) - now)
            for slot in slots
        ]

    def until_turn(self, slot: Slot) -> float:
        """Seconds until this process's next post to ``slot``'s channel may start
        (:meth:`turn`: after its previous one there ended late); 0 when now."""
        key = _channel_key(slot.team, slot.channel)
        with self._turns:
            return max(0.0, self._next_turn.get(key, 0.0) - self.clock())

    @contextmanager
    def turn(self, slot: Slot) -> Iterator[None]:
        """Hold ``slot``'s channel for one post by this process, waiting for it first.

        A post waits until this process's previous post to the channel has ended
        and ``gap`` has passed since Slack counted it (see :meth:`ended`). On
        time that wait is nil: the reservation already put the slot a gap after
        the previous one. A post that started late is what it waits for, for at
        most ``MAX_TURN_WAIT_S``. In memory only: posts from other replicas are
        spaced by the reservations and the floors in the database.
        """
        key = _channel_key(slot.team, slot.channel)
        deadline = time.monotonic() + MAX_TURN_WAIT_S
        with self._turns:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if key in self._under_way:
                    self._turns.wait(left)
                    continue
                wait = self._next_turn.get(key, 0.0) - self.clock()
                if wait <= 0:
                    break
                self._turns.wait(min(wait, left))
            self._under_way.add(key)
        try:
            yield
        finally:
            with self._turns:
                self._under_way.discard(key)
                self._turns.notify_all()

    def posted(self, slot: Slot, started: float, ended: float, *, counted: bool = True) -> None:
        """A post to ``slot``'s channel ran from ``started`` to ``ended`` (this clock).

        Slack counted it at the latest at ``ended`` less the quickest round trip
        seen: the channel's next post starts a gap after that, and the post that
        takes this ring slot next (N posts later) a window after that.

        ``counted=False``: Slack refused it (429), so it is not in Slack's window,
        which holds one post fewer than the ring: see ``_give_back``.
        """
        if not counted:
            if slot.ring:
                self._give_back(slot)
            return
        self.raise_floors(self.ended(slot, started, ended))

    def ended(self, slot: Slot, started: float, ended: float) -> dict[str, float]:
        """:meth:`posted` for a post Slack counted, but the floors it moves are returned
        (empty when it was on time) for :meth:`raise_floors` to write, in the
        transaction that records the post: one transaction per post, not two, on
        a database every replica writes to once per post."""
        with self._lock:
            took = ended - started
            self._quickest = took if self._quickest is None else min(self._quickest, took)
            self._round_trips += 1
            trusted = self._round_trips > TRUSTED_ROUND_TRIPS
            counted = ended - (self._quickest if trusted else 0.0)
        on_time = counted - slot.start <= ON_TIME_S
        self._set_next_turn(
            _channel_key(slot.team, slot.channel), (slot.start if on_time else counted) + self.gap
        )
        if on_time:
            # Counted when it was meant to start: the reservation already keeps the
            # channel's next post a gap, and the ring's, a window after it.
            return {}
        floors = {_channel_key(slot.team, slot.channel): counted + self.gap}
        if slot.ring:
            floors[slot.ring] = counted + self.window + WINDOW_MARGIN_S
        return floors

    def pause(self, team: str, channel: str, seconds: float) -> None:
        """Slack answered 429 with Retry-After ``seconds``: nothing to this channel, and
        nothing to the workspace, starts before then (the 429 does not say which cap)."""
        until = self.clock() + seconds
        self._set_next_turn(_channel_key(team, channel), until)
        self.raise_floors({_channel_key(team, channel): until, _workspace_key(team): until})

    # -- helpers ---------------------------------------------------------------------
    def _set_next_turn(self, key: str, at: float) -> None:
        """This process's next post to ``key``'s channel starts no earlier than ``at``."""
        with self._turns:
            if len(self._next_turn) >= TURNS_KEPT:  # forget the turns that have passed
                now = self.clock()
                self._next_turn = {k: t for k, t in self._next_turn.items() if t > now}
            self._next_turn[key] = max(at, self._next_turn.get(key, 0.0))
            self._turns.notify_all()

    def _give_back(self, slot: Slot) -> None:
        """Take a refused post out of the ring of the last N starts.

        The first post the cap will hold waits a window after the start on its
        ring place (``_next_held_place``: place ``seq mod N`` once the ring has
        gone round, place 0 before); with one post of the window refused, Slack
        lets it go at once. So that start moves into the refused post's place
        and its own place is left empty: that post (the retry, typically) is not
        held, and each later one is held by a start no earlier than Slack's
        window holds (never too early). Without this the retry waited a whole
        window at a busy workspace's cap: one 429 in a burst of 600 posts made its
        last post 48 s late. Nothing changes if a later post already took the slot.
        """
        ws = _workspace_key(slot.team)
        with self.store.write() as s:
            w = self._locked(s, ws)[ws]
            oldest_key = self._next_held_place(s, ws, w.seq) or slot.ring
            keys = sorted({slot.ring, oldest_key})
            rows = {r.key: r for r in s.scalars(_LOCK_KEYS, {"keys": keys})}
            mine, oldest = rows.get(slot.ring), rows.get(oldest_key)
            if mine is None or mine.next_at != slot.start:
                return  # a later post has taken the slot
            if oldest is not None and oldest is not mine:
                mine.next_at, mine.floor_at = oldest.next_at, oldest.floor_at
                oldest.next_at = oldest.floor_at = 0.0
            else:
                mine.next_at = mine.floor_at = 0.0

    def _next_held_place(self, s: Session, ws: str, seq: int) -> str | None:
        """The ring place the next posts will first wait on: the first place at or
        after ``seq mod N``, round the ring, that holds a start (None: none does).

        In a ring that has gone round, that is ``seq mod N`` itself, the oldest
        start. In a new one (fewer than N posts so far) the places from ``seq``
        on are empty and it is place 0, the one the N-th post takes. Read under
        the workspace's lock, which every change of a place's start holds.
        """
        keys = s.scalars(
            select(SlackPace.key).where(
                SlackPace.key.startswith(f"{ws}:", autoescape=True), SlackPace.next_at > 0
            )
        )
        taken = sorted(i for i in (int(k.rsplit(":", 1)[1]) for k in keys) if i < self.posts)
        if not taken:
            return None
        here = seq % self.posts
        return f"{ws}:{next((i for i in taken if i >= here), taken[0])}"

    def _locked(self, s: Session, *keys: str) -> dict[str, SlackPace]:
        """The rows of ``keys``, locked (made first if missing: replicas race to)."""

        def lock() -> dict[str, SlackPace]:
            return {r.key: r for r in s.scalars(_LOCK_KEYS, {"keys": sorted(keys)})}

        self._ensure(s, *keys)
        rows = lock()
        if len(rows) < len(keys):  # known here, but made by a transaction still open
            self._ensure(s, *keys, force=True)
            rows = lock()
        return rows

    def _ensure(self, s: Session, *keys: str, force: bool = False) -> None:
        """The rows exist (the first post to a channel makes its row; replicas race).

        Rows are never deleted, so a key whose row this process saw committed is
        not asked about again (``force`` asks anyway); the others are made in one
        statement.
        """
        missing = sorted(k for k in set(keys) if force or k not in self._known)
        if missing:
            s.execute(
                insert_ignore(self.store, SlackPace).values(
                    [{"key": k, "next_at": 0.0, "floor_at": 0.0, "seq": 0} for k in missing]
                )
            )

    def raise_floors(self, floors: dict[str, float], s: Session | None = None) -> None:
        """Raise each key's ``floor_at`` to at least its value, in one transaction:
        ``s``, or one of its own."""
        if not floors:
            return
        if s is None:
            with self.store.write() as tx:
                self.raise_floors(floors, tx)
            return
        self._ensure(s, *floors)
        # One statement for every key, in one lock order for every replica.
        s.connection().execute(
            _RAISE_FLOOR, [{"pace_key": k, "floor": f} for k, f in sorted(floors.items())]
        )
        # Once committed; should ``s`` roll back, a key taken for made is made again
        # when found missing (``_locked``).
        self._known.update(floors)


def _floor_keys(slot: Slot) -> list[str]:
    """The rows whose floors hold a reserved post: its channel's and its ring slot's."""
    return [_channel_key(slot.team, slot.channel), *([slot.ring] if slot.ring else [])]


def _channel_key(team: str, channel: str) -> str:
    return f"c:{team}:{channel}"


def _workspace_key(team: str) -> str:
    return f"w:{team}"
