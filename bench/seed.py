"""Rows written straight into the bot's database, and rooms straight onto the AMS double.

Used to set up the sweep and footprint benchmarks at sizes that would take
far too long to reach through Slack. Only the columns the bot's models
declare are written; everything else keeps its default, so a new nullable
column never breaks the set-up.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
import sqlalchemy as sa

from bench.harness import TEAM, BenchFailure
from bot.ams.marker import ams_marker
from bot.sim.ams import AmsDouble
from bot.store import Grant, Room, RoomState

CHUNK = 5000


def room_row(
    room_id: str, owner: str, *, created: int, expires: int, state: str = RoomState.ACTIVE
) -> dict[str, Any]:
    return {
        "id": room_id,
        "team_id": TEAM,
        "owner_id": owner,
        "channel_id": "C" + owner[1:],
        "topic": f"bench room {room_id[:6]}",
        "state": state,
        "created_at": created,
        "expires_at": expires,
        "ended_at": expires if state == RoomState.REVOKED else None,
        "attempts": 0,
        "next_attempt_at": 0,
    }


def grant_row(
    room_id: str, user: str, *, exp: int, created: int, revoked: int | None = None
) -> dict[str, Any]:
    return {
        "room_id": room_id,
        "team_id": TEAM,
        "user_id": user,
        "display_name": user.lower(),
        "jti": secrets.token_urlsafe(16),
        "exp": exp,
        "created_at": created,
        "revoked_at": revoked,
    }


def insert(url: str, rooms: Sequence[dict[str, Any]], grants: Sequence[dict[str, Any]]) -> None:
    """Insert in one transaction (rooms first, for the grants' foreign key)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            for table, rows in ((Room.__table__, rooms), (Grant.__table__, grants)):
                for i in range(0, len(rows), CHUNK):
                    c.execute(table.insert(), list(rows[i : i + CHUNK]))
    finally:
        engine.dispose()


def rooms_on_ams(
    ams: AmsDouble, room_ids: Iterable[str], deployment: str, *, threads: int = 8
) -> None:
    """Create each room on the double through its REST API, as the bot (the deployment
    whose database holds ``deployment``) would have."""
    url = f"{ams.url}{ams.rest_base}/broadcasts/create"
    marker = ams_marker(TEAM, deployment)
    sessions: dict[int, requests.Session] = {}

    def create(room_id: str) -> int:
        import threading

        session = sessions.setdefault(threading.get_ident(), requests.Session())
        body = {"streamId": room_id, "name": room_id, "type": "liveStream", "metaData": marker}
        return session.post(url, json=body, timeout=10).status_code

    with ThreadPoolExecutor(threads) as pool:
        codes = list(pool.map(create, room_ids))
    for s in sessions.values():
        s.close()
    bad = [c for c in codes if c != 200]
    if bad:
        raise BenchFailure(f"{len(bad)} rooms could not be created on the AMS double: {bad[:3]}")
