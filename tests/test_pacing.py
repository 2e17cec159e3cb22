"""Slack's posting caps, kept in the database so that replicas share them (bot/slack/pacing.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.sim.ams import ManualClock
from bot.slack import pacing
from bot.slack.pacing import CHANNEL_GAP_S, TRUSTED_ROUND_TRIPS, WINDOW_MARGIN_S, Pacer
from bot.store import SlackPace, Store
from tests.conftest import ALICE, TEAM, sender_for, wait_for
from tests.helpers import settled

FAR = 3600.0  # a horizon nothing is beyond


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[Store, Store]]:
    """Two replicas' stores on one database."""
    one, two = Store(db_url), Store(db_url)
    one.migrate()
    yield one, two
    one.dispose()
    two.dispose()


def test_replicas_take_turns_in_one_channel(stores: tuple[Store, Store]) -> None:
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(600, 60), clock=clock) for s in stores)
    starts = [p.reserve(TEAM, "C1", horizon=FAR)[0].start for p in (a, b, a, b, a, b)]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert starts[0] == 1_000.0
    assert all(g == pytest.approx(CHANNEL_GAP_S) for g in gaps), gaps
    # Another channel is not held up by this one.
    assert b.reserve(TEAM, "C2", horizon=FAR)[0].start == 1_000.0


def test_the_workspace_cap_lets_a_burst_through_then_waits_a_window(
    stores: tuple[Store, Store],
) -> None:
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(5, 10), clock=clock) for s in stores)
    starts = [
        (a if i % 2 else b).reserve(TEAM, f"D{i}", horizon=FAR)[0].start - 1_000.0
        for i in range(12)
    ]
    window = 10 + WINDOW_MARGIN_S
    assert starts == pytest.approx([0.0] * 5 + [window] * 5 + [2 * window] * 2)
    # In no window of 10 s (the cap's) do more than 5 start.
    for s in starts:
        assert sum(1 for t in starts if s <= t < s + 10) <= 5


def test_a_start_beyond_the_horizon_is_not_reserved(stores: tuple[Store, Store]) -> None:
    clock = ManualClock(1_000.0)
    pacer = Pacer(stores[0], cap=(600, 60), clock=clock)
    first, _ = pacer.reserve(TEAM, "C1", horizon=FAR)
    assert first is not None
    slot, wait = pacer.reserve(TEAM, "C1", horizon=0.5)
    assert slot is None and wait == pytest.approx(CHANNEL_GAP_S)
    # Nothing was taken: the next post that can wait gets that very start.
    later, _ = pacer.reserve(TEAM, "C1", horizon=FAR)
    assert later.start == pytest.approx(1_000.0 + CHANNEL_GAP_S)


def test_a_429_pauses_the_channel_and_the_workspace(stores: tuple[Store, Store]) -> None:
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(600, 60), clock=clock) for s in stores)
    a.pause(TEAM, "C1", 30)
    assert b.reserve(TEAM, "C1", horizon=FAR)[0].start == 1_030.0
    assert b.reserve(TEAM, "D9", horizon=FAR)[0].start == 1_030.0  # the cap was the reason?
    assert b.reserve("T0OTHER", "C1", horizon=FAR)[0].start == 1_000.0  # another workspace


def warm(pacer: Pacer, clock: ManualClock, round_trip: float = 0.05) -> None:
    """Enough quick posts (elsewhere) for ``pacer`` to trust its quickest round trip."""
    for i in range(TRUSTED_ROUND_TRIPS + 1):
        slot, _ = pacer.reserve(TEAM, f"DWARM{i}", horizon=FAR)
        pacer.posted(slot, clock(), clock() + round_trip)


def test_a_post_slack_refused_gives_its_place_in_the_window_back(
    stores: tuple[Store, Store],
) -> None:
    """A 429 is not counted in Slack's window: its retry must not wait a window for it."""
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(2, 10), clock=clock) for s in stores)
    refused, _ = a.reserve(TEAM, "D1", horizon=FAR)
    counted, _ = a.reserve(TEAM, "D2", horizon=FAR)
    a.posted(counted, 1_000.0, 1_000.05)
    a.posted(refused, 1_000.0, 1_000.05, counted=False)
    a.pause(TEAM, "D1", 1)  # its Retry-After
    retry, _ = b.reserve(TEAM, "D1", horizon=FAR)
    # Its channel's next slot, not 1_010.1: Slack has counted only one post.
    assert retry.start == pytest.approx(1_000.0 + CHANNEL_GAP_S)
    # The post after it is the third Slack counts: a window after the first.
    third, _ = b.reserve(TEAM, "D3", horizon=FAR)
    assert third.start == pytest.approx(1_000.05 + 10 + WINDOW_MARGIN_S)


