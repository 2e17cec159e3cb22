"""5. Memory: the bot's RSS against a bare Bolt app's, and its queries at 10,000 rooms.

The floor is ``bench/floor.py``, a bare Bolt app on waitress (nothing else
imported), started in the same run, sent the same warm-up requests, its RSS
read the same way: ``VmRSS`` of ``/proc/PID/status``, the median of three
reads after two quiet seconds. ``meetbot serve`` runs on SQLite; its database
is migrated first with ``meetbot db upgrade``, as production does (the
Kubernetes Job, docs/deploy.md), so ``serve`` finds the schema current and
loads no Alembic. Its RSS is read idle after start-up (and its start-up AMS
reconciliation), then after 10,000 rooms and 100,000 grants were written into
its database and it served ``/meet list`` for 200 people and a ``/metrics``
scrape over them. Target: both <= 1.5 x the floor's RSS.

The data: 1,000 owners with 10 rooms each (2 open, 8 ended), 10 grants per
room (the owner and 9 of 5,000 people), so each person holds about 20
grants, 4 of them in open rooms. At that size ``/meet list`` (the signed
request's round trip, which carries the list in its ack) and the queries an
App Home runs (``Store.open_rooms_of``, ``Store.rooms_invited``) must stay
under 20 ms: p99 over 200 distinct people each, against 20 ms.

In full mode it also logs ``bench.imports``: the RSS each import brings, so
that the distance to the floor is explained.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections import defaultdict

import requests

from bench import imports, seed
from bench.harness import (
    SIGNING_SECRET,
    TEAM,
    Line,
    Outcome,
    Server,
    doubles,
    free_port,
    log,
    meetbot,
    percentile,
    rss_mib,
    sender_for,
    upgrade_database,
    user_ids,
    wait_reconciled,
    workdir,
)
from bot.sim.slack import SlackSender
from bot.store import RoomState, Store

LIMIT_MS = 20.0
RSS_TARGET = 1.5
WARM_UP = 5  # requests each server answers before its idle RSS is read


def quiet_rss(pid: int) -> float:
    """VmRSS after two quiet seconds, the median of three reads."""
    time.sleep(2.0)
    return statistics.median(rss_mib(pid) for _ in range(3))


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


def floor_sender(floor: Server) -> SlackSender:
    return SlackSender(floor.url + "/slack/events", SIGNING_SECRET, team_id=TEAM, timeout=10)


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
        floor_port = free_port()
        floor = Server(
            [sys.executable, "-m", "bench.floor", str(floor_port)],
            bot.env,
            floor_port,
            wd / "floor.log",
        )
        floor.ready_path = "/healthz"
        with floor, floor_sender(floor) as fs:
            for _ in range(WARM_UP):
                fs.command("help", user_id=owners[0])
            floor_rss = quiet_rss(floor.pid)
        log(f"footprint: floor (bare Bolt app) RSS {floor_rss:.1f} MiB")
        upgrade_database(bot)
        with bot, sender_for(bot, slack) as sender:
            for _ in range(WARM_UP):
                sender.command("help", user_id=owners[0])
            wait_reconciled(url)
            idle = quiet_rss(bot.pid)
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
            after = quiet_rss(bot.pid)
        out.check(bot.proc is not None and bot.proc.returncode == 0, "bot did not stop cleanly")
    out.lines += [
        Line("RSS idle", idle, floor_rss, "MiB", "bare Bolt app", RSS_TARGET),
        Line("RSS after data", after, floor_rss, "MiB", "bare Bolt app", RSS_TARGET, note=size),
    ]
    if not quick:
        log("footprint: where the RSS goes, import by import (bench.imports):")
        for row in imports.render(imports.breakdown()).splitlines():
            log("  " + row)
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
