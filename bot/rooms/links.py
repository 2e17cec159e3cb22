"""Personal links: what goes into a DM, and the messages the outbox sends.

A personal link is either the Circle link itself, with a token minted at the
moment the message is rendered (``{AMS_URL}/{app}/{room}?token=…``), or, with
``MEETBOT_PUBLIC_URL``, a click-time link ``{MEETBOT_PUBLIC_URL}/join/<id>``
that mints the token only when clicked (``bot/web/join.py``).

Why click-time links: a Circle link carries a JWT that works for anyone who
holds it until its ``exp``. A DM, its push notification, an email digest or a
forwarded message would keep that token around. With ``MEETBOT_PUBLIC_URL``
set, the DM holds an opaque id instead, and the token is minted only when the
person clicks, with the *current* stream secret, for a grant that is still
valid at that moment.

The id must be renderable again (DMs are rendered at send time and re-rendered
on every edit) yet never stored in clear, so it is *derived*:
``base64url(HMAC-SHA256(key, room \\n user \\n jti))`` (256 bits, 43 characters),
where ``key`` comes from ``MEETBOT_SECRET_KEY`` or, without it,
``SLACK_SIGNING_SECRET``. Neither changes when the AMS stream secret rotates, so
links survive a rotation without editing a single DM. The database keeps only
``grants.link_hash = sha256(id)`` (indexed) to find the grant; a database dump
therefore yields no working link. Changing the key (setting
``MEETBOT_SECRET_KEY`` later, or regenerating Slack's signing secret) changes
every id: old DMs then show the "unknown link" page until they are re-rendered
or the person presses "Get my link".

Every message the outbox sends is rendered here, from the database as it is
at send time (:meth:`Links.render`), so a DM sent late still says the right
thing and a token exists only in memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, update

from bot.ams.stream_secret import SecretSource
from bot.config import Settings
from bot.slack import messages
from bot.slack.outbox import Rendered
from bot.store import Grant, Outbox, Room, RoomState, Store
from bot.tokens import ROOM_ID_RE, circle_link, mint_join_token

__all__ = [
    "JOIN_PREFIX",
    "Links",
    "derive_key",
    "join_id",
    "link_hash",
    "lookup",
    "parse_stream_id",
    "participant_stream_id",
]

log = logging.getLogger("meetbot.links")

JOIN_PREFIX = "/join/"
_KEY_LABEL = b"meetbot/join-link/v1"
_STREAM_LABEL = b"meetbot/call-stream/v1"
# base64url of a 32-byte HMAC, without padding: exactly 43 characters.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)
_USER_RE = re.compile(r"[UW][A-Z0-9]{1,31}", re.ASCII)
_SUFFIX_RE = re.compile(r"[0-9a-f]{24}", re.ASCII)
_warned_no_key = threading.Event()

# What rendering reads, built once: for a DM, building these two statements cost
# more than reading them (see ``bot.store._RECORD_OUTCOME``).
_ROOMS = select(Room).where(Room.id.in_(bindparam("ids", expanding=True)))
_GRANTS = select(Grant).where(Grant.id.in_(bindparam("ids", expanding=True)))
_SET_LINK_HASH = (
    update(Grant).where(Grant.id == bindparam("grant_id")).values(link_hash=bindparam("digest"))
)


# -- ids ----------------------------------------------------------------------
def derive_key(settings: Settings) -> bytes | None:
    """The HMAC key for link ids, or None when no stable secret is configured.

    Derived (not used raw) so the same operator secret is never used for two
    purposes with the same key: ``HMAC(secret, label)``. Deliberately *not*
    the AMS stream secret, which rotates.
    """
    base = settings.secret_key or settings.slack_signing_secret
    if not base:
        return None
    return hmac.new(base.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def join_id(key: bytes, grant: Grant) -> str:
    """The opaque id of one grant's link: 256 bits, bound to its room, user and jti."""
    msg = f"{grant.room_id}\n{grant.user_id}\n{grant.jti}".encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def link_hash(link_id: str) -> str:
    """What the database keeps to find a link: SHA-256 of the id, hex (64 characters)."""
    return hashlib.sha256(link_id.encode("ascii")).hexdigest()


def lookup(store: Store, key: bytes, link_id: str) -> tuple[Grant, Room] | None:
    """The grant and room behind a link id, or None for an unknown or malformed one.

    One indexed query on ``grants.link_hash``. The id is then recomputed with
    the current key and compared in constant time, so only ids made with the
    key in use now are honoured (a stale hash from before a key change is not).
    """
    if not _ID_RE.fullmatch(link_id):
        return None
    with store.read() as s:
        row = s.execute(
            select(Grant, Room)
            .join(Room, Room.id == Grant.room_id)
            .where(Grant.link_hash == link_hash(link_id))
        ).first()
    if row is None:
        return None
    grant, room = row
    if not hmac.compare_digest(join_id(key, grant), link_id):
        return None
    return grant, room


