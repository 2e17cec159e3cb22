"""Per-person revocation: ``/meet kick`` and AMS's authorization webhook.

A join token cannot be revoked by itself (``shared/docs/ams.md``): AMS checks
only its signature, ``streamId``, ``type`` and ``exp``. Ending the room or
rotating the stream secret would throw *everyone* out. AMS's
``webhookAuthenticateURL`` is the per-person lever: AMS POSTs every publish
(the join, and every automatic reconnect) to the bot, and lets it through only
on HTTP 200. So ``/meet kick`` marks the grant revoked, and the webhook refuses
any token whose ``jti`` belongs to a revoked grant (or an ended room), while
everyone else's links keep working.

The webhook sits on AMS's join path with a 5 s read timeout, so it does one
indexed query (``grants.jti`` is unique) and nothing else. Its URL carries
``MEETBOT_WEBHOOK_SECRET`` because AMS sends no credentials of its own; the
path is compared in constant time and a wrong one is indistinguishable from
an unknown route (404). Tokens arrive in the body and are never logged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import jwt
from sqlalchemy import select

from bot import messages
from bot.http import json_response, path_secret_ok
from bot.store import Grant, Room, RoomState
from bot.tokens import new_jti

if TYPE_CHECKING:
    from bot.rooms import Rooms

__all__ = ["WEBHOOK_PREFIX", "authorize", "handle_webhook", "kick"]

log = logging.getLogger("meetbot.revocation")

WEBHOOK_PREFIX = "/ams/auth/"
MAX_WEBHOOK_BODY = 64 * 1024  # AMS's JSON is a few hundred bytes


# -- the webhook --------------------------------------------------------------------
def authorize(rooms: Rooms, stream_id: str, token: str) -> tuple[bool, str]:
    """Whether AMS may let ``token`` publish/play in ``stream_id``; ``(ok, reason)``.

    The token must verify with the *current* stream secret (HS256, zero
    leeway, ``exp`` required), name this stream, and carry the ``jti`` of an
    unrevoked grant of an active room. The reason is for logs: no token in it.
    """
    if not token:
        return False, "no token"
    _, secret = rooms.secrets.current()
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
    with rooms.store.read() as s:
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
    """Slack Calls mode sets Circle's streamId to ``<room>_<user>_<24 hex>`` (bot/calls.py):
    the token holder's own stream in that room counts as the room."""
    user = claims.get("sub")
    if not isinstance(user, str):
        return False
    prefix = f"{room_id}_{user}_"
    tail = stream_id[len(prefix) :]
    return stream_id.startswith(prefix) and re.fullmatch(r"[0-9a-f]{24}", tail) is not None


