"""5. Footprint: the bot's memory, and its per-user queries at 10,000 rooms.

RSS of ``meetbot serve`` (SQLite) idle after start-up, then after 10,000
rooms and 100,000 grants were written into its database and it served
``/meet list`` and a ``/metrics`` scrape over them. The data: 1,000 owners
with 10 rooms each (2 open, 8 ended), 10 grants per room (the owner and 9
of 5,000 people), so each person holds about 20 grants, 4 of them in open
rooms. At that size ``/meet list`` (the signed request's round trip, which
carries the list in its ack) and the queries an App Home runs
(``Store.open_rooms_of``, ``Store.rooms_invited``) must stay under 20 ms:
p99 over 200 distinct people each, reported against 20 ms. RSS is
reported against the idle RSS (no target).
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections import defaultdict

import requests

from bench import seed
from bench.harness import (
    TEAM,
    Line,
    Outcome,
    doubles,
    log,
    meetbot,
    percentile,
    rss_mib,
    sender_for,
    user_ids,
    wait_reconciled,
    workdir,
)
from bot.store import RoomState, Store

LIMIT_MS = 20.0


def build(n_owners: int, n_people: int, rooms_each: int, open_each: int, per_room: int):  # noqa: ANN201
    """Rows, plus what each person should see: {owner: open ids}, {user: open invited ids}."""
    rng = random.Random(42)  # noqa: S311 - a fixed data set, not security
    people = user_ids("FPR", n_people)
    owners = people[:n_owners]
    now = int(time.time())
    rooms, grants = [], []
    open_of: dict[str, set[str]] = defaultdict(set)
    invited: dict[str, set[str]] = defaultdict(set)
    for i, owner in enumerate(owners):
        for j in range(rooms_each):
            room_id = f"fp{i:05d}r{j:02d}" + "x" * 10
            active = j < open_each
            state = RoomState.ACTIVE if active else RoomState.REVOKED
            created = now - 86400 * (rooms_each - j)
            expires = now + 3600 if active else created + 3600
            rooms.append(
                seed.room_row(room_id, owner, created=created, expires=expires, state=state)
            )
            others = [people[k] for k in rng.sample(range(n_people), per_room)]
            members = [owner, *[p for p in others if p != owner][: per_room - 1]]
            for u in members:
                grants.append(
                    seed.grant_row(
                        room_id,
                        u,
                        exp=expires + 300,
                        created=created,
                        revoked=None if active else expires,
                    )
                )
                if active:
                    invited[u].add(room_id)
            if active:
                open_of[owner].add(room_id)
    return people, owners, rooms, grants, open_of, invited


def timed(fn, *args):  # noqa: ANN001, ANN201
    t = time.perf_counter()
    value = fn(*args)
    return (time.perf_counter() - t) * 1000, value


def run(quick: bool = False) -> Outcome:
    with doubles() as (ams, slack):
        return measure(ams, slack, quick)


def measure(ams, slack, quick: bool) -> Outcome:  # noqa: ANN001
    out = Outcome()
    owners_n, people_n = (50, 500) if quick else (1000, 5000)
    samples = 20 if quick else 200
    people, owners, rooms, grants, open_of, invited = build(owners_n, people_n, 10, 2, 10)
    for u in owners[:samples]:
        slack.add_user(u, u.lower())
    with workdir() as wd:
        url = f"sqlite:///{wd / 'footprint.db'}"
        # No reconciliation pass after start-up: these rooms exist in the database only.
        bot = meetbot(wd, ams, slack, url, MEETBOT_RECONCILE_INTERVAL="1h")
        with bot, sender_for(bot, slack) as sender:
            sender.command("help", user_id=owners[0])
            wait_reconciled(url)
            time.sleep(2.0)
            idle = statistics.median(rss_mib(bot.pid) for _ in range(3))
            t = time.monotonic()
            seed.insert(url, rooms, grants)
            size = f"{len(rooms):,} rooms, {len(grants):,} grants"
            log(f"footprint: {size} inserted in {time.monotonic() - t:.1f} s")
            del rooms, grants
            # Our own collector must not stop the clock: park what exists now outside it.
            gc.collect()
            gc.freeze()
            # /meet list over HTTP, as Slack sends it; the list is in the ack.
            for u in owners[:5]:
                sender.command("list", user_id=u)
            list_ms = []
            for u in owners[:samples]:
                ms, resp = timed(lambda u=u: sender.command("list", user_id=u))
                list_ms.append(ms)
                want = open_of[u]
                out.check(
                    resp.status_code == 200 and all(r in resp.text for r in want),
                    f"/meet list for {u} did not list {sorted(want)}: {resp.text[:200]}",
                )
            requests.get(bot.url + "/metrics", timeout=10).raise_for_status()
            # The App Home's queries, straight on the store (a separate process's view).
            store = Store(url)
            try:
                for u in people[:20]:
                    store.open_rooms_of(TEAM, u)
                    store.rooms_invited(TEAM, u)
                own_ms, inv_ms = [], []
                for u in owners[:samples]:
                    ms, got = timed(store.open_rooms_of, TEAM, u)
                    own_ms.append(ms)
                    out.check({r.id for r in got} == open_of[u], f"open_rooms_of({u}) wrong")
                for u in people[-samples:]:
                    ms, got = timed(store.rooms_invited, TEAM, u)
                    inv_ms.append(ms)
                    out.check({r.id for r in got} == invited[u], f"rooms_invited({u}) wrong")
            finally:
                store.dispose()
                gc.unfreeze()
            time.sleep(1.0)
            after = statistics.median(rss_mib(bot.pid) for _ in range(3))
        out.check(bot.proc is not None and bot.proc.returncode == 0, "bot did not stop cleanly")
    out.lines.append(
        Line("footprint RSS after data", after, idle, "MiB", "RSS idle", None, note=size)
    )
    for name, values in (
        ("/meet list", list_ms),
        ("Store.open_rooms_of", own_ms),
        ("Store.rooms_invited", inv_ms),
    ):
        out.lines.append(
            Line(
                f"{name} p99",
                percentile(values, 0.99),
                LIMIT_MS,
                "ms",
                "20 ms",
                1.0,
                note=f"p50 {percentile(values, 0.5):.2f} ms, max {max(values):.2f} ms",
            )
        )
    return out


if __name__ == "__main__":
    import sys

    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
    for f in result.failures:
        print("FAILED:", f)
