"""3. The expiry sweep: 5,000 rooms ending at once, AMS taking 20 ms per call.

The real ``meetbot serve`` runs with ``MEETBOT_SWEEP_INTERVAL=1s`` and
``MEETBOT_AMS_CONCURRENCY=8``. The rooms (five per owner, one grant each, no
Slack message to edit) are created on the AMS double and inserted into the
database before the bot starts; once its start-up reconciliation has run,
one UPDATE ends them all at once. The clock starts at that commit and stops
when the last room reads ``revoked``. Each revoke of a room nobody is in is
two AMS calls (``active-subtracks-count`` to confirm nobody is connected, then
the delete, which stops the room itself: ``Rooms.end_on_ams``), so AMS alone
needs ``5,000 x 2 x 20 ms / 8 = 25 s``. Target: <= 1.3 x that, on SQLite and
on PostgreSQL (a fresh database per run, dropped afterwards), with every room
counted and deleted on AMS exactly once (and no stop: nobody was in them),
every grant revoked and one revoke audit row per room.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench import seed
from bench.harness import (
    Line,
    Outcome,
    doubles,
    execute,
    log,
    meetbot,
    postgres_database,
    scalar,
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
CALLS_PER_ROOM = 2  # active-subtracks-count, delete (Rooms.end_on_ams, nobody in the room)
TARGET = 1.3


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
            sweep_once(out, ams, slack, kind, 50 if quick else 5000)
    return out


def sweep_once(out: Outcome, ams: AmsDouble, slack: SlackDouble, kind: str, n: int) -> None:
    # Five rooms per owner, as MEETBOT_MAX_OPEN_ROOMS_PER_USER's default allows; owners
    # are real people on the Slack double, so what the bot tells them on a revoke lands.
    owners = user_ids("SWP", max(1, n // 5))
    for u in owners:
        slack.add_user(u, u.lower())
    room_ids = [new_room_id() for _ in range(n)]
    ideal = n * CALLS_PER_ROOM * AMS_LATENCY_S / CONCURRENCY
    with database(kind) as url, workdir() as wd:
        # Set up before the bot starts, so its start-up reconciliation (AMS listing vs
        # database) sees a consistent picture; the rooms end later, all in one UPDATE.
        store = Store(url)
        store.migrate()
        deployment = store.deployment_id()
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
        bot = meetbot(
            wd,
            ams,
            slack,
            url,
            MEETBOT_SWEEP_INTERVAL="1s",
            MEETBOT_AMS_CONCURRENCY=str(CONCURRENCY),
            MEETBOT_RECONCILE_INTERVAL="1h",
        )
        with bot:
            wait_reconciled(url)
            ams.clear_requests()
            ams.latency = AMS_LATENCY_S
            execute(url, "UPDATE rooms SET expires_at = :t", t=int(time.time()) - 1)
            t0 = time.monotonic()

            def revoked() -> bool:
                return scalar(url, "SELECT count(*) FROM rooms WHERE state = 'revoked'") >= n

            wait_until(revoked, timeout=60 + 6 * ideal, interval=0.1, what=f"{n} rooms revoked")
            elapsed = time.monotonic() - t0
            time.sleep(1.5)  # a second revoke of any room would show by now
            stops = ams.count("POST", r"^/Conference/rest/v2/broadcasts/[^/]+/stop$")
            deletes = ams.count("DELETE", r"^/Conference/rest/v2/broadcasts/[^/]+$")
            counts = ams.count(
                "GET", r"^/Conference/rest/v2/broadcasts/[^/]+/active-subtracks-count$"
            )
            left = [r for r in room_ids if r in ams.broadcasts]
            audits = scalar(url, "SELECT count(*) FROM audit WHERE action = 'revoke'")
            distinct = scalar(
                url, "SELECT count(DISTINCT room_id) FROM audit WHERE action = 'revoke'"
            )
            live_grants = scalar(url, "SELECT count(*) FROM grants WHERE revoked_at IS NULL")
            ams.latency = 0.0
        out.check(stops == 0, f"{kind}: {stops} AMS stops for {n} empty rooms")
        out.check(deletes == n, f"{kind}: {deletes} AMS deletes for {n} rooms")
        out.check(counts == n, f"{kind}: {counts} AMS participant counts for {n} rooms")
        out.check(not left, f"{kind}: {len(left)} rooms still on AMS")
        out.check(
            audits == n and distinct == n, f"{kind}: {audits} revoke audits, {distinct} rooms"
        )
        out.check(live_grants == 0, f"{kind}: {live_grants} grants not revoked")
        out.check(bot.proc is not None and bot.proc.returncode == 0, f"{kind}: bot stop failed")
    log(f"sweep {kind}: {n} rooms revoked in {elapsed:.2f} s (AMS-bound ideal {ideal:.2f} s)")
    out.lines.append(
        Line(
            f"sweep {n} rooms {kind}",
            elapsed,
            ideal,
            "s",
            f"{n}x{CALLS_PER_ROOM}x{AMS_LATENCY_S * 1000:.0f}ms/{CONCURRENCY}",
            TARGET,
        )
    )


if __name__ == "__main__":
    import sys

    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
    for f in result.failures:
        print("FAILED:", f)
