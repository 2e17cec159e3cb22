"""Join tokens and Circle links.

A join token is what AMS checks when someone publishes or plays in a room:
HS256 over ``{"streamId", "type": "publish", "exp", "sub", "jti"}`` with the
app's ``jwtStreamSecretKey``. There is deliberately no ``iat``/``nbf``: AMS
verifies with zero leeway and rejects one that lies in its future, so a bot
clock a second ahead of AMS would make every fresh link fail.

Minting is deterministic for a given grant (same claims, same secret → same
token), so a DM that has to be sent again carries the very same link.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import quote

import jwt

ROOM_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Circle URL-decodes the whole query string before splitting it on & and =.
_UNSAFE_IN_QUERY = re.compile(r"[&=#?%+\x00-\x1f\x7f]")
# AMS's stream id alphabet (any length).
_STREAM_ID_RE = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)


def new_room_id() -> str:
    """An unguessable room id: 128 random bits in AMS's allowed alphabet.

    Never starting with ``-`` or ``_``: an id like ``-x3f...`` would read as an
    option to ``meetbot rooms end`` (and to most shells' tools), so one room in
    32 could not be ended from the command line without ``--``.
    """
    while True:
        room_id = secrets.token_urlsafe(16)
        if room_id[0].isalnum():
            return room_id


def new_jti() -> str:
    return secrets.token_urlsafe(16)


def mint_join_token(*, room_id: str, user_id: str, exp: int, jti: str, secret: str) -> str:
    """The personal token for one grant. Never log or store the result."""
    claims = {"streamId": room_id, "type": "publish", "exp": int(exp), "sub": user_id, "jti": jti}
    return jwt.encode(claims, secret.encode("utf-8"), algorithm="HS256")


def circle_link(
    ams_url: str,
    app: str,
    room_id: str,
    token: str,
    display_name: str | None = None,
    *,
    stream_id: str | None = None,
) -> str:
    """``{AMS_URL}/{app}/{room}?token=...[&streamName=...][&streamId=...]``.

    The display name is cleaned of the characters Circle's query parsing would
    split on, then percent-encoded (spaces become ``%20``). ``stream_id`` sets
    the participant's publish stream id (Slack Calls tell who is live by it);
    it must be a valid AMS stream id, which is also safe in Circle's query.
    """
    link = f"{ams_url.rstrip('/')}/{app}/{room_id}?token={token}"
    if display_name:
        name = _UNSAFE_IN_QUERY.sub("", display_name).strip()[:64]
        if name:
            link += "&streamName=" + quote(name, safe="")
    if stream_id is not None:
        if not _STREAM_ID_RE.fullmatch(stream_id):
            raise ValueError("stream_id must use only A-Z a-z 0-9 - _ .")
        link += "&streamId=" + stream_id
    return link
