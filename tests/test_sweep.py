"""The expiry sweep in-process: AMS threads only call AMS, revokes are recorded in bulk.

A room is marked revoked only once AMS confirmed it gone; one AMS refused
stays due with its backoff; each revoked room gets one audit row, its grants
revoked and the edits it owes; the App Home hook hears everyone involved.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from bot.ams.client import AmsClient
from bot.ams.marker import ams_marker
from bot.ams.stream_secret import StaticSecret
from bot.config import Settings
from bot.rooms.links import Links
from bot.rooms.service import Rooms
from bot.rooms.sweep import Sweep
from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble
from bot.slack.gateway import SlackGateway
from bot.slack.outbox import OutboxWorker
from bot.slack.pacing import Pacer
from bot.store import Audit, Grant, Outbox, Room, RoomState, Store
from tests.conftest import BOT_TOKEN, STREAM_SECRET, TEAM

N_ROOMS = 12
FAILING = 2  # rooms whose delete AMS keeps refusing


class EndedCalls:
    """Stands in for Slack Calls: records which rooms' Calls the revoke ended."""

    def __init__(self, ended: list[str]) -> None:
        self.ended = ended

    def room_ended(self, room: Room) -> None:
        self.ended.append(room.id)


@pytest.fixture
def rooms(sqlite_url: str, ams: AmsDouble, slack: SlackDouble) -> Iterator[Rooms]:
    settings = Settings(
        ams_url=ams.url,
        slack_bot_token=BOT_TOKEN,
        slack_api_url=slack.api_url,
        ams_jwt_secret=STREAM_SECRET,
        database_url=sqlite_url,
        ams_concurrency=2,
        ams_timeout=2.0,
    )
    store = Store(sqlite_url)
    store.migrate()
    client = AmsClient(ams.url, "Conference", timeout=(1.0, 2.0), retries=1, backoff=0.01)
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    links = Links(settings, store, StaticSecret("x"))
    outbox = OutboxWorker(
        store, gateway, links, Pacer(store, cap=(600, 60)), workers=1
    )  # never started: rows stay
    r = Rooms(settings, store, client, gateway, StaticSecret("x"), links, outbox, owner="sweeper")
    yield r
    r.close()
    client.close()
    store.dispose()


def seed(rooms: Rooms, ams: AmsDouble) -> list[str]:
    """``N_ROOMS`` expired rooms on AMS and in the database, two people each.

    Even rooms have a channel card and a DM to edit; odd ones never got theirs out.
    """
    t = int(time.time())
    ids = [f"sweeproom{i:02d}" for i in range(N_ROOMS)]
    for room_id in ids:
        AmsClient(ams.url, "Conference").create_room(
            room_id, room_id, t - 600, t - 1, metadata=ams_marker(TEAM, rooms.deployment())
        )
    with rooms.store.write() as tx:
        for i, room_id in enumerate(ids):
            owner = f"UOWNER{i % 4:04d}"  # four owners, three rooms each
            sent = i % 2 == 0
            tx.add(
                Room(
                    id=room_id,
                    team_id=TEAM,
                    owner_id=owner,
                    channel_id="C0SWEEP",
                    topic=room_id,
                    state=RoomState.ACTIVE,
                    created_at=t - 600,
                    expires_at=t - 1,
                    channel_ts="1.0001" if sent else None,
                    attempts=0,
                    next_attempt_at=0,
                )
            )
            tx.flush()
            for user in (owner, f"UGUEST{i:04d}"):
                tx.add(
                    Grant(
                        room_id=room_id,
                        team_id=TEAM,
                        user_id=user,
                        jti=f"jti-{room_id}-{user}",
                        exp=t + 300,
                        dm_channel="D" + user if sent else None,
                        dm_ts="2.0001" if sent else None,
                        created_at=t - 600,
                    )
                )
    return ids


