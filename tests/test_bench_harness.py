"""The fan-out limit (bench.harness.earliest_finish): hand-computed cases, and every order.

The benchmarks judge the bot's fan-out against this function, so a limit that
is too high would pass a slow bot and one that is too low would fail a
perfect one. Small cases are checked against the best of every possible
order of posts.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.harness import earliest_finish, schedule_finish


def test_one_channel_is_paced_by_its_rate():
    assert earliest_finish([("C", 0.0)] * 3, rate=1.0) == 2.0


def test_channels_are_independent_without_a_workspace_cap():
    posts = [("A", 0.0), ("A", 0.0), ("A", 5.0), ("B", 0.5)]
    assert earliest_finish(posts, rate=1.0) == 5.0  # A: 0, 1, 5


def test_a_post_waits_for_its_availability():
    # Ten rooms sent 0.1 s apart, each available 0.25 s later, in one channel at 1/s.
    posts = [("C", 0.1 * i + 0.25) for i in range(10)]
    assert math.isclose(earliest_finish(posts, rate=1.0), 0.25 + 9.0)
    # Sent far apart, the availability, not the rate, sets the end.
    assert earliest_finish([("C", 0.0), ("C", 30.0)], rate=1.0) == 30.0


def test_the_workspace_cap_lets_a_window_of_posts_go_at_once():
    # 5 posts in 5 channels, 2 per 10 s: 0, 0, 10, 10, 20.
    posts = [(f"D{i}", 0.0) for i in range(5)]
    assert earliest_finish(posts, rate=1.0, cap=(2, 10.0)) == 20.0
    # 302 posts at 60 per 10 s: five full windows then two more, 50 s.
    posts = [(f"D{i}", 1.0) for i in range(302)]
    assert earliest_finish(posts, rate=1.0, cap=(60, 10.0)) == 51.0


def test_the_window_slides_from_each_post():
    # Post 3 may go once post 1 is 10 s old, not at a fixed minute boundary.
    assert earliest_finish([("A", 0.0), ("B", 12.0), ("C", 12.0)], rate=1.0, cap=(2, 10.0)) == 12.0
    assert earliest_finish([("A", 0.0), ("B", 0.0), ("C", 3.0)], rate=1.0, cap=(2, 10.0)) == 10.0


def test_the_long_channel_gets_the_window_first():
    # A has three posts, B and C one each; two posts per 1.5 s. Best: A and B at 0,
    # A and C at 1.5, A at 3. Giving the first window to B and C would end at 3.5.
    posts = [("A", 0.0)] * 3 + [("B", 0.0), ("C", 0.0)]
    assert earliest_finish(posts, rate=1.0, cap=(2, 1.5)) == 3.0
    assert schedule_finish(posts, rate=1.0, cap=(2, 1.5)) == 3.0


def test_a_greedy_schedule_is_not_the_limit():
    # C's two posts are 3 s apart at the least, one post per 1 s in the workspace:
    # best is C at 3, B at 4, C at 6, which C's rate alone already says.
    posts = [("C", 3.0), ("C", 3.5), ("B", 2.5)]
    assert best_of_every_order(posts, 1 / 3, (1, 1.0)) == 6.0
    assert earliest_finish(posts, rate=1 / 3, cap=(1, 1.0)) == 6.0
    # The greedy schedule gives B the first slot and ends later: not the limit.
    assert schedule_finish(posts, rate=1 / 3, cap=(1, 1.0)) == 6.5


def best_of_every_order(posts, rate, cap):
    """The least finish over every order in which the posts could be counted."""
    gap = 1.0 / rate
    queues = defaultdict(list)
    for c, t in posts:
        queues[c].append(t)
    for q in queues.values():
        q.sort()
    channels = sorted(queues)
    best = math.inf

    def walk(nxt, free, recent, last):
        nonlocal best
        if all(nxt[c] == len(queues[c]) for c in channels):
            best = min(best, last)
            return
        for c in channels:
            if nxt[c] == len(queues[c]):
                continue
            t = max(queues[c][nxt[c]], free[c], last)
            if cap and len(recent) == cap[0]:
                t = max(t, recent[0] + cap[1])
            if t >= best:
                continue
            r = deque(recent, maxlen=cap[0] if cap else 0)
            if cap:
                r.append(t)
            walk({**nxt, c: nxt[c] + 1}, {**free, c: t + gap}, r, t)

    walk(dict.fromkeys(channels, 0), dict.fromkeys(channels, -math.inf), deque(), -math.inf)
    return best


small_posts = st.lists(
    st.tuples(st.sampled_from("ABC"), st.integers(0, 6).map(lambda x: x / 2)),
    min_size=1,
    max_size=7,
)


@settings(max_examples=400, deadline=None)
@given(
    posts=small_posts,
    rate=st.sampled_from([1.0, 0.5, 2.0, 1 / 3]),
    cap=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.sampled_from([1.0, 1.5, 3.0]))),
)
def test_no_order_finishes_before_the_limit(posts, rate, cap):
    best = best_of_every_order(posts, rate, cap)
    assert earliest_finish(posts, rate=rate, cap=cap) <= best + 1e-9
    assert schedule_finish(posts, rate=rate, cap=cap) >= best - 1e-9


@settings(max_examples=200, deadline=None)
@given(posts=small_posts, rate=st.sampled_from([1.0, 0.5, 2.0]))
def test_the_limit_is_the_best_schedule_when_one_cap_is_loose(posts, rate):
    """Without a workspace cap, or with one that never binds, the limit is exact."""
    best = best_of_every_order(posts, rate, None)
    assert math.isclose(earliest_finish(posts, rate=rate), best)
    assert math.isclose(earliest_finish(posts, rate=rate, cap=(len(posts), 100.0)), best)
    # A cap far tighter than any channel's rate binds alone: exact again.
    best = best_of_every_order(posts, 100.0, (1, 10.0))
    assert math.isclose(earliest_finish(posts, rate=100.0, cap=(1, 10.0)), best)
