"""Joining a room from its Slack Call: Sign in with Slack, then the person's own link.

A Call has *one* ``join_url`` for everybody (``{MEETBOT_PUBLIC_URL}/join/room/<id>``),
and a Circle link carries a personal token. So the join URL identifies
whoever clicks with Sign in with Slack (OpenID Connect), then mints *their*
link, exactly like a "Get my link" click would. ``state`` is an HS256 JWT
(room, nonce, 10 min expiry) and the nonce is also put in a ``SameSite=Lax``
cookie, so a callback only completes in the browser that started it (no
login CSRF). The ``id_token`` comes straight from Slack's token endpoint over
TLS, so, as OpenID Connect Core 3.1.3.7 allows, its signature is not checked;
its issuer, audience, expiry and nonce are.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin

import jwt

from bot.config import Settings
from bot.rooms.links import Links
from bot.rooms.service import Rooms
from bot.slack.calls import CALL_JOIN_PREFIX
from bot.slack.gateway import SlackGateway, SlackSendError
from bot.store import RoomState, Store
from bot.tokens import ROOM_ID_RE
from bot.web.pages import page
from bot.web.responses import method_not_allowed, redirect

__all__ = [
    "CALLBACK_PATH",
    "CALL_JOIN_PREFIX",
    "CallSignIn",
    "authorize_url",
    "make_state",
    "read_state",
    "state_key",
]

log = logging.getLogger("meetbot.calls")

CALLBACK_PATH = "/join/room/callback"
STATE_TTL_S = 600
STATE_AUDIENCE = "meetbot:call-join"
COOKIE = "meetbot_signin"
SLACK_ISSUER = "https://slack.com"
CLAIM_USER = "https://slack.com/user_id"
CLAIM_TEAM = "https://slack.com/team_id"
_STATE_LABEL = b"meetbot/call-state/v1"
#: The page a refused sign-in sees, by the admission policy's reason (else "account").
_PAGE_FOR = {
    "removed": "removed",
    "guest": "guest",
    "not_member": "not_member",
    "wrong_workspace": "wrong_workspace",
    "slack_down": "slack_down",
}
_USER_RE = re.compile(r"[UW][A-Z0-9]{1,31}", re.ASCII)
# Errors of openid.connect.token that mean "this code is no good": the person
# has to start again. Anything else (Slack down, misconfiguration) is ours.
_CODE_ERRORS = frozenset(
    {"invalid_code", "code_already_used", "code_expired", "bad_redirect_uri", "invalid_grant_type"}
)


def state_key(settings: Settings) -> bytes:
    """The key that signs the OpenID Connect ``state`` of a Call join."""
    base = settings.secret_key or settings.slack_client_secret or settings.slack_signing_secret
    if not base:
        raise RuntimeError("Slack Calls need SLACK_CLIENT_SECRET (or MEETBOT_SECRET_KEY)")
    return hmac.new(base.encode("utf-8"), _STATE_LABEL, hashlib.sha256).digest()


def make_state(key: bytes, room_id: str, nonce: str, *, now: float | None = None) -> str:
    """The ``state`` of one sign-in: which room, which nonce, valid for 10 minutes.

    Signed so the callback cannot be pointed at another room, with an expiry
    so a leaked callback URL is useless soon after.
    """
    t = int(time.time() if now is None else now)
    claims = {"room": room_id, "nonce": nonce, "exp": t + STATE_TTL_S, "aud": STATE_AUDIENCE}
    return jwt.encode(claims, key, algorithm="HS256")


def read_state(key: bytes, state: str) -> tuple[str, str] | None:
    """``(room id, nonce)`` of a state made by :func:`make_state`; None if forged or expired."""
    try:
        claims = jwt.decode(
            state,
            key,
            algorithms=["HS256"],
            audience=STATE_AUDIENCE,
            options={"require": ["exp", "room", "nonce", "aud"]},
        )
    except jwt.PyJWTError:
        return None
    room, nonce = claims.get("room"), claims.get("nonce")
    if not (isinstance(room, str) and isinstance(nonce, str) and ROOM_ID_RE.fullmatch(room)):
        return None
    return room, nonce


def authorize_url(settings: Settings) -> str:
    """Slack's OpenID Connect authorize page, next to the Web API it is configured with.

    ``https://slack.com/api/`` gives ``https://slack.com/openid/connect/authorize``;
    a test double's API URL gives the double's stand-in page.
    """
    return urljoin(settings.slack_api_url, "../openid/connect/authorize")


def callback_url(settings: Settings) -> str:
    assert settings.public_url
    return settings.public_url.rstrip("/") + CALLBACK_PATH


def _cookie_value(environ: dict[str, Any]) -> str | None:
    try:
        jar = SimpleCookie(environ.get("HTTP_COOKIE") or "")
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


class CallSignIn:
    """``GET /join/room/<id>`` (a Call's join_url) and its OpenID Connect callback."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        rooms: Rooms,
        links: Links,
        slack: SlackGateway,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.rooms = rooms
        self.links = links
        self.slack = slack
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """``GET /join/room/<id>`` (the Call's join_url) and its OpenID Connect callback."""
        path = environ.get("PATH_INFO", "")
        if path == CALLBACK_PATH:
            return self._callback(environ, start_response)
        return self._start(environ, start_response, path[len(CALL_JOIN_PREFIX) :])

    def _start(
        self, environ: dict[str, Any], start_response: Callable[..., Any], room_id: str
    ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return method_not_allowed(start_response, "GET, HEAD")
        room = self.store.room(room_id) if ROOM_ID_RE.fullmatch(room_id) else None
        if room is None or room.state in (RoomState.CREATING, RoomState.FAILED):
            return page(start_response, "unknown")
        if room.state != RoomState.ACTIVE:
            return page(start_response, "ended")
        nonce = secrets.token_urlsafe(16)
        s = self.settings
        query = urlencode(
            {
                "response_type": "code",
                "scope": "openid",
                "client_id": s.slack_client_id or "",
                "redirect_uri": callback_url(s),
                "state": make_state(state_key(s), room.id, nonce, now=self.clock()),
                "nonce": nonce,
                "team": room.team_id,
            }
        )
        return redirect(
            start_response, f"{authorize_url(s)}?{query}", self._cookie(nonce, STATE_TTL_S)
        )

    def _cookie(self, value: str, max_age: int) -> str:
        """The browser binding of a sign-in: only its callback may finish it."""
        secure = "; Secure" if (self.settings.public_url or "").startswith("https:") else ""
        return (
            f"{COOKIE}={value}; Path={CALL_JOIN_PREFIX}; Max-Age={max_age}; "
            f"HttpOnly; SameSite=Lax{secure}"
        )

    def _callback(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        # GET only: a HEAD from a link prefetcher must not spend the one-time code.
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return method_not_allowed(start_response, "GET")
        params = dict(parse_qsl(environ.get("QUERY_STRING") or "", keep_blank_values=True))
        state = read_state(state_key(self.settings), params.get("state") or "")
        if state is None:
            log.info("call join: forged or expired state")
            return page(start_response, "signin_failed")
        room_id, nonce = state
        cookie = _cookie_value(environ)
        if not cookie or not hmac.compare_digest(cookie.encode(), nonce.encode()):
            log.info("call join for room %s: callback from another browser", room_id)
            return page(start_response, "signin_failed")
        code = params.get("code") or ""
        if params.get("error") or not code:
            log.info("call join for room %s: sign-in cancelled (%r)", room_id, params.get("error"))
            return page(start_response, "signin_failed")
        try:
            user_id, team_id = self._identify(code, nonce)
        except _SignInFailed as e:
            return page(start_response, e.page)
        return self._admit(start_response, room_id, user_id, team_id)

    def _identify(self, code: str, nonce: str) -> tuple[str, str]:
        """Exchange the code for an id_token and read who signed in: ``(user, team)``."""
        s = self.settings
        try:
            data = self.slack.openid_token(
                client_id=s.slack_client_id or "",
                client_secret=s.slack_client_secret or "",
                code=code,
                redirect_uri=callback_url(s),
            )
        except SlackSendError as e:
            if e.error in _CODE_ERRORS:
                log.info("call join: Slack refused the code (%s)", e.error)
                raise _SignInFailed("signin_failed") from None
            log.warning("call join: openid.connect.token failed (%s)", e.error)
            raise _SignInFailed("slack_down") from None
        try:
            claims = jwt.decode(
                str(data.get("id_token") or ""), options={"verify_signature": False}
            )
        except jwt.PyJWTError:
            log.warning("call join: Slack's id_token could not be read")
            raise _SignInFailed("signin_failed") from None
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        exp = claims.get("exp")
        user, team = claims.get(CLAIM_USER), claims.get(CLAIM_TEAM)
        problem = (
            "issuer"
            if claims.get("iss") != SLACK_ISSUER
            else "audience"
            if s.slack_client_id not in audiences
            else "expiry"
            if not isinstance(exp, int | float) or exp <= self.clock()
            else "nonce"
            if not hmac.compare_digest(str(claims.get("nonce") or "").encode(), nonce.encode())
            else "user"
            if not (isinstance(user, str) and _USER_RE.fullmatch(user) and isinstance(team, str))
            else None
        )
        if problem is not None:
            log.warning("call join: id_token refused (%s)", problem)
            raise _SignInFailed("signin_failed")
        return user, team

    def _admit(
        self, start_response: Callable[..., Any], room_id: str, user_id: str, team_id: str
    ) -> Iterable[bytes]:
        """Get-or-create the person's grant and send them to their own Circle link."""
        room = self.store.room(room_id)
        if room is None:
            return page(start_response, "unknown")
        if room.state != RoomState.ACTIVE or room.expires_at + self.settings.token_grace <= (
            self.now()
        ):
            return page(start_response, "ended")
        # Who may get in is the admission policy's answer (bot/rooms/admission.py).
        grant, refusal = self.rooms.grant_for(room, user_id, via="slack_call", team_id=team_id)
        if refusal is not None:
            log.info(
                "call join for room %s: %s (signed in to %s) refused: %s",
                room_id,
                user_id,
                team_id,
                refusal.why,
            )
            return page(start_response, _PAGE_FOR.get(refusal.why, "account"))
        assert grant is not None
        location = self.links.link_for(room, grant, direct=True)
        with self.store.write() as tx:
            self.store.audit(
                tx,
                "join",
                actor=user_id,
                team_id=room.team_id,
                room_id=room.id,
                grant_id=grant.id,
                via="slack_call",
            )
        log.info("call join for room %s by %s", room.id, user_id)
        return redirect(start_response, location, self._cookie("", 0))


class _SignInFailed(Exception):
    def __init__(self, page: str) -> None:
        super().__init__(page)
        self.page = page