def test_sweep_records_confirmed_revokes_in_bulk_and_backs_off_refusals(
    rooms: Rooms, ams: AmsDouble
) -> None:
    ids = seed(rooms, ams)
    refused = ids[:FAILING]
    for room_id in refused:  # the delete and its one retry
        ams.fail_next(2, status=500, path_regex=f"/broadcasts/{room_id}$")
    changes: list[tuple[str, list[str]]] = []
    ended: list[str] = []
    rooms.on_change = lambda team, users, org=None: changes.append((team, users))
    rooms.calls = EndedCalls(ended)
    ams.clear_requests()

    assert Sweep(rooms).expired_rooms() == N_ROOMS - FAILING

    store = rooms.store
    with store.read() as s:
        by_id = {r.id: r for r in s.scalars(select(Room))}
        grants = list(s.scalars(select(Grant)))
        audits = list(s.scalars(select(Audit).where(Audit.action == "revoke")))
        outbox = list(s.scalars(select(Outbox)))
    revoked = [i for i in ids if i not in refused]
    for room_id in revoked:
        room = by_id[room_id]
        assert room.state == RoomState.REVOKED and room.end_reason == "time is up"
        assert room.lease_owner is None and room.lease_until is None
    for room_id in refused:  # stays due, with a backoff and no lease
        room = by_id[room_id]
        assert room.state == RoomState.ACTIVE and room.attempts == 1
        assert room.next_attempt_at > time.time() and room.lease_owner is None
    assert all((g.revoked_at is None) == (g.room_id in refused) for g in grants)
    assert Counter(a.room_id for a in audits) == Counter(revoked)
    edits = Counter((o.kind, o.room_id) for o in outbox)
    for i, room_id in enumerate(ids):
        sent = i % 2 == 0 and room_id in revoked
        assert edits[("dm_update", room_id)] == (2 if sent else 0)
        assert edits[("card_update", room_id)] == (1 if sent else 0)
    # Stop and delete once per revoked room; nothing recorded before AMS confirmed.
    deletes = Counter(
        r.path.rsplit("/", 1)[1]
        for r in ams.requests
        if r.method == "DELETE" and r.path.rsplit("/", 1)[1] in revoked
    )
    assert set(deletes) == set(revoked) and set(deletes.values()) == {1}
    assert sorted(ended) == sorted(revoked)
    # The App Home hook: everyone involved, in far fewer calls than rooms.
    told = {u for team, users in changes for u in users if team == TEAM}
    people = {g.user_id for g in grants if g.room_id in revoked}
    assert told == people
    assert len(changes) < len(revoked)

    # The refused rooms wait for their backoff: a sweep right now takes nothing.
    assert Sweep(rooms).expired_rooms() == 0


def test_a_room_already_revoked_is_not_recorded_again(rooms: Rooms, ams: AmsDouble) -> None:
    ids = seed(rooms, ams)
    assert [r.id for r in rooms.record_revoked(ids[:3], actor="x", reason="first")] == ids[:3]
    assert rooms.record_revoked(ids[:4], actor="x", reason="second")[0].id == ids[3]
    with rooms.store.read() as s:
        audits = Counter(
            a.room_id for a in s.scalars(select(Audit).where(Audit.action == "revoke"))
        )
    assert audits == Counter(ids[:4])


def test_sweep_takes_a_persons_rooms_that_end_together_in_one_claim(
    rooms: Rooms, ams: AmsDouble
) -> None:
    seed(rooms, ams)
    claimed = rooms.store.claim_due_rooms("me", at=int(time.time()), lease=60, limit=6)
    owners = [r.owner_id for r in claimed]
    assert owners == sorted(owners) and len(set(owners)) == 2


def test_an_end_ams_does_not_confirm_stays_due_refuses_links_and_is_finished_later(
    rooms: Rooms, ams: AmsDouble
) -> None:
    """/meet end while AMS cannot say how many are still connected: nothing is
    deleted behind connected people, the room becomes due now (the sweep keeps
    trying), and AMS's checks refuse its links meanwhile."""
    import jwt

    from bot.rooms.access import PLAY, PUBLISH, Access
    from bot.tokens import mint_join_token

    ids = seed(rooms, ams)
    room_id = ids[0]
    t = int(time.time())
    with rooms.store.write() as tx:  # a room still running for an hour
        tx.get(Room, room_id).expires_at = t + 3600
    live = jwt.encode({"streamId": room_id, "type": "publish", "exp": t + 600}, STREAM_SECRET)
    for person in ("alice_0123456789", "bob_0123456789"):
        assert ams.join(room_id, live, person)
    ams.fail_next(20, status=500, path_regex=f"/broadcasts/{room_id}/active-subtracks-count$")

    assert rooms.revoke(room_id, actor="UOWNER0000", reason="ended") is False
    room = rooms.store.room(room_id)
    assert room.state == RoomState.ACTIVE and room.attempts == 1 and room.lease_owner is None
    assert room.expires_at <= int(time.time()) < room.next_attempt_at
    assert room_id in ams.broadcasts  # never deleted while AMS could not confirm
    grant = rooms.store.grants_of(room_id)[0]
    secret = "a-stream-secret-for-this-check-0123456789"
    token = mint_join_token(
        room_id=room_id, user_id=grant.user_id, exp=grant.exp, jti=grant.jti, secret=secret
    )
    access = Access(rooms.store, StaticSecret(secret), rooms.streams)
    for kind, stream in ((PUBLISH, "someone_0123456789"), (PLAY, room_id)):
        decision = access.check(kind, stream, token)
        assert not decision.allowed and decision.reason == "room has ended"

    # Its backoff over, the sweep finishes it: everyone out, then the delete.
    ams.clear_faults()
    with rooms.store.write() as tx:
        tx.get(Room, room_id).next_attempt_at = 0
    assert Sweep(rooms).expired_rooms() >= 1
    assert ams.connected(room_id) == [] and room_id not in ams.broadcasts
    assert rooms.store.room(room_id).state == RoomState.REVOKED
