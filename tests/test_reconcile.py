"""Reconciliation that cannot destroy: only this deployment's rooms, only on proof.

Two meetbots (staging and production) may share one AMS application, each
with its own database. AMS's list is no proof that a room is gone: a datastore
error answers ``200 []``, and offset paging shifts while participants come and
go. Even ``GET /broadcasts/{id}`` answers 404 for a room that exists when its
datastore read fails. The scenarios run against the AMS double, which does
all of that.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.ams.client import AmsClient
from bot.ams.marker import ams_marker, is_ours, marker_of
from bot.ams.reconcile import CONFIRM_AFTER_S, MIN_AGE_S, reconcile
from bot.sim.ams import AmsDouble
from bot.store import Room, RoomState, Store
from tests.conftest import ALICE, BOB, STREAM_SECRET, TEAM, sender_for, wait_for
from tests.helpers import db_rows, response_texts, rooms_on_ams

LEGACY = '{"meetbot":1,"team":"T0001"}'  # a marker from before deployments had an id


# -- two deployments, two processes ---------------------------------------------------------
def passes(url: str) -> int:
    """The reconciliation's last run (unix seconds) as this deployment's database holds it."""
    rows = [j for j in db_rows(url, "jobs") if j["name"] == "reconcile_ams"]
    return (rows[0]["last_run_at"] or 0) if rows else 0


def wait_passes(url: str, n: int = 2) -> None:
    """Wait until ``n`` more reconciliation passes have finished (interval 1 s)."""
    for _ in range(n):
        seen = passes(url)
        wait_for(lambda seen=seen: passes(url) > seen, timeout=20)


def open_room(bot, slack, user=ALICE) -> str:
    before = {r["id"] for r in db_rows(bot.env["DATABASE_URL"], "rooms")}
    r = sender_for(bot, slack).command(f"sync <@{BOB}>", user_id=user)
    assert r.status_code == 200, r.text
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    (room,) = [x for x in db_rows(bot.env["DATABASE_URL"], "rooms") if x["id"] not in before]
    return room["id"]


def test_two_deployments_on_one_ams_app_never_touch_each_others_rooms(
    start_bot, slack, ams, tmp_path
):
    fast = dict(MEETBOT_SWEEP_INTERVAL="1", MEETBOT_RECONCILE_INTERVAL="1")
    staging = start_bot(f"sqlite:///{tmp_path / 'staging.db'}", **fast)
    production = start_bot(f"sqlite:///{tmp_path / 'production.db'}", **fast)
    urls = {b: b.env["DATABASE_URL"] for b in (staging, production)}
    ids = {b: Store(urls[b]).deployment_id(create=False) for b in (staging, production)}
    assert ids[staging] and ids[production] and ids[staging] != ids[production]

    live = {b: open_room(b, slack) for b in (staging, production)}
    # A stray of each (made by it, unknown to its database), and an old-marker room.
    client = AmsClient(ams.url, "Conference")
    for b, name in ((staging, "staging-stray"), (production, "production-stray")):
        client.create_room(name, name, 0, 0, metadata=ams_marker(TEAM, ids[b]))
    client.create_room("legacy-room", "old", 0, 0, metadata=LEGACY)

    wait_for(lambda: not {"staging-stray", "production-stray"} & set(ams.broadcasts))
    for b in (staging, production):
        wait_passes(urls[b])
    for b, other in ((staging, production), (production, staging)):
        deleted = [
            a["room_id"] for a in db_rows(urls[b], "audit") if a["action"].startswith("reconcile")
        ]
        assert deleted == [f"{'staging' if b is staging else 'production'}-stray"]
        assert {r["id"]: r["state"] for r in db_rows(urls[b], "rooms")} == {live[b]: "active"}
    assert {live[staging], live[production], "legacy-room"} <= set(ams.broadcasts)
    # The old-marker room is left alone, and said once, however many passes ran.
    for b in (staging, production):
        assert b.log().count("without a deployment id") == 1
    # And ending one deployment's room is still that deployment's own business.
    assert "Ended" in _command(staging, slack, f"end {live[staging]}")
    assert live[staging] not in ams.broadcasts and live[production] in ams.broadcasts
    time.sleep(0.3)


def _command(bot, slack, text):
    r = sender_for(bot, slack).command(text, user_id=ALICE)
    assert r.status_code == 200
    (reply,) = slack.wait_for_responses(r.response_key)
    return reply["text"]


# -- what AMS's list and GET can prove -------------------------------------------------------
class ShiftingClient(AmsClient):
    """An AmsClient that lets the test act between two pages of AMS's list."""

    def __init__(self, *args: Any, between_pages: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.between_pages = between_pages

    def _list(self, offset: int, size: int) -> list[dict[str, Any]]:
        page = super()._list(offset, size)
        if offset == 0:
            self.between_pages()
        return page


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    s = Store(sqlite_url)
    s.migrate()
    yield s
    s.dispose()


def seed(store: Store, client: AmsClient, ids: list[str], now: int) -> None:
    """Active rooms, old enough to be checked, on AMS with this deployment's marker."""
    marker = ams_marker(TEAM, store.deployment_id() or "")
    for room_id in ids:
        client.create_room(room_id, room_id, now - 600, now + 3600, metadata=marker)
    with store.write() as tx:
        for room_id in ids:
            tx.add(
                Room(
                    id=room_id,
                    team_id=TEAM,
                    owner_id=ALICE,
                    channel_id="C1",
                    topic=room_id,
                    state=RoomState.ACTIVE,
                    created_at=now - MIN_AGE_S - 600,
                    expires_at=now + 3600,
                    attempts=0,
                    next_attempt_at=0,
                )
            )


def gets(ams: AmsDouble) -> int:
    return ams.count("GET", r"^/Conference/rest/v2/broadcasts/(?!list/)[^/]+$")


def test_an_empty_list_from_a_datastore_fault_ends_no_meeting(store: Store, ams: AmsDouble):
    now = int(time.time())
    ended: list[str] = []
    with AmsClient(ams.url, "Conference") as client:
        seed(store, client, ["room-a", "room-b"], now)
        ams.datastore_fault(1, reads=("list",))
        out = reconcile(store, client, lambda r: ended.append(r) or True, now=now)
    assert ended == [] and out.vanished == [] and out.suspected == []
    assert gets(ams) == 2  # each room missing from the list was asked about by id: 200
    assert {r["id"]: r["state"] for r in db_rows(store.url, "rooms")} == {
        "room-a": "active",
        "room-b": "active",
    }


def test_a_list_that_shifts_under_participants_ends_no_meeting(store: Store, ams: AmsDouble):
    """Ten people leave between two pages: their records go, the offset skips the
    ten rooms that moved into the first page's place. Those rooms are asked about."""
    import jwt

    now = int(time.time())
    first = [f"a-room-{i:03d}" for i in range(10)]
    later = [f"b-room-{i:03d}" for i in range(240)]
    ended: list[str] = []
    with AmsClient(ams.url, "Conference") as plain:
        seed(store, plain, first, now)
        token = jwt.encode(
            {"streamId": first[0], "type": "publish", "exp": now + 600}, STREAM_SECRET
        )
        people = [f"person{i}_0123456789" for i in range(10)]
        for person in people:
            assert ams.join(first[0], token, person)
        seed(store, plain, later, now)

    def leave() -> None:
        for person in people:
            assert ams.leave(first[0], person)

    with ShiftingClient(ams.url, "Conference", between_pages=leave) as client:
        out = reconcile(store, client, lambda r: ended.append(r) or True, now=now)
    assert ended == [] and out.vanished == []
    assert gets(ams) == 10  # exactly the ten the shift hid, and each answered 200
    assert len(later) + len(first) == len(rooms_on_ams(ams))
    states = {r["state"] for r in db_rows(store.url, "rooms")}
    assert states == {"active"}


def test_one_404_is_not_proof_a_second_one_later_is(store: Store, ams: AmsDouble):
    now = int(time.time())
    ended: list[str] = []

    def vanished(room_id: str) -> bool:
        ended.append(room_id)
        return True

    with AmsClient(ams.url, "Conference") as client:
        seed(store, client, ["room-a"], now)
        # The list and the room's own GET both fail inside AMS: 200 [] and 404.
        ams.datastore_fault(1, reads=("list", "get"))
        out = reconcile(store, client, vanished, now=now)
        assert out.suspected == ["room-a"] and ended == []
        # The next pass sees it again: the note is cleared.
        out = reconcile(store, client, vanished, now=now + CONFIRM_AFTER_S)
        assert not out and ended == []
        assert db_rows(store.url, "rooms")[0]["ams_missing_since"] is None
        # Another faulty 404 later starts from scratch: still no end.
        ams.datastore_fault(1, reads=("list", "get"))
        out = reconcile(store, client, vanished, now=now + 2 * CONFIRM_AFTER_S)
        assert out.suspected == ["room-a"] and ended == []

        # Really gone (an operator deleted it): 404, then 404 again a pass later.
        client.delete_room("room-a")
        out = reconcile(store, client, vanished, now=now + 2 * CONFIRM_AFTER_S + 1)
        assert ended == []  # too soon after the first 404 to count as a second pass
        out = reconcile(store, client, vanished, now=now + 3 * CONFIRM_AFTER_S)
        assert out.vanished == ["room-a"] and ended == ["room-a"]


def test_strays_are_only_this_deployments_and_never_participants(
    store: Store, ams: AmsDouble, caplog: pytest.LogCaptureFixture
):
    now = int(time.time())
    mine = ams_marker(TEAM, store.deployment_id() or "")
    theirs = ams_marker(TEAM, "another-deployment")
    with AmsClient(ams.url, "Conference") as client:
        client.create_room("my-stray", "x", 0, 0, metadata=mine)
        client.create_room("their-room", "x", 0, 0, metadata=theirs)
        client.create_room("old-room", "x", 0, 0, metadata=LEGACY)
        client.create_room("not-meetbot", "x", 0, 0)
        caplog.set_level(logging.WARNING, "meetbot.reconcile")
        removed: list[str] = []
        out = reconcile(store, client, lambda r: False, now=now, remove=lambda r: removed.append(r))
        assert removed == out.deleted == ["my-stray"]
        reconcile(store, client, lambda r: False, now=now, remove=lambda r: removed.append(r))
    legacy_lines = [r for r in caplog.records if "without a deployment id" in r.getMessage()]
    assert len(legacy_lines) == 1 and "old-room" in legacy_lines[0].getMessage()
    # A participant's stream is never a room, whatever metadata it carries.
    participant = {"streamId": "p_1", "mainTrackStreamId": "room", "metaData": mine}
    assert marker_of(participant) is None and not is_ours(participant, store.deployment_id())
    assert is_ours({"streamId": "r", "metaData": mine}, store.deployment_id() or "")
    assert not is_ours({"streamId": "r", "metaData": LEGACY}, store.deployment_id() or "")


def test_the_deployment_id_is_made_once_whoever_asks_first(db_url: str):
    first, second = Store(db_url), Store(db_url)
    try:
        first.migrate()
        made = first.deployment_id()
        second.migrate()  # a replica starting beside it
        assert second.deployment_id() == made and len(made or "") == 16
        assert Store(db_url).deployment_id(create=False) == made
        assert [r["key"] for r in db_rows(db_url, "meta")] == ["deployment"]
    finally:
        first.dispose()
        second.dispose()


def test_a_pass_reads_the_rooms_it_checks_together_not_one_by_one(
    store: Store, ams: AmsDouble, monkeypatch: pytest.MonkeyPatch
):
    """Every room AMS lists is checked against this database; with thousands of rooms,
    a read each was most of a pass's CPU. The pass reads their states in a few
    queries, and still leaves the open ones and ends the strays, as before."""
    import sqlalchemy as sa

    import bot.store

    monkeypatch.setattr(bot.store, "STATES_CHUNK", 4)  # several chunks from a few rooms
    now = int(time.time())
    mine = ams_marker(TEAM, store.deployment_id() or "")
    open_ids = [f"open-{i}" for i in range(6)]
    states = [RoomState.ACTIVE, RoomState.CREATING, RoomState.REVOKED, RoomState.FAILED]
    closed = {f"closed-{i}": states[2 + i % 2] for i in range(4)}
    with store.write() as tx:
        for i, room_id in enumerate([*open_ids, *closed]):
            tx.add(
                Room(
                    id=room_id,
                    team_id=TEAM,
                    owner_id=ALICE,
                    channel_id="C0RECON",
                    topic=room_id,
                    state=states[i % 2] if room_id in open_ids else closed[room_id],
                    created_at=now - 60,
                    expires_at=now + 600,
                    attempts=0,
                    next_attempt_at=0,
                )
            )
    strays = [f"stray-{i}" for i in range(3)]
    reads: list[bool] = []

    def on_begin(conn: Any) -> None:
        if not conn.get_execution_options().get("meetbot_write"):
            reads.append(True)

    with AmsClient(ams.url, "Conference") as client:
        for room_id in [*open_ids, *closed, *strays]:
            client.create_room(room_id, room_id, 0, 0, metadata=mine)
        removed: list[str] = []
        sa.event.listen(store.engine, "begin", on_begin)
        try:
            out = reconcile(store, client, lambda r: False, now=now, remove=removed.append)
        finally:
            sa.event.remove(store.engine, "begin", on_begin)
    assert sorted(removed) == sorted(out.deleted) == sorted([*closed, *strays])
    assert out.seen == 13
    # One read for the 13 rooms' states (four queries of at most four ids), one for
    # the rooms the database holds open that AMS did not list: not one per room.
    assert len(reads) <= 3, len(reads)
    audits = {a.room_id: a for a in store.audit_rows() if a.action == "reconcile_delete"}
    assert set(audits) == {*closed, *strays}
    detail = {r: json.loads(a.detail) for r, a in audits.items()}
    assert {r: (d["known"], d["state"]) for r, d in detail.items()} == {
        **{r: (True, state) for r, state in closed.items()},
        **{r: (False, None) for r in strays},
    }
