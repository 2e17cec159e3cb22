"""Several `meetbot serve` replicas on one PostgreSQL: every unit of work happens once.

These run on a real PostgreSQL server and fail (not skip) without one.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from tests.conftest import ALICE, BOB, sender_for, wait_for
from tests.helpers import (
    db_exec,
    db_rows,
    dm_links,
    response_texts,
    rooms_on_ams,
    settled,
    sweep_more,
)

DELETE_RE = re.compile(r"^/Conference/rest/v2/broadcasts/([A-Za-z0-9_.-]+)$")


def deletes_per_room(ams) -> Counter:
    return Counter(
        m.group(1) for r in ams.requests if r.method == "DELETE" and (m := DELETE_RE.match(r.path))
    )


def open_rooms(sender, slack, n):
    keys = []
    for i in range(n):
        r = sender.command(f"room{i} <@{BOB}>", user_id=f"UREQ{i:04d}")
        keys.append(r.response_key)
    for key in keys:
        wait_for(lambda k=key: any("is open" in t for t in response_texts(slack, k)), timeout=60)


@pytest.fixture
def requesters(slack):
    for i in range(40):
        slack.add_user(f"UREQ{i:04d}", f"req{i}")


def test_three_replicas_revoke_each_room_once(start_bot, postgres_url, slack, ams, requesters):
    replicas = [start_bot(postgres_url, MEETBOT_SWEEP_INTERVAL="1") for _ in range(3)]
    # Spread the commands over the replicas as a load balancer would.
    n = 12
    for i in range(n):
        sender = sender_for(replicas[i % 3], slack)
        r = sender.command(f"room{i} <@{BOB}>", user_id=f"UREQ{i:04d}")
        assert r.status_code == 200
    wait_for(
        lambda: len([r for r in db_rows(postgres_url, "rooms") if r["state"] == "active"]) == n,
        timeout=30,
    )
    # Every card and DM out before the rooms end: a DM still queued when its
    # room ends is never sent (rightly), so there would be nothing to edit.
    wait_for(lambda: all(r["channel_ts"] for r in db_rows(postgres_url, "rooms")), timeout=60)
    wait_for(lambda: all(g["dm_ts"] for g in db_rows(postgres_url, "grants")), timeout=60)
    assert len(db_rows(postgres_url, "grants")) == 2 * n
    ams.latency = 0.05  # make the sweeps overlap
    db_exec(postgres_url, "UPDATE rooms SET expires_at = :t", t=int(time.time()) - 1)
    wait_for(
        lambda: all(r["state"] == "revoked" for r in db_rows(postgres_url, "rooms")), timeout=30
    )

    # One "ended" edit of each channel card, one per DM (owner and BOB).
    def updates():
        return Counter(
            (c.args["channel"], c.args["ts"]) for c in slack.calls_to("chat.update") if c.ok
        )

    # Poll gently: each look copies every recorded call under the double's lock.
    wait_for(lambda: len(updates()) == 3 * n, timeout=60, interval=1.0)
    sweep_more(*replicas, n=2)  # more sweeps on every replica: still nothing twice
    settled(postgres_url)
    assert set(updates().values()) == {1}
    assert rooms_on_ams(ams) == []
    per_room = deletes_per_room(ams)
    assert len(per_room) == n and set(per_room.values()) == {1}, per_room
    revokes = [a for a in db_rows(postgres_url, "audit") if a["action"] == "revoke"]
    assert len(revokes) == n


def test_a_replica_killed_mid_sweep_loses_and_doubles_nothing(
    start_bot, postgres_url, slack, ams, requesters
):
    # AMS_TIMEOUT=1 s in tests gives an 18 s lease: the survivor takes over then.
    victim = start_bot(postgres_url, MEETBOT_SWEEP_INTERVAL="1", MEETBOT_AMS_CONCURRENCY="1")
    sender = sender_for(victim, slack)
    n = 8
    open_rooms(sender, slack, n)
    wait_for(lambda: all(r["channel_ts"] for r in db_rows(postgres_url, "rooms")), timeout=60)
    ams.latency = 0.4  # one room takes ~0.8 s to revoke: the kill lands mid-sweep
    db_exec(postgres_url, "UPDATE rooms SET expires_at = :t", t=int(time.time()) - 1)
    wait_for(
        lambda: any(r["state"] == "revoked" for r in db_rows(postgres_url, "rooms")), timeout=15
    )
    victim.kill()
    states = Counter(r["state"] for r in db_rows(postgres_url, "rooms"))
    assert states["active"] > 0, "the kill came too late to test a takeover"
    survivor = start_bot(postgres_url, MEETBOT_SWEEP_INTERVAL="1")
    assert survivor
    wait_for(
        lambda: all(r["state"] == "revoked" for r in db_rows(postgres_url, "rooms")), timeout=45
    )
    assert rooms_on_ams(ams) == []
    revokes = Counter(
        a["room_id"] for a in db_rows(postgres_url, "audit") if a["action"] == "revoke"
    )
    assert len(revokes) == n and set(revokes.values()) == {1}
    # Every person's DM ends up saying the room ended, exactly once.
    wait_for(lambda: all("has ended" in str(slack.dms_to(u)) for u in [BOB]), timeout=15)
    ended_edits = Counter(
        (c.args["channel"], c.args["ts"])
        for c in slack.calls_to("chat.update")
        if c.ok and "has ended" in str(c.args.get("text"))
    )
    assert set(ended_edits.values()) == {1}


def test_scenario_on_postgresql(start_bot, postgres_url, slack, ams):
    bot = start_bot(postgres_url)
    sender = sender_for(bot, slack)
    r = sender.command(f"standup <@{BOB}>", user_id=ALICE)
    wait_for(lambda: dm_links(slack, ALICE) and dm_links(slack, BOB))
    wait_for(lambda: any("is open" in t for t in response_texts(slack, r.response_key)))
    (room,) = db_rows(postgres_url, "rooms")
    assert room["state"] == "active" and len(rooms_on_ams(ams)) == 1
    r = sender.command(f"end {room['id']}", user_id=ALICE)
    wait_for(lambda: db_rows(postgres_url, "rooms")[0]["state"] == "revoked")
    assert rooms_on_ams(ams) == []