# -- participant stream ids (Slack Calls) -------------------------------------------
def stream_key(settings: Settings) -> bytes:
    """The key of the stream-id MACs: a secret that does not rotate with the AMS secret."""
    base = settings.secret_key or settings.slack_client_secret or settings.slack_signing_secret
    if not base:
        raise RuntimeError("Slack Calls need SLACK_CLIENT_SECRET (or MEETBOT_SECRET_KEY)")
    return hmac.new(base.encode("utf-8"), _STREAM_LABEL, hashlib.sha256).digest()


def _stream_mac(key: bytes, room_id: str, user_id: str, nonce: str) -> str:
    msg = f"{room_id}\n{user_id}\n{nonce}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:16]


def participant_stream_id(settings: Settings, room_id: str, user_id: str) -> str:
    """Circle's ``streamId`` for one person's publish: ``<room>_<user>_<nonce><mac>``.

    AMS reports this id in its stream events, which is how a join or a leave
    is tied to a Slack user. The nonce is fresh each time (two devices must
    not share a stream id: AMS refuses the second publisher); the mac stops
    anyone from posing as someone else by editing the parameter. All
    characters are in AMS's stream id alphabet and safe in Circle's query.
    """
    nonce = secrets.token_hex(4)
    mac = _stream_mac(stream_key(settings), room_id, user_id, nonce)
    return f"{room_id}_{user_id}_{nonce}{mac}"


def parse_stream_id(
    settings: Settings, stream_id: str, room_hint: str | None = None
) -> tuple[str, str] | None:
    """``(room id, user id)`` behind a stream id from :func:`participant_stream_id`.

    None for anything else (the room's own stream, a stream another app or
    an edited link made, a room other than ``room_hint``). Room ids may hold
    ``_``, user ids and the suffix never do, so the id splits from the right.
    """
    parts = stream_id.rsplit("_", 2)
    if len(parts) != 3:
        return None
    room_id, user_id, suffix = parts
    if not (
        ROOM_ID_RE.fullmatch(room_id)
        and _USER_RE.fullmatch(user_id)
        and _SUFFIX_RE.fullmatch(suffix)
    ):
        return None
    if room_hint and room_hint != room_id:
        return None
    expected = _stream_mac(stream_key(settings), room_id, user_id, suffix[:8])
    if not hmac.compare_digest(expected, suffix[8:]):
        return None
    return room_id, user_id


