"""6. The expiry sweep: 5,000 rooms ending at once, AMS taking 20 ms per call.

The real ``meetbot serve`` runs with ``MEETBOT_SWEEP_INTERVAL=1s`` and
``MEETBOT_AMS_CONCURRENCY=8``. The rooms (five per owner, one grant each, no
Slack message to edit) are created on the AMS double and inserted into the
database, which ``meetbot db upgrade`` migrated, before the bot starts; once
its start-up reconciliation has run, one UPDATE ends them all at once. The
clock starts at that commit and stops when the last room reads ``revoked``.

The ideal is what AMS alone needs: ``rooms x len(REVOKE_CALLS) x 20 ms /
(replicas x 8)``, 5,000 x 2 x 20 ms / 8 = 25 s for one replica. Target <= 1.15 x
that on SQLite and on PostgreSQL (a fresh database per run, dropped
afterwards), with every room getting exactly ``REVOKE_CALLS`` on AMS (so a
change in what a revoke calls fails the run instead of silently moving the
ideal), every grant revoked and one revoke audit row per room.
``bench.replicas`` runs the same sweep on three replicas.
"""

from __future__ import annotations

import math
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench import seed
from bench.harness import (
    Line,
    Outcome,
    Server,
    cpu_seconds,
    doubles,
    execute,
    in_own_process,
    log,
    meetbot,
    postgres_database,
    scalar,
    upgrade_database,
    user_ids,
    wait_reconciled,
    wait_until,
    workdir,
)
from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble
from bot.store import Store
from bot.tokens import new_room_id

AMS_LATENCY_S = 0.02
CONCURRENCY = 8
TARGET = 1.15
#: The AMS calls one revoke of a room nobody is in makes (``Rooms.end_on_ams``), as
#: (method, what follows ``/broadcasts/<room id>`` in the path): count who is still
#: connected (``active-subtracks-count``: nobody), then delete the broadcast, which
#: stops it too. The ideal counts them, and every room must have got exactly these,
#: once each: a change to what a revoke calls on AMS must be written here too, or
#: the run fails on that check rather than judging the sweep against a wrong ideal.
REVOKE_CALLS: tuple[tuple[str, str], ...] = (
    ("GET", "/active-subtracks-count"),
    ("DELETE", ""),
)
ROOM_CALL = re.compile(r"^/Conference/rest/v2/broadcasts/([A-Za-z0-9_-]{16,})(/[^?]*)?$")


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        with workdir() as wd:
            yield f"sqlite:///{wd / 'sweep.db'}"


def run(quick: bool = False, kinds: tuple[str, ...] = ("sqlite", "postgresql")) -> Outcome:
    out = Outcome()
    for kind in kinds:
        with doubles() as (ams, slack):
            out.lines.append(sweep_once(out, ams, slack, kind, 50 if quick else 5000))
    return out


def ideal_s(rooms: int, replicas: int, latency: float) -> float:
    return rooms * len(REVOKE_CALLS) * latency / (replicas * CONCURRENCY)


def ams_pace(ams: AmsDouble, concurrency: int, rooms: int, *, tries: int = 3) -> float:
    """Seconds per AMS call when ``concurrency`` clients revoke rooms at once, in this run.

    ``rooms`` throwaway rooms are made on the double, then revoked with
    ``REVOKE_CALLS`` from ``bench.amsload`` (its own process, ``concurrency``
    keep-alive clients): elapsed x concurrency / calls. The double sleeps
    ``AMS_LATENCY_S`` per call; what it takes on top (its threads, this
    machine's load) no bot could avoid either, so the ideal is computed with this.
    The quickest of ``tries``: one measured while the machine was busy elsewhere
    would flatter the bot (one run measured 37 ms a call where others gave 24 to 26).
    """
    paces = []
    for _ in range(tries):
        ids = [f"benchpace{i:05d}{uuid.uuid4().hex[:8]}" for i in range(rooms)]
        latency, ams.latency = ams.latency, 0.0
        seed.rooms_on_ams(ams, ids, "bench-pace")
        ams.latency = AMS_LATENCY_S
        calls = [
            [m, f"{ams.rest_base}/broadcasts/{r}{suffix}"]
            for r in ids
            for m, suffix in REVOKE_CALLS
        ]
        spec = {"base": ams.url, "concurrency": concurrency, "calls": calls}
        elapsed = float(in_own_process("bench.amsload", spec)["elapsed"])
        ams.latency = latency
        paces.append(elapsed * concurrency / len(calls))
    ams.clear_requests()
    each = ", ".join(f"{1000 * p:.1f}" for p in paces)
    log(f"AMS pace at {concurrency} clients: {each} ms a call; the quickest is the ideal's")
    return min(paces)


