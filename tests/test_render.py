"""``Links.render_many``: a room's invitations rendered from one read say what
``Links.render`` would say of each, row by row, including "nothing to send"."""

from __future__ import annotations

import json
import re
import time

import jwt
import pytest

from bot.ams.stream_secret import StaticSecret
from bot.config import Settings
from bot.rooms.links import Links
from bot.store import Grant, Outbox, Room, RoomState, Store
from tests.conftest import ALICE, BOB, CAROL, STREAM_SECRET
from tests.helpers import pending_row, write_transactions

TOKEN_RE = re.compile(r"token=([A-Za-z0-9_.-]+)")


@pytest.fixture
def links(sqlite_url):
    store = Store(sqlite_url)
    store.migrate()
    settings = Settings(
        ams_url="https://ams.example.com:5443",
        slack_bot_token="xoxb-test",
        ams_jwt_secret=STREAM_SECRET,
        database_url=sqlite_url,
    )
    yield Links(settings, store, StaticSecret(STREAM_SECRET))
    store.dispose()


def _room(store: Store, room_id: str, people: list[str], *, state=RoomState.ACTIVE, revoked=()):
    """A room with a grant per person and a DM row each, plus its card; the rows."""
    t = int(time.time())
    with store.write() as tx:
        tx.add(
            Room(
                id=room_id,
                team_id="T0001",
                owner_id=people[0],
                channel_id="C0001",
                topic=f"topic of {room_id}",
                state=state,
                created_at=t,
                expires_at=t + 3600,
                attempts=0,
                next_attempt_at=0,
            )
        )
        tx.flush()  # the room before its grants (their foreign key)
        grants = [
            Grant(
                room_id=room_id,
                team_id="T0001",
                user_id=u,
                display_name=u.lower(),
                jti=f"jti-{room_id}-{u}",
                exp=t + 3700,
                created_at=t,
                revoked_at=t if u in revoked else None,
            )
            for u in people
        ]
        tx.add_all(grants)
        tx.flush()
        rows = [_row(room_id, "dm_link", g.user_id, grant_id=g.id) for g in grants]
        rows.append(_row(room_id, "room_card", "C0001"))
        tx.add_all(rows)
        tx.flush()
        tx.expunge_all()
    return rows


def _row(room_id: str, kind: str, channel: str, **kw) -> Outbox:
    return pending_row(channel, kind, room_id=room_id, **kw)


def _without_tokens(rendered):
    if rendered is None:
        return None
    return TOKEN_RE.sub("token=T", json.dumps([rendered.text, rendered.blocks], sort_keys=True))


def test_render_many_says_of_each_row_what_render_says(links):
    open_rows = _room(links.store, "roomopen0001", [ALICE, BOB, CAROL], revoked=[CAROL])
    ended_rows = _room(links.store, "roomended001", [BOB], state=RoomState.REVOKED)
    gone = _row("roomnowhere1", "room_card", "C0001")
    rows = [*open_rows, *ended_rows, gone]

    many = links.render_many(rows)
    one = [links.render(r) for r in rows]

    assert [_without_tokens(m) for m in many] == [_without_tokens(o) for o in one]
    # Alice's and Bob's DMs, the open room's card, the ended room's card; Carol's
    # revoked grant, the ended room's DM and the unknown room: nothing to send.
    assert [m is not None for m in many] == [True, True, False, True, False, True, False]
    for user, rendered in zip((ALICE, BOB), many, strict=False):
        (token,) = TOKEN_RE.findall(json.dumps(rendered.blocks))
        claims = jwt.decode(
            token, STREAM_SECRET, algorithms=["HS256"], options={"verify_aud": False}
        )
        assert claims["jti"] == f"jti-roomopen0001-{user}"
        assert "roomopen0001" in json.dumps(rendered.blocks)
    assert many[0].metadata["event_payload"]["outbox_id"] == rows[0].id


def test_the_first_render_of_a_room_s_click_time_links_records_their_hashes_in_one_write(
    sqlite_url,
):
    """With MEETBOT_PUBLIC_URL each DM carries ``/join/<id>`` and the database keeps
    sha256(id) to find its grant. A room's DMs rendered together record those hashes
    in one transaction, not one each; every link then finds its own grant."""
    from sqlalchemy import select

    from bot.rooms.links import derive_key, link_hash, lookup

    store = Store(sqlite_url)
    store.migrate()
    settings = Settings(
        ams_url="https://ams.example.com:5443",
        slack_bot_token="xoxb-test",
        slack_signing_secret="signing-secret",
        ams_jwt_secret=STREAM_SECRET,
        database_url=sqlite_url,
        public_url="https://meet.example.com",
    )
    links = Links(settings, store, StaticSecret(STREAM_SECRET))
    rows = _room(store, "roompublic01", [ALICE, BOB, CAROL], revoked=[CAROL])
    with write_transactions(store) as writes:
        rendered = links.render_many(rows)
        again = links.render_many(rows)  # hashes recorded: nothing more to write
    assert len(writes) == 1
    assert [_without_tokens(r) for r in again] == [_without_tokens(r) for r in rendered]
    ids = [
        re.search(r"/join/([A-Za-z0-9_-]{43})", json.dumps(r.blocks)).group(1) for r in rendered[:2]
    ]
    for user, link_id in zip((ALICE, BOB), ids, strict=True):
        grant, room = lookup(store, derive_key(settings), link_id)
        assert (grant.user_id, room.id) == (user, "roompublic01")
    with store.read() as s:
        hashes = dict(s.execute(select(Grant.user_id, Grant.link_hash)).all())
    assert hashes == {ALICE: link_hash(ids[0]), BOB: link_hash(ids[1]), CAROL: None}
    store.dispose()