class Links:
    """Renders personal links and every message the outbox sends, from current state."""

    def __init__(self, settings: Settings, store: Store, secrets: SecretSource) -> None:
        self.settings = settings
        self.store = store
        self.secrets = secrets

    def link_for(self, room: Room, grant: Grant, *, direct: bool = False) -> str:
        """The personal link of one grant, as it goes into a DM.

        With MEETBOT_PUBLIC_URL: ``{public}/join/<id>`` (``bot/web/join.py``), which
        mints the token only when clicked. Otherwise, or with ``direct=True``
        (that click), the Circle link minted now with the current secret.
        """
        return self._link(room, grant, direct=direct)[0]

    def _link(self, room: Room, grant: Grant, *, direct: bool) -> tuple[str, int | None]:
        """``link_for``, and the stream-secret version a direct link was minted with
        (None for a click-time link, which mints at the click)."""
        if not direct:
            public = self.public_link(room, grant)
            if public is not None:
                return public, None
        version, secret = self.secrets.current()
        token = mint_join_token(
            room_id=room.id, user_id=grant.user_id, exp=grant.exp, jti=grant.jti, secret=secret
        )
        stream_id = None
        if self.settings.slack_calls and room.slack_call_id:
            stream_id = participant_stream_id(self.settings, room.id, grant.user_id)
        link = circle_link(
            self.settings.ams_url,
            self.settings.ams_app,
            room.id,
            token,
            grant.display_name,
            stream_id=stream_id,
        )
        return link, version

    def invite(self, room: Room, grant: Grant) -> tuple[str, list[dict[str, Any]]]:
        """The DM that carries ``grant``'s link, as it goes out now.

        A direct link's secret version is recorded on the grant
        (``Grant.secret_version``) before the DM is sent: a DM rendered with a
        secret that is rotated away meanwhile is then found stale and edited
        by the next re-issue (``Rooms.reissue_links``), whenever it landed.
        """
        link, version = self._link(room, grant, direct=False)
        if version is not None and grant.secret_version != version:
            with self.store.write() as tx:
                tx.execute(update(Grant).where(Grant.id == grant.id).values(secret_version=version))
            grant.secret_version = version
        return messages.invite_dm(
            room_id=room.id,
            topic=room.topic,
            owner_id=room.owner_id,
            expires_at=room.expires_at,
            link=link,
            is_owner=grant.user_id == room.owner_id,
        )

    def public_link(self, room: Room, grant: Grant) -> str | None:
        """``{MEETBOT_PUBLIC_URL}/join/<id>`` for a grant, recording its hash if needed.

        Returns None when click-time links are off (no public URL) or no key can be
        derived (Socket Mode without ``MEETBOT_SECRET_KEY``); the caller then sends
        the direct Circle link as before. The hash is written the first time a
        grant's link is rendered (and again if the key changed): a link exists only
        once rendered, so there is nothing to look up before that.
        """
        settings = self.settings
        if not settings.public_url:
            return None
        key = derive_key(settings)
        if key is None:
            if not _warned_no_key.is_set():
                _warned_no_key.set()
                log.warning(
                    "MEETBOT_PUBLIC_URL is set but neither MEETBOT_SECRET_KEY nor "
                    "SLACK_SIGNING_SECRET is: sending direct Circle links instead of /join links"
                )
            return None
        link_id = join_id(key, grant)
        digest = link_hash(link_id)
        if grant.link_hash != digest:
            with self.store.write() as tx:
                tx.connection().execute(_SET_LINK_HASH, {"grant_id": grant.id, "digest": digest})
            grant.link_hash = digest
        return f"{settings.public_url.rstrip('/')}{JOIN_PREFIX}{link_id}"

    def render(self, row: Outbox) -> Rendered | None:
        """Turn an outbox row into the message to send now, from current state."""
        return self.render_many([row])[0]

    def render_many(self, rows: Sequence[Outbox]) -> list[Rendered | None]:
        """:meth:`render` for several rows (a room's invitations), from one read.

        A room's DMs and card are written together and go out together; reading
        their room and grants once, not twice per message, is most of what
        rendering them costs.
        """
        room_ids = sorted({r.room_id for r in rows if r.room_id})
        grant_ids = sorted({r.grant_id for r in rows if r.grant_id})
        with self.store.read() as s:
            rooms = {room.id: room for room in s.scalars(_ROOMS, {"ids": room_ids})}
            grants = {g.id: g for g in s.scalars(_GRANTS, {"ids": grant_ids})} if grant_ids else {}
        self._record_link_hashes(list(grants.values()))
        return [
            self._compose(
                row,
                rooms.get(row.room_id) if row.room_id else None,
                grants.get(row.grant_id) if row.grant_id else None,
            )
            for row in rows
        ]

    def _record_link_hashes(self, grants: list[Grant]) -> None:
        """Record, in one write, the click-time link hashes ``public_link`` would
        write one by one: the first render of a room's DMs would otherwise make
        a write transaction per DM."""
        key = derive_key(self.settings) if self.settings.public_url else None
        if key is None:
            return
        hashes = {g.id: link_hash(join_id(key, g)) for g in grants if g.revoked_at is None}
        stale = sorted(
            (g for g in grants if g.id in hashes and g.link_hash != hashes[g.id]),
            key=lambda g: g.id,
        )
        if not stale:
            return
        with self.store.write() as tx:
            tx.connection().execute(
                _SET_LINK_HASH, [{"grant_id": g.id, "digest": hashes[g.id]} for g in stale]
            )
        for g in stale:
            g.link_hash = hashes[g.id]

    def _compose(self, row: Outbox, room: Room | None, grant: Grant | None) -> Rendered | None:
        """The message for ``row`` given its room and grant as they are now."""
        if room is None:
            return None
        if row.kind == "room_card" or row.kind == "card_update":
            text, blocks = messages.room_card(
                room_id=room.id,
                topic=room.topic,
                owner_id=room.owner_id,
                expires_at=room.expires_at,
                ended=room.state != RoomState.ACTIVE,
                call_id=room.slack_call_id,
            )
            if row.kind == "card_update":
                return Rendered(text, blocks, edit_ts=room.channel_ts) if room.channel_ts else None
            return Rendered(text, blocks, metadata=self._metadata(row))
        if grant is None:
            return None
        if row.kind == "dm_link":
            if room.state != RoomState.ACTIVE or grant.revoked_at is not None:
                return None  # ended before the DM went out: nothing worth saying
            text, blocks = self.invite(room, grant)
            return Rendered(text, blocks, metadata=self._metadata(row))
        if row.kind == "dm_update":
            if not grant.dm_ts:
                return None
            payload = json.loads(row.payload or "{}")
            if payload.get("mode") == "ended" or room.state != RoomState.ACTIVE:
                text, blocks = messages.ended_dm(
                    room_id=room.id, topic=room.topic, reason=payload.get("reason")
                )
            elif payload.get("mode") == "kicked" or grant.revoked_at is not None:
                # Also for a re-issue queued before a kick: never a link for a revoked grant.
                text, blocks = messages.kicked_dm(
                    room_id=room.id, topic=room.topic, owner_id=room.owner_id
                )
            else:
                text, blocks = self.invite(room, grant)
            return Rendered(text, blocks, edit_ts=grant.dm_ts)
        log.error("unknown outbox kind %s", row.kind)
        return None

    @staticmethod
    def _metadata(row: Outbox) -> dict[str, Any]:
        # Lets a recovering sender find a message it posted but did not record.
        return {"event_type": "meetbot_outbox", "event_payload": {"outbox_id": row.id}}