def test_a_refused_post_in_the_middle_of_the_window_frees_the_next_place(
    stores: tuple[Store, Store],
) -> None:
    """The retry takes the next place in the ring, not the refused post's own."""
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(3, 10), clock=clock) for s in stores)
    first, refused, last = (a.reserve(TEAM, f"D{i}", horizon=FAR)[0] for i in (1, 2, 3))
    clock.set(1_005.0)
    a.posted(refused, 1_000.0, 1_000.05, counted=False)
    retry, _ = b.reserve(TEAM, "D2", horizon=FAR)
    assert retry.start == pytest.approx(1_005.0)  # Slack's window holds two posts
    # Now it holds three (the first, the last and the retry): the next waits for the first.
    fourth, _ = b.reserve(TEAM, "D4", horizon=FAR)
    assert fourth.start == pytest.approx(1_000.0 + 10 + WINDOW_MARGIN_S)


def test_a_refused_post_in_a_new_ring_frees_the_place_the_cap_holds_next(
    stores: tuple[Store, Store],
) -> None:
    """Fewer than N posts so far (a new workspace, a first busy morning): the first
    post the cap holds is the N-th, on place 0, so that is the place a 429 frees.
    Freeing the place after the last start instead (empty anyway) made one 429 in
    the burst benchmark cost its retry a whole window: 61 s instead of 13."""
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(3, 10), clock=clock) for s in stores)
    _first, refused = (a.reserve(TEAM, f"D{i}", horizon=FAR)[0] for i in (1, 2))
    clock.set(1_005.0)
    a.posted(refused, 1_000.0, 1_000.05, counted=False)
    third, fourth = (b.reserve(TEAM, f"D{i}", horizon=FAR)[0] for i in (3, 4))
    # Slack's window holds the first and the third: the fourth goes at once.
    assert third.start == fourth.start == pytest.approx(1_005.0)
    # Now it holds three: the fifth waits a window after the first.
    fifth, _ = b.reserve(TEAM, "D5", horizon=FAR)
    assert fifth.start == pytest.approx(1_000.0 + 10 + WINDOW_MARGIN_S)


def test_a_slow_post_moves_its_channel_s_next_start(stores: tuple[Store, Store]) -> None:
    """Slack may count a post when its answer leaves: the next one starts a gap after that."""
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(600, 60), clock=clock) for s in stores)
    warm(a, clock)  # the quickest round trip: 50 ms
    clock.set(1_002.0)
    slow, _ = a.reserve(TEAM, "C1", horizon=FAR)
    held, wait = b.reserve(TEAM, "C1", horizon=FAR)  # reserved while `slow` is in flight
    assert held.start == pytest.approx(1_002.0 + CHANNEL_GAP_S) and wait > 0
    a.posted(slow, 1_002.0, 1_002.55)  # answered half a second late
    assert b.until_floor(held) == pytest.approx(0.5 + CHANNEL_GAP_S, abs=1e-6)


def test_before_it_trusts_a_round_trip_a_post_is_taken_as_counted_when_it_ended(
    stores: tuple[Store, Store],
) -> None:
    """A process's first calls are its slowest (new connections, cold code): had the
    first post's own round trip been taken off, a post counted late by Slack would let
    the next start too early, and Slack would answer 429."""
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(600, 60), clock=clock) for s in stores)
    first, _ = a.reserve(TEAM, "C1", horizon=FAR)
    held, _ = b.reserve(TEAM, "C1", horizon=FAR)
    a.posted(first, 1_000.0, 1_000.08)  # the first round trip this process saw
    clock.set(held.start)
    assert b.until_floor(held) == pytest.approx(0.08, abs=1e-6)


def test_a_post_that_ended_late_moves_the_start_of_the_one_a_window_later(
    stores: tuple[Store, Store],
) -> None:
    """The workspace cap: post k may be counted a window after post k - N was, and
    that may have been as late as its answer."""
    clock = ManualClock(1_000.0)
    a, b = (Pacer(s, cap=(3, 10), clock=clock) for s in stores)
    warm(a, clock)  # quickest round trip: 50 ms
    clock.set(1_100.0)  # long after the warm-up's windows
    slow, _ = a.reserve(TEAM, "D1", horizon=FAR)  # ring slot 0
    second, _ = a.reserve(TEAM, "D2", horizon=FAR)  # ring slot 1
    third, _ = a.reserve(TEAM, "D3", horizon=FAR)  # ring slot 2
    held, _ = b.reserve(TEAM, "D4", horizon=FAR)  # slot 0 again, before `slow` ended
    window = 10 + WINDOW_MARGIN_S
    assert held.start == pytest.approx(1_100.0 + window)
    a.posted(slow, 1_100.0, 1_100.7)  # answered 0.7 s after it started
    a.posted(third, 1_100.0, 1_100.05)
    clock.set(held.start)
    assert b.until_floor(held) == pytest.approx(0.7 - 0.05, abs=1e-6)
    # A post that reserves slot 1 after `second` ended late starts a window after that.
    a.posted(second, 1_100.0, 1_100.3)
    later, _ = b.reserve(TEAM, "D5", horizon=FAR)
    assert later.start == pytest.approx(1_100.3 - 0.05 + window)