def ams_call_ms(bots: list[Server]) -> float:
    """The mean AMS call as the bots timed them (``meetbot_ams_call_seconds``), in ms."""
    total = count = 0.0
    for bot in bots:
        text = requests.get(bot.url + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name != "meetbot_ams_call_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return 1000 * total / count if count else math.nan


def check_revoke_calls(out: Outcome, ams: AmsDouble, room_ids: list[str], what: str) -> None:
    """Each room got exactly ``REVOKE_CALLS`` on AMS, and nothing else went to a room."""
    per_room: dict[str, Counter[tuple[str, str]]] = {r: Counter() for r in room_ids}
    other: Counter[str] = Counter()
    for req in ams.requests:
        m = ROOM_CALL.match(req.path)
        if m and m.group(1) in per_room:
            per_room[m.group(1)][(req.method, m.group(2) or "")] += 1
        else:
            other[f"{req.method} {req.path[:60]}"] += 1
    want = Counter(REVOKE_CALLS)
    wrong = {r: dict(c) for r, c in per_room.items() if c != want}
    sample = dict(list(wrong.items())[:3])
    out.check(
        not wrong,
        f"{what}: {len(wrong)} rooms did not get exactly {list(REVOKE_CALLS)} on AMS, e.g. "
        f"{sample} (if the bot's revoke changed, change bench.sweep.REVOKE_CALLS)",
    )
    if other:
        log(f"{what}: other AMS requests while sweeping: {dict(other.most_common(5))}")


def sweep_once(
    out: Outcome,
    ams: AmsDouble,
    slack: SlackDouble,
    kind: str,
    n: int,
    *,
    replicas: int = 1,
    target: float = TARGET,
    tag: str = "sweep",
) -> Line:
    # Five rooms per owner, as MEETBOT_MAX_OPEN_ROOMS_PER_USER's default allows; owners
    # are real people on the Slack double, so what the bot tells them on a revoke lands.
    owners = user_ids("SWP", max(1, n // 5))
    for u in owners:
        slack.add_user(u, u.lower())
    room_ids = [new_room_id() for _ in range(n)]
    pace = ams_pace(ams, replicas * CONCURRENCY, max(40, n // 10))
    ideal = ideal_s(n, replicas, pace)
    with database(kind) as url, workdir() as wd, ExitStack() as stack:
        # Set up before the bots start, so the start-up reconciliation (AMS listing vs
        # database) sees a consistent picture; the rooms end later, all in one UPDATE.
        bots = [
            meetbot(
                wd,
                ams,
                slack,
                url,
                MEETBOT_SWEEP_INTERVAL="1s",
                MEETBOT_AMS_CONCURRENCY=str(CONCURRENCY),
                MEETBOT_RECONCILE_INTERVAL="1h",
            )
            for _ in range(replicas)
        ]
        upgrade_database(bots[0])
        store = Store(url)
        deployment = store.deployment_id()  # made by the migration: the rooms' marker
        store.dispose()
        assert deployment is not None
        seed.rooms_on_ams(ams, room_ids, deployment)
        now = int(time.time())
        rooms = [
            seed.room_row(rid, owners[i % len(owners)], created=now - 3600, expires=now + 86400)
            for i, rid in enumerate(room_ids)
        ]
        grants = [
            seed.grant_row(r["id"], r["owner_id"], exp=now + 86700, created=now - 3600)
            for r in rooms
        ]
        seed.insert(url, rooms, grants)
        for bot in bots:
            stack.enter_context(bot)
        wait_reconciled(url)
        ams.clear_requests()
        ams.latency = AMS_LATENCY_S
        cpu = sum(cpu_seconds(b.pid) for b in bots)
        execute(url, "UPDATE rooms SET expires_at = :t", t=int(time.time()) - 1)
        t0 = time.monotonic()

        def revoked() -> bool:
            return scalar(url, "SELECT count(*) FROM rooms WHERE state = 'revoked'") >= n

        wait_until(revoked, timeout=60 + 6 * ideal, interval=0.1, what=f"{n} rooms revoked")
        elapsed = time.monotonic() - t0
        cpu = sum(cpu_seconds(b.pid) for b in bots) - cpu
        ams_ms = ams_call_ms(bots)
        # Whatever a second revoke of a room would call has been called by the time
        # every replica has swept twice more (a sweep a second).
        time.sleep(2.5)
        ams.latency = 0.0
        check_revoke_calls(out, ams, room_ids, f"{tag} {kind}")
        left = [r for r in room_ids if r in ams.broadcasts]
        audits = scalar(url, "SELECT count(*) FROM audit WHERE action = 'revoke'")
        distinct = scalar(url, "SELECT count(DISTINCT room_id) FROM audit WHERE action = 'revoke'")
        live_grants = scalar(url, "SELECT count(*) FROM grants WHERE revoked_at IS NULL")
        stack.close()
        for i, bot in enumerate(bots):
            code = bot.proc.returncode if bot.proc else None
            out.check(code == 0, f"{tag} {kind}: replica {i} exited {code}:\n{bot.tail()}")
    out.check(not left, f"{tag} {kind}: {len(left)} rooms still on AMS")
    out.check(
        audits == n and distinct == n, f"{tag} {kind}: {audits} revoke audits, {distinct} rooms"
    )
    out.check(live_grants == 0, f"{tag} {kind}: {live_grants} grants not revoked")
    calls = len(REVOKE_CALLS)
    log(
        f"{tag} {kind}: {n} rooms revoked in {elapsed:.2f} s by {replicas} replica(s) "
        f"(AMS-bound ideal {ideal:.2f} s); meetbot used {cpu:.1f} s of CPU "
        f"({1000 * cpu / n:.2f} ms per room); its AMS calls took {ams_ms:.1f} ms on average "
        f"as it timed them; the double answered {replicas * CONCURRENCY} clients at "
        f"{pace * 1000:.1f} ms a call (it sleeps {AMS_LATENCY_S * 1000:.0f} ms)"
    )
    return Line(
        f"{tag} {n} rooms {kind}" + (f" x{replicas}" if replicas > 1 else ""),
        elapsed,
        ideal,
        "s",
        f"{n}x{calls}x{pace * 1000:.1f}ms/({replicas}x{CONCURRENCY})",
        target,
    )


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
    for f in result.failures:
        print("FAILED:", f)