def handle_webhook(
    rooms: Rooms, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``POST /ams/auth/<MEETBOT_WEBHOOK_SECRET>``: 200 lets the join through, 403 refuses.

    404 for a wrong (or unconfigured) path secret, 405 for other methods, 400
    for a body that is not AMS's JSON (an object with string ``streamId`` and
    ``token``). Anything unexpected refuses (503): AMS then keeps the person
    out, which is the safe side.
    """
    given = environ.get("PATH_INFO", "")[len(WEBHOOK_PREFIX) :]
    if not path_secret_ok(given, rooms.settings.webhook_secret):
        return json_response(start_response, "404 Not Found", {"error": "not found"})
    if environ.get("REQUEST_METHOD") != "POST":
        return json_response(start_response, "405 Method Not Allowed", {"error": "POST only"})
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0 or length > MAX_WEBHOOK_BODY:
        return json_response(start_response, "400 Bad Request", {"error": "bad body length"})
    raw = environ["wsgi.input"].read(length) if length else b""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    stream_id = body.get("streamId") if isinstance(body, dict) else None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(stream_id, str) or not stream_id or not isinstance(token, str):
        return json_response(start_response, "400 Bad Request", {"error": "expected AMS's JSON"})
    mode = body.get("mode") if isinstance(body.get("mode"), str) else "?"
    try:
        ok, reason = authorize(rooms, stream_id, token)
    except Exception as e:  # database down, no current secret: refuse, say why in the log
        log.error("auth webhook could not decide for room %r: %s", stream_id, type(e).__name__)
        return json_response(start_response, "503 Service Unavailable", {"allowed": False})
    if ok:
        log.debug("auth webhook: %s in room %r (%r)", reason, stream_id, mode)
        return json_response(start_response, "200 OK", {"allowed": True})
    log.info("auth webhook refused %r in room %r: %s", mode, stream_id, reason)
    return json_response(start_response, "403 Forbidden", {"allowed": False})


# -- /meet kick -------------------------------------------------------------------------
def kick(
    rooms: Rooms,
    team_id: str,
    room_id: str,
    user_id: str,
    target_id: str,
    response_url: str | None,
) -> bool:
    """`/meet kick <room> @person`: withdraw one person's link (the room's owner only).

    The grant is marked revoked, their DM is edited to say they were removed
    (an outbox ``dm_update`` with mode ``kicked``), and an audit row is
    written, in one transaction. Someone who never had a link gets a revoked
    grant anyway, so "Get my link" refuses them too. Whether their current
    token stops working depends on AMS's authorization webhook: the reply to
    the owner says which.
    """
    t = rooms.now()
    refusal = None
    had_link = False
    topic, expires_at = "", t
    with rooms.store.write() as tx:
        room = tx.get(Room, room_id)
        if room is None or room.team_id != team_id:
            refusal = f"I don't know a room `{room_id}` in this workspace."
        elif room.owner_id != user_id:
            refusal = f"Only the room's owner (<@{room.owner_id}>) can remove people from it."
        elif room.state != RoomState.ACTIVE:
            refusal = f"Room `{room_id}` has already ended."
        elif target_id == user_id:
            refusal = (
                "You can't remove yourself from your own room. "
                f"To close it for everyone, use `/meet end {room_id}`."
            )
        if refusal is None and room is not None:
            grant = tx.scalars(
                select(Grant)
                .where(Grant.room_id == room_id, Grant.user_id == target_id)
                .with_for_update()
            ).first()
            if grant is not None and grant.revoked_at is not None:
                refusal = f"<@{target_id}> was already removed from this room."
            elif grant is None:
                # Bar them from "Get my link" on the channel card as well.
                tx.add(
                    Grant(
                        room_id=room_id,
                        team_id=team_id,
                        enterprise_id=room.enterprise_id,
                        user_id=target_id,
                        jti=new_jti(),
                        exp=room.expires_at + rooms.settings.token_grace,
                        secret_version=None,
                        revoked_at=t,
                        created_at=t,
                    )
                )
            else:
                had_link = True
                grant.revoked_at = t
                if grant.dm_ts:
                    tx.add(rooms._dm_edit(room, grant, "kicked"))
            if refusal is None:
                rooms.store.audit(
                    tx, "kick", actor=user_id, team_id=team_id, room_id=room_id, user=target_id
                )
                topic, expires_at = room.topic, room.expires_at
    if refusal is not None:
        rooms._tell(response_url, refusal)
        return False
    log.info("room %s: %s removed %s", room_id, user_id, target_id)
    if rooms.outbox:
        rooms.outbox.kick()
    rooms.room_changed(room_id)
    rooms._tell(
        response_url,
        kick_reply(
            target_id,
            topic=topic,
            room_id=room_id,
            had_link=had_link,
            webhook=bool(rooms.settings.webhook_secret),
            token_exp=expires_at + rooms.settings.token_grace,
        ),
    )
    return True


def kick_reply(
    target_id: str,
    *,
    topic: str,
    room_id: str,
    had_link: bool,
    webhook: bool,
    token_exp: int,
) -> str:
    """What the owner is told after a kick: honest about what AMS will still accept."""
    title = messages.escape(messages.topic_or_default(topic))
    if not had_link:
        head = f"<@{target_id}> had no link to *{title}*; now they can't get one."
    else:
        head = f"Removed <@{target_id}> from *{title}* and withdrew the link I sent them."
    if webhook:
        return (
            f"{head} The video server will refuse their next join or reconnect; "
            "everyone else stays in the room."
        )
    if not had_link:
        return head
    return (
        f"{head}\n:warning: `MEETBOT_WEBHOOK_SECRET` is not set, so the link they already "
        f"have keeps working until it expires ({messages.when(token_exp)}) unless AMS's "
        "authorization webhook is configured. To shut them out now, end the room with "
        f"`/meet end {room_id}` and open a new one."
    )
