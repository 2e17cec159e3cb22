"""Who AMS may let in: the decision behind the authorization webhook.

A join token cannot be revoked by itself (``shared/docs/ams.md``): AMS checks
only its signature, ``streamId``, ``type`` and ``exp``. Ending the room or
rotating the stream secret would throw *everyone* out. AMS's
``webhookAuthenticateURL`` is the per-person lever: AMS asks the bot about
every publish (the join, and every automatic reconnect) and lets it through
only on HTTP 200 (``bot/web/ams_auth.py``). So ``/meet kick`` marks the grant
revoked, and this refuses any token whose ``jti`` belongs to a revoked grant
(or an ended room), while everyone else's links keep working.

It sits on AMS's join path, so it is one indexed query (``grants.jti`` is
unique) and nothing else.
"""

from __future__ import annotations

import re
from typing import Any

import jwt
from sqlalchemy import select

from bot.ams.stream_secret import SecretSource
from bot.store import Grant, Room, RoomState, Store

__all__ = ["authorize"]


def authorize(store: Store, secrets: SecretSource, stream_id: str, token: str) -> tuple[bool, str]:
    """Whether AMS may let ``token`` publish/play in ``stream_id``; ``(ok, reason)``.

    The token must verify with the *current* stream secret (HS256, zero
    leeway, ``exp`` required), name this stream, and carry the ``jti`` of an
    unrevoked grant of an active room. The reason is for logs: no token in it.
    """
    if not token:
        return False, "no token"
    _, secret = secrets.current()
    try:
        claims = jwt.decode(
            token,
            secret.encode("utf-8"),
            algorithms=["HS256"],
            options={"require": ["exp", "jti", "streamId"]},
            leeway=0,
        )
    except jwt.PyJWTError as e:
        return False, f"token rejected ({type(e).__name__})"
    room_id = claims.get("streamId")
    if not isinstance(room_id, str) or (
        stream_id != room_id and not _own_participant_stream(stream_id, room_id, claims)
    ):
        return False, "token is for another room"
    if claims.get("type") != "publish":
        return False, "token type is not publish"
    jti = claims.get("jti")
    if not isinstance(jti, str):
        return False, "token has no usable jti"
    with store.read() as s:
        row = s.execute(
            select(Grant.room_id, Grant.user_id, Grant.revoked_at, Room.state)
            .join(Room, Room.id == Grant.room_id)
            .where(Grant.jti == jti)
        ).first()
    if row is None:
        return False, "no grant for this token"
    room_id, user_id, revoked_at, state = row
    if room_id != stream_id or claims.get("sub") != user_id:
        return False, "token does not match its grant"
    if state != RoomState.ACTIVE:
        return False, "room has ended"
    if revoked_at is not None:
        return False, f"{user_id} was removed from the room"
    return True, f"{user_id} allowed"


def _own_participant_stream(stream_id: str, room_id: str, claims: dict[str, Any]) -> bool:
    """Slack Calls mode sets Circle's streamId to ``<room>_<user>_<24 hex>`` (``bot.rooms.links``):
    the token holder's own stream in that room counts as the room."""
    user = claims.get("sub")
    if not isinstance(user, str):
        return False
    prefix = f"{room_id}_{user}_"
    tail = stream_id[len(prefix) :]
    return stream_id.startswith(prefix) and re.fullmatch(r"[0-9a-f]{24}", tail) is not None
