"""Who AMS may let in: the decision behind the authorization webhooks.

A join token cannot be revoked by itself (``shared/docs/ams.md``): AMS checks
only its signature, ``streamId``, ``type`` and ``exp``. Ending the room or
rotating the stream secret would throw *everyone* out. AMS's two webhooks are
the per-person lever, both answered by ``bot/web/ams_auth.py``:

* ``webhookAuthenticateURL``, the **publish** check, on every publish (the
  join and each automatic reconnect). AMS names the stream being published,
  which in a Circle conference is the participant's *own* stream id
  (``<name>_<10 random>``, the link's ``streamId``, or ``<that>_presentation``
  for a screen share), never the room id; the room is in the token's
  ``streamId`` claim. Whatever id it publishes under is allowed, and recorded
  against the grant (``bot.rooms.streams``): that is how the bot learns which
  streams to stop when it removes this person or ends the room.
* ``webhookPlayAuthUrl``, the **play** check (``mode: "play"``): Circle plays
  the room id with the same token. Without it, a person refused at publish
  still watches and listens.

Either is allowed only for a token that verifies with the *current* stream
secret (HS256, zero leeway, ``exp`` required), whose ``jti`` is an unrevoked
grant of that room held by the token's ``sub``, in a room that is active, not
past its end and not being ended right now. So ``/meet kick`` (the grant is
revoked) and an end (the room is claimed, then revoked) make AMS refuse.

AMS runs the publish check ``synchronized`` per application: every other join
waits while one is answered. So this is a few indexed statements and nothing
else: one read (grant, room, whether the stream id is a room), one upsert for
a publish, and now and then a note that AMS asked (``seen``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy import exists, select
from sqlalchemy.orm import aliased

from bot.ams.stream_secret import SecretSource
from bot.rooms.streams import MAX_STREAM_ID, Streams
from bot.store import Grant, Room, RoomState, Store

__all__ = ["PLAY", "PUBLISH", "SEEN_KEYS", "Access", "Decision", "seen_recently"]

log = logging.getLogger("meetbot.access")

PUBLISH = "publish"
PLAY = "play"
#: ``meta`` rows that say when AMS last asked each check: proof that the webhook
#: setting reaches this bot, so a kick can say what AMS will refuse.
SEEN_KEYS = {PUBLISH: "seen_publish_check", PLAY: "seen_play_check"}
SEEN_EVERY_S = 300  # a process notes a kind of check at most this often
SEEN_WINDOW_S = 86400  # a check seen within this long counts as "AMS asks"
_STREAM_ID_RE = re.compile(r"[A-Za-z0-9_.\-]+", re.ASCII)


@dataclass(frozen=True)
class Decision:
    """``allowed`` or not, and why (for the log: never a token)."""

    allowed: bool
    reason: str


def seen_recently(store: Store, kind: str, now: int) -> bool:
    """Whether AMS has asked this deployment a ``kind`` check within ``SEEN_WINDOW_S``."""
    value = store.meta(SEEN_KEYS[kind])
    try:
        return value is not None and now - int(value) <= SEEN_WINDOW_S
    except ValueError:
        return False


class Access:
    """Answers AMS's publish and play checks."""

    def __init__(
        self,
        store: Store,
        secrets: SecretSource,
        streams: Streams,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.streams = streams
        self.clock = clock
        self._noted: dict[str, float] = {}
        self._noted_lock = threading.Lock()

    def check(self, kind: str, stream_id: str, token: str) -> Decision:
        """The publish (``kind="publish"``) or play check of ``token`` on ``stream_id``."""
        now = int(self.clock())
        self._note(kind, now)
        claims, why = self._verify(token)
        if claims is None:
            return Decision(False, why)
        room_id = claims["streamId"]
        if kind == PLAY and stream_id != room_id:
            return Decision(False, "play of another room than the token's")
        if kind == PUBLISH and (
            len(stream_id) > MAX_STREAM_ID or not _STREAM_ID_RE.fullmatch(stream_id)
        ):
            return Decision(False, "stream id AMS would not accept")
        other = aliased(Room)
        with self.store.read() as s:
            row = s.execute(
                select(
                    Grant.id,
                    Grant.room_id,
                    Grant.user_id,
                    Grant.revoked_at,
                    Room.state,
                    Room.expires_at,
                    Room.lease_until,
                    exists().where(other.id == stream_id),
                )
                .join(Room, Room.id == Grant.room_id)
                .where(Grant.jti == claims["jti"])
            ).first()
        if row is None:
            return Decision(False, "no grant for this token")
        grant_id, grant_room, user_id, revoked_at, state, expires_at, lease_until, is_room = row
        if grant_room != room_id or claims.get("sub") != user_id:
            return Decision(False, "token does not match its grant")
        if state != RoomState.ACTIVE or expires_at <= now:
            return Decision(False, "room has ended")
        if lease_until is not None and lease_until >= now:
            return Decision(False, "room is being ended")
        if revoked_at is not None:
            return Decision(False, f"{user_id} was removed from the room")
        if kind == PLAY:
            return Decision(True, f"{user_id} may watch")
        if is_room:
            # A participant publishing as a room's own stream would make a later stop of
            # "their" stream take a whole room down.
            return Decision(False, "stream id is a room's")
        if not self.streams.record_publish(
            stream_id, room_id=room_id, user_id=user_id, grant_id=grant_id, at=now
        ):
            return Decision(False, "stream id is someone else's")
        return Decision(True, f"{user_id} may publish")

    def _verify(self, token: str) -> tuple[dict[str, Any] | None, str]:
        if not token:
            return None, "no token"
        _, secret = self.secrets.current()
        try:
            claims = jwt.decode(
                token,
                secret.encode("utf-8"),
                algorithms=["HS256"],
                options={"require": ["exp", "jti", "streamId", "sub"]},
                leeway=0,
            )
        except jwt.PyJWTError as e:
            return None, f"token rejected ({type(e).__name__})"
        if claims.get("type") != "publish":
            return None, "token type is not publish"
        if not all(isinstance(claims.get(k), str) for k in ("jti", "streamId", "sub")):
            return None, "token claims are not strings"
        return claims, "ok"

    def _note(self, kind: str, now: int) -> None:
        """Remember (now and then) that AMS asks this kind of check; never fails a check."""
        with self._noted_lock:
            if now - self._noted.get(kind, -SEEN_EVERY_S - 1) < SEEN_EVERY_S:
                return
            self._noted[kind] = now
        try:
            self.store.set_meta(SEEN_KEYS[kind], str(now))
        except Exception as e:  # a note, not the decision
            log.warning("could not note an AMS %s check: %s", kind, type(e).__name__)
