"""The ams_streams table on SQLite and PostgreSQL: who publishes what, and hooks in order.

The upserts here are dialect-specific (``ON CONFLICT … DO UPDATE … WHERE``,
``UPDATE … RETURNING``), so each rule is checked on both databases.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bot.rooms.streams import Streams
from bot.store import Grant, Room, RoomState, Store
from tests.conftest import ALICE, BOB, TEAM


@pytest.fixture
def streams(db_url: str) -> Iterator[Streams]:
    store = Store(db_url)
    store.migrate()
    t = int(time.time())
    with store.write() as tx:
        for room_id in ("room-1", "room-2"):
            tx.add(
                Room(
                    id=room_id,
                    team_id=TEAM,
                    owner_id=ALICE,
                    channel_id="C1",
                    topic=room_id,
                    state=RoomState.ACTIVE,
                    created_at=t,
                    expires_at=t + 600,
                    attempts=0,
                    next_attempt_at=0,
                )
            )
        tx.flush()
        for i, (room_id, user) in enumerate(
            (("room-1", ALICE), ("room-1", BOB), ("room-2", ALICE))
        ):
            tx.add(
                Grant(
                    id=i + 1,
                    room_id=room_id,
                    team_id=TEAM,
                    user_id=user,
                    jti=f"jti-{i}",
                    exp=t + 900,
                    created_at=t,
                )
            )
    yield Streams(store)
    store.dispose()


def test_a_stream_id_belongs_to_its_first_publisher(streams: Streams) -> None:
    record = streams.record_publish
    assert record("alice_0123456789", room_id="room-1", user_id=ALICE, grant_id=1, at=1)
    assert record("alice_0123456789", room_id="room-1", user_id=ALICE, grant_id=1, at=2)
    assert record(
        "alice_0123456789_presentation", room_id="room-1", user_id=ALICE, grant_id=1, at=3
    )
    # Bob reusing Alice's id, and Alice's id in another room: refused, nothing changed.
    assert not record("alice_0123456789", room_id="room-1", user_id=BOB, grant_id=2, at=4)
    assert not record("alice_0123456789", room_id="room-2", user_id=ALICE, grant_id=3, at=5)
    assert streams.of_grant(1) == ["alice_0123456789", "alice_0123456789_presentation"]
    assert streams.of_grant(2) == [] and streams.of_grant(3) == []
    assert streams.of_rooms(["room-1", "room-2"]) == {
        "room-1": ["alice_0123456789", "alice_0123456789_presentation"]
    }


def test_hook_events_apply_only_when_newer(streams: Streams) -> None:
    streams.record_publish("bob_0123456789", room_id="room-1", user_id=BOB, grant_id=2, at=1)

    def event(ts: int | None, live: bool) -> tuple[str, str] | None:
        return streams.hook_event("bob_0123456789", room_hint="room-1", timestamp=ts, live=live)

    assert event(2000, False) == ("room-1", BOB)  # ended arrives first
    assert event(1000, True) is None  # its started, older: dropped
    assert event(2000, True) is None  # the same millisecond: the first one stays
    assert not streams.is_live("room-1", BOB) and streams.of_grant(2) == []
    assert event(3000, True) == ("room-1", BOB)  # a reconnect
    assert streams.is_live("room-1", BOB) and streams.of_grant(2) == ["bob_0123456789"]
    assert event(None, False) == ("room-1", BOB)  # no timestamp: nothing to order by
    assert not streams.is_live("room-1", BOB)


def test_hooks_for_streams_nobody_recorded(streams: Streams) -> None:
    def named(stream_id: str, room_hint: str | None) -> tuple[str, str] | None:
        return (room_hint, stream_id.split("_")[0]) if room_hint else None

    # Not recorded and not nameable: ignored.
    assert streams.hook_event("x_1", room_hint="room-1", timestamp=1, live=True) is None
    # Named (a Slack Call's participant id): taken in, in order from then on.
    got = streams.hook_event(
        "UCAROL01_1", room_hint="room-1", timestamp=5, live=True, identify=named
    )
    assert got == ("room-1", "UCAROL01") and streams.is_live("room-1", "UCAROL01")
    again = streams.hook_event(
        "UCAROL01_1", room_hint="room-1", timestamp=4, live=False, identify=named
    )
    assert again is None and streams.is_live("room-1", "UCAROL01")
    # A room that is not ours: the foreign key refuses it.
    assert (
        streams.hook_event(
            "UDAVE001_1", room_hint="not-ours", timestamp=1, live=True, identify=named
        )
        is None
    )