def test_replicas_together_stay_under_slack_s_caps(start_bot, postgres_url, slack, ams):
    """Two bots on one PostgreSQL each open a room at once: each alone would keep under
    the caps and together break them; sharing the budget in the database, they do not."""
    slack.workspace_cap_per_minute = 8
    slack.workspace_window = 2.0
    slack.per_channel_rate = 1.0
    crowds = [[f"UPACE{r}{i:02d}" for i in range(12)] for r in range(2)]
    for u in crowds[0] + crowds[1]:
        slack.add_user(u, u.lower())
    bots = [start_bot(postgres_url, MEETBOT_SLACK_POST_CAP="8/2s") for _ in range(2)]
    senders = [sender_for(b, slack) for b in bots]
    with ThreadPoolExecutor(2) as pool:
        acks = list(
            pool.map(
                lambda i: senders[i].command(
                    f"pace{i} " + " ".join(f"<@{u}>" for u in crowds[i]), user_id=ALICE
                ),
                range(2),
            )
        )
    assert all(r.status_code == 200 for r in acks)
    expected = 2 * (12 + 2)  # each room: its invitees' DMs, the requester's, the card

    def delivered() -> int:
        return len([c for c in slack.calls_to("chat.postMessage") if c.status == 200])

    wait_for(lambda: delivered() >= expected, timeout=60)
    for b in bots:
        settled(b)
    assert delivered() == expected
    posts = slack.calls_to("chat.postMessage")
    assert slack.ratelimited_count == 0, [c.args.get("channel") for c in posts if c.status == 429]


def test_a_post_counted_on_time_writes_no_floor(stores: tuple[Store, Store]) -> None:
    """The floor only moves for a post that was late: an on-time one costs no write."""
    clock = ManualClock(1_000.0)
    pacer = Pacer(stores[0], cap=(600, 60), clock=clock)
    for i in range(7):  # round trips of 50 ms, trusted after five
        slot, _ = pacer.reserve(TEAM, f"D{i}", horizon=FAR)
        pacer.posted(slot, slot.start, slot.start + 0.05)
    slot, _ = pacer.reserve(TEAM, "D9", horizon=FAR)
    with stores[0].write() as s:
        before = s.get(SlackPace, f"c:{TEAM}:D9").floor_at
    pacer.posted(slot, slot.start, slot.start + 0.05)  # counted when it started
    with stores[0].read() as s:
        assert s.get(SlackPace, f"c:{TEAM}:D9").floor_at == before
    pacer.posted(slot, slot.start, slot.start + 0.5)  # late: the floor moves on
    with stores[0].read() as s:
        assert s.get(SlackPace, f"c:{TEAM}:D9").floor_at == pytest.approx(
            slot.start + 0.45 + CHANNEL_GAP_S
        )


def test_a_post_stuck_under_way_holds_its_channel_only_for_the_longest_turn_wait(
    stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slack call that never returns must not silence its channel for good.

    The next post to that channel waits for it (two posts under way at once
    could both be counted in one second), but for at most ``MAX_TURN_WAIT_S``;
    a post to another channel does not wait at all.
    """
    pacer = Pacer(stores[0], cap=(600, 60))
    stuck, _ = pacer.reserve(TEAM, "C1", horizon=FAR)
    after, _ = pacer.reserve(TEAM, "C1", horizon=FAR)
    other, _ = pacer.reserve(TEAM, "C2", horizon=FAR)
    went: dict[str, float] = {}

    def post(name: str, slot: pacing.Slot) -> None:
        with pacer.turn(slot):
            went[name] = time.monotonic()

    with ThreadPoolExecutor(2) as pool, pacer.turn(stuck):  # under way, and never ends
        # Another channel: goes now, not after the stuck post's 30 s.
        pool.submit(post, "other", other).result(timeout=10)
        monkeypatch.setattr(pacing, "MAX_TURN_WAIT_S", 0.3)
        began = time.monotonic()
        # Without the cap this would wait for the stuck post forever.
        pool.submit(post, "after", after).result(timeout=10)
    assert went["after"] - began >= 0.3  # it did wait for the stuck post, that long
