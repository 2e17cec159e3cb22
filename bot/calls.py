"""Slack Calls: a room shows up in its channel as a Call that people can join.

Why a module of its own: a Call changes three things at once and each needs a
different guarantee.

* **Registration.** ``calls.add`` (Tier 2, 20+/min) runs after AMS created the
  room and before the room is activated (``Rooms.on_opening``), on the worker
  that opens the room, never on the ack path. Its id is stored on the room
  first, so the channel card, rendered later by the outbox, carries the
  ``{"type": "call"}`` block. A Calls failure is logged and the room opens with
  the plain card: Calls are a convenience, the room is the product.
* **Joining.** A Call has *one* ``join_url`` for everybody, and a Circle link
  carries a personal token. So the join URL, ``{MEETBOT_PUBLIC_URL}/join/room/<id>``,
  identifies whoever clicks with Sign in with Slack (OpenID Connect), then
  mints *their* link, exactly like a "Get my link" click would. ``state`` is an
  HS256 JWT (room, nonce, 10 min expiry) and the nonce is also put in a
  ``SameSite=Lax`` cookie, so a callback only completes in the browser that
  started it (no login CSRF). The ``id_token`` comes straight from Slack's
  token endpoint over TLS, so, as OpenID Connect Core 3.1.3.7 allows, its
  signature is not checked; its issuer, audience, expiry and nonce are.
* **Who is in the call.** AMS's ``listenerHookURL`` POSTs ``liveStreamStarted``/
  ``liveStreamEnded`` per publish stream. With Calls on, each personal Circle
  link sets Circle's ``streamId`` to ``<room>_<user>_<nonce><mac>``: the mac
  (HMAC, 64 bits) means nobody can appear in a Call as someone else by editing
  the URL. Events go to Slack one at a time, in arrival order, off the
  request thread, because AMS gives up on a hook after 2 s.
* **Ending.** ``Rooms.on_revoked`` ends the Call after the revoke's transaction;
  the sweep retries a ``calls.end`` that did not happen (Slack down, process
  killed) for an hour, so a Call does not stay "live" in Slack forever.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urljoin

import jwt
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bot import messages
from bot.config import Settings
from bot.http import json_response, path_secret_ok
from bot.joinlinks import PAGES, _page
from bot.notify import SlackGateway, SlackSendError, UserInfo, acting_for
from bot.store import Grant, Room, RoomState, Store
from bot.tokens import ROOM_ID_RE, new_jti

if TYPE_CHECKING:
    from bot.rooms import Rooms

__all__ = [
    "CALLBACK_PATH",
    "CALL_JOIN_PREFIX",
    "HOOK_PREFIX",
    "SlackCalls",
    "authorize_url",
    "make_state",
    "parse_stream_id",
    "participant_stream_id",
    "read_state",
    "state_key",
]

log = logging.getLogger("meetbot.calls")

CALL_JOIN_PREFIX = "/join/room/"
CALLBACK_PATH = "/join/room/callback"
HOOK_PREFIX = "/ams/hook/"
STATE_TTL_S = 600
STATE_AUDIENCE = "meetbot:call-join"
COOKIE = "meetbot_signin"
SLACK_ISSUER = "https://slack.com"
CLAIM_USER = "https://slack.com/user_id"
CLAIM_TEAM = "https://slack.com/team_id"
MAX_HOOK_BODY = 64 * 1024
END_RETRY_WINDOW_S = 3600  # the sweep retries a calls.end for this long
END_RETRY_AFTER_S = 30  # ... leaving the immediate attempt this much time first
MAX_INLINE_RETRY_AFTER_S = 5  # a 429 asking for longer than this is not waited out

_STATE_LABEL = b"meetbot/call-state/v1"
_STREAM_LABEL = b"meetbot/call-stream/v1"
_USER_RE = re.compile(r"[UW][A-Z0-9]{1,31}", re.ASCII)
_SUFFIX_RE = re.compile(r"[0-9a-f]{24}", re.ASCII)
_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
]
# Errors of openid.connect.token that mean "this code is no good": the person
# has to start again. Anything else (Slack down, misconfiguration) is ours.
_CODE_ERRORS = frozenset(
    {"invalid_code", "code_already_used", "code_expired", "bad_redirect_uri", "invalid_grant_type"}
)
# calls.end answers after which trying again cannot help.
_END_FINAL = frozenset({"not_found", "invalid_arguments", "already_ended"})

# Pages the Calls flow adds to bot/joinlinks.py's set (same renderer, same headers).
PAGES.update(
    {
        "signin_failed": (
            "400 Bad Request",
            "&#128273;",
            "That sign-in didn&#8217;t work",
            "",
            [
                "Signing in with Slack took too long, was cancelled, or was opened in "
                "another browser, so I can&#8217;t tell who you are.",
                "Go back to Slack and press <strong>Join</strong> on the call again. "
                "You can also press <strong>Get my link</strong> on the room&#8217;s "
                "message to get your personal link by DM.",
            ],
        ),
        "wrong_workspace": (
            "403 Forbidden",
            "&#128274;",
            "This meeting is in another workspace",
            "gone",
            [
                "You signed in to a Slack workspace that this meeting doesn&#8217;t belong to.",
                "Press <strong>Join</strong> on the call again and sign in to the workspace "
                "where the meeting was started with <code>/meet</code>.",
            ],
        ),
        "guest": (
            "403 Forbidden",
            "&#128274;",
            "Guests need an invitation",
            "gone",
            [
                "Guest accounts can join only the rooms they were invited to.",
                "Ask the room&#8217;s owner to invite you: they can start a room with "
                "<code>/meet</code> and mention you.",
            ],
        ),
        "slack_down": (
            "503 Service Unavailable",
            "&#9203;",
            "Slack didn&#8217;t answer",
            "",
            [
                "I couldn&#8217;t confirm who you are with Slack just now.",
                "Wait a minute, then press <strong>Join</strong> on the call again, or press "
                "<strong>Get my link</strong> on the room&#8217;s message (<code>/meet</code>).",
            ],
        ),
    }
)


# -- keys, state and stream ids ----------------------------------------------------
def _key(settings: Settings, label: bytes) -> bytes:
    """A purpose-bound key from a secret that does not rotate with the AMS secret."""
    base = settings.secret_key or settings.slack_client_secret or settings.slack_signing_secret
    if not base:
        raise RuntimeError("Slack Calls need SLACK_CLIENT_SECRET (or MEETBOT_SECRET_KEY)")
    return hmac.new(base.encode("utf-8"), label, hashlib.sha256).digest()


def state_key(settings: Settings) -> bytes:
    """The key that signs the OpenID Connect ``state`` of a Call join."""
    return _key(settings, _STATE_LABEL)


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
    mac = _stream_mac(_key(settings, _STREAM_LABEL), room_id, user_id, nonce)
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
    expected = _stream_mac(_key(settings, _STREAM_LABEL), room_id, user_id, suffix[:8])
    if not hmac.compare_digest(expected, suffix[8:]):
        return None
    return room_id, user_id


def authorize_url(settings: Settings) -> str:
    """Slack's OpenID Connect authorize page, next to the Web API it is configured with.

    ``https://slack.com/api/`` gives ``https://slack.com/openid/connect/authorize``;
    a test double's API URL gives the double's stand-in page.
    """
    return urljoin(settings.slack_api_url, "../openid/connect/authorize")


def callback_url(settings: Settings) -> str:
    assert settings.public_url
    return settings.public_url.rstrip("/") + CALLBACK_PATH


def join_url(settings: Settings, room_id: str) -> str:
    """The Call's one shared ``join_url``: no token, only the room."""
    assert settings.public_url
    return f"{settings.public_url.rstrip('/')}{CALL_JOIN_PREFIX}{room_id}"


# -- HTTP helpers -----------------------------------------------------------------
def _redirect(
    start_response: Callable[..., Any], location: str, cookie: str | None = None
) -> list[bytes]:
    headers = [("Location", location), ("Content-Length", "0"), *_HEADERS]
    if cookie is not None:
        headers.append(("Set-Cookie", cookie))
    start_response("302 Found", headers)
    return [b""]


def _method_not_allowed(start_response: Callable[..., Any], allow: str) -> list[bytes]:
    data = b"method not allowed\n"
    start_response(
        "405 Method Not Allowed",
        [
            ("Allow", allow),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            *_HEADERS,
        ],
    )
    return [data]


def _cookie_value(environ: dict[str, Any]) -> str | None:
    try:
        jar = SimpleCookie(environ.get("HTTP_COOKIE") or "")
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


# -- the service ------------------------------------------------------------------------
class SlackCalls:
    """Rooms as Slack Calls: register, let people in, mirror who is live, end."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        rooms: Rooms,
        slack: SlackGateway,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.rooms = rooms
        self.slack = slack
        self.clock = clock
        # One thread: stream events reach Slack in the order AMS sent them.
        self._events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calls")

    @classmethod
    def install(
        cls,
        settings: Settings,
        store: Store,
        rooms: Rooms,
        slack: SlackGateway,
        *,
        clock: Callable[[], float] = time.time,
    ) -> SlackCalls | None:
        """Hook Calls into ``rooms`` when MEETBOT_SLACK_CALLS is on; None when it is off."""
        if not settings.slack_calls:
            return None
        calls = cls(settings, store, rooms, slack, clock=clock)
        rooms.on_opening = calls.register
        rooms.on_revoked = calls.room_ended
        if not settings.webhook_secret:
            log.warning(
                "MEETBOT_SLACK_CALLS is on without MEETBOT_WEBHOOK_SECRET: Calls will not "
                "show who is in them (AMS's listenerHookURL needs /ams/hook/<secret>)"
            )
        return calls

    def close(self) -> None:
        """Finish the Slack call in flight; queued events are dropped (best effort)."""
        self._events.shutdown(wait=True, cancel_futures=True)

    def now(self) -> int:
        return int(self.clock())

    # -- registration ------------------------------------------------------------
    def register(self, room: Room) -> str | None:
        """``calls.add`` for a room AMS just created; store the call id on the room.

        Runs before the room is activated so the card the outbox renders
        afterwards carries the call block. Never raises: a room without a Call
        is still a room.
        """
        if not self.settings.public_url:
            return None
        with self.store.read() as s:
            existing = s.scalar(select(Room.slack_call_id).where(Room.id == room.id))
        if existing:  # an earlier try of a scheduled room got this far
            return existing
        try:
            with acting_for(room.team_id, room.enterprise_id):
                call_id = self._with_retry(
                    lambda: self.slack.call_add(
                        external_unique_id=room.id,
                        join_url=join_url(self.settings, room.id),
                        created_by=room.owner_id,
                        title=messages.topic_or_default(room.topic),
                        date_start=room.created_at,
                    )
                )
        except SlackSendError as e:
            log.warning("calls.add failed for room %s (%s): plain card instead", room.id, e.error)
            return None
        except Exception:
            log.exception("calls.add failed for room %s: plain card instead", room.id)
            return None
        with self.store.write() as tx:
            tx.execute(
                update(Room)
                .where(Room.id == room.id, Room.slack_call_id.is_(None))
                .values(slack_call_id=call_id)
            )
        log.info("room %s registered as Slack call %s", room.id, call_id)
        return call_id

    def _with_retry(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` once more after a short 429 (Tier 2): a 429 means nothing happened."""
        try:
            return fn()
        except SlackSendError as e:
            if e.retry_after is None or e.retry_after > MAX_INLINE_RETRY_AFTER_S:
                raise
            time.sleep(e.retry_after)
            return fn()

    # -- ending -------------------------------------------------------------------
    def room_ended(self, room: Room) -> None:
        """``Rooms.on_revoked``: end the room's Call, off the caller's thread."""
        if room.slack_call_id and room.slack_call_ended_at is None:
            self._events.submit(self._end_call, room.id)

    def sweep(self) -> int:
        """End Calls whose room ended but whose ``calls.end`` did not happen (yet).

        Also the Call of a room that failed after it was registered. Bounded
        to an hour after the room ended: Slack shows a forgotten Call as live.
        """
        t = self.now()
        with self.store.read() as s:
            ids = list(
                s.scalars(
                    select(Room.id)
                    .where(Room.state.in_((RoomState.REVOKED, RoomState.FAILED)))
                    .where(Room.slack_call_id.is_not(None), Room.slack_call_ended_at.is_(None))
                    .where(Room.ended_at >= t - END_RETRY_WINDOW_S)
                    .where(Room.ended_at <= t - END_RETRY_AFTER_S)
                    .limit(20)
                )
            )
        return sum(1 for room_id in ids if self._end_call(room_id))

    def _end_call(self, room_id: str) -> bool:
        room = self.store.room(room_id)
        if room is None or not room.slack_call_id or room.slack_call_ended_at is not None:
            return False
        duration = max(0, (room.ended_at or self.now()) - room.created_at)
        try:
            with acting_for(room.team_id, room.enterprise_id):
                self._with_retry(lambda: self.slack.call_end(room.slack_call_id, duration))
        except SlackSendError as e:
            if not (e.permanent or e.error in _END_FINAL):
                log.warning("calls.end for room %s failed (%s): will retry", room_id, e.error)
                return False
            log.warning("calls.end for room %s failed for good (%s)", room_id, e.error)
        except Exception:
            log.exception("calls.end for room %s failed: will retry", room_id)
            return False
        with self.store.write() as tx:
            tx.execute(
                update(Room).where(Room.id == room_id).values(slack_call_ended_at=self.now())
            )
        log.info("Slack call of room %s ended", room_id)
        return True

    # -- participants (AMS listenerHookURL) ------------------------------------------
    def stream_event(self, action: str, stream_id: str, room_hint: str | None) -> bool:
        """Queue the Slack update for one AMS stream event; False when it is not ours."""
        joined = {"liveStreamStarted": True, "liveStreamEnded": False}.get(action)
        if joined is None:
            return False
        who = parse_stream_id(self.settings, stream_id, room_hint)
        if who is None:
            return False
        self._events.submit(self._participant, who[0], who[1], joined)
        return True

    def _participant(self, room_id: str, user_id: str, joined: bool) -> None:
        room = self.store.room(room_id)
        if room is None or not room.slack_call_id or room.state != RoomState.ACTIVE:
            return
        if joined:
            with self.store.read() as s:
                grant = s.scalar(
                    select(Grant.id).where(
                        Grant.room_id == room_id,
                        Grant.user_id == user_id,
                        Grant.revoked_at.is_(None),
                    )
                )
            if grant is None:  # removed from the room meanwhile: not shown as in the Call
                return
        call_id = room.slack_call_id
        try:
            with acting_for(room.team_id, room.enterprise_id):
                self._with_retry(
                    lambda: self.slack.call_participants(call_id, [user_id], joined=joined)
                )
        except SlackSendError as e:
            log.warning(
                "calls.participants.%s for room %s failed: %s",
                "add" if joined else "remove",
                room_id,
                e.error,
            )
        except Exception:
            log.exception("calls.participants update for room %s failed", room_id)

    # -- joining (Sign in with Slack) ----------------------------------------------------
    def handle_join(
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
            return _method_not_allowed(start_response, "GET, HEAD")
        room = self.store.room(room_id) if ROOM_ID_RE.fullmatch(room_id) else None
        if room is None or room.state in (RoomState.CREATING, RoomState.FAILED):
            return _page(start_response, "unknown")
        if room.state != RoomState.ACTIVE:
            return _page(start_response, "ended")
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
        return _redirect(
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
            return _method_not_allowed(start_response, "GET")
        params = dict(parse_qsl(environ.get("QUERY_STRING") or "", keep_blank_values=True))
        state = read_state(state_key(self.settings), params.get("state") or "")
        if state is None:
            log.info("call join: forged or expired state")
            return _page(start_response, "signin_failed")
        room_id, nonce = state
        cookie = _cookie_value(environ)
        if not cookie or not hmac.compare_digest(cookie.encode(), nonce.encode()):
            log.info("call join for room %s: callback from another browser", room_id)
            return _page(start_response, "signin_failed")
        code = params.get("code") or ""
        if params.get("error") or not code:
            log.info("call join for room %s: sign-in cancelled (%r)", room_id, params.get("error"))
            return _page(start_response, "signin_failed")
        try:
            user_id, team_id = self._identify(code, nonce)
        except _SignInFailed as e:
            return _page(start_response, e.page)
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
            return _page(start_response, "unknown")
        if room.team_id != team_id:
            log.info("call join for room %s: %s signed in to %s", room_id, user_id, team_id)
            return _page(start_response, "wrong_workspace")
        if room.state != RoomState.ACTIVE or room.expires_at + self.settings.token_grace <= (
            self.now()
        ):
            return _page(start_response, "ended")
        try:
            grant, refusal = self._grant(room, user_id)
        except _SignInFailed as e:
            return _page(start_response, e.page)
        if refusal is not None:
            return _page(start_response, refusal)
        assert grant is not None
        location = self.rooms.link_for(room, grant, direct=True)
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
        return _redirect(start_response, location, self._cookie("", 0))

    def _grant(self, room: Room, user_id: str) -> tuple[Grant | None, str | None]:
        """The person's grant in ``room``, made now if they have none: ``(grant, page)``.

        The same rule as "Get my link": anyone in the workspace may join, a
        guest only when invited (or MEETBOT_ALLOW_GUESTS), never after a kick.
        """
        with self.store.read() as s:
            grant = s.scalar(
                select(Grant).where(Grant.room_id == room.id, Grant.user_id == user_id)
            )
        if grant is not None:
            return (None, "removed") if grant.revoked_at is not None else (grant, None)
        info = self._user_info(room, user_id)
        if info.is_bot or info.deleted:
            return None, "unknown"
        if info.is_guest and not self.settings.allow_guests:
            return None, "guest"
        version, _ = self.rooms.secrets.current()
        t = self.now()
        try:
            with self.store.write() as tx:
                grant = Grant(
                    room_id=room.id,
                    team_id=room.team_id,
                    enterprise_id=room.enterprise_id,
                    user_id=user_id,
                    display_name=(info.display_name or info.name)[:120],
                    jti=new_jti(),
                    exp=room.expires_at + self.settings.token_grace,
                    secret_version=version,
                    created_at=t,
                )
                tx.add(grant)
        except IntegrityError:  # the same person, a second tab, at the same moment
            with self.store.read() as s:
                grant = s.scalar(
                    select(Grant).where(Grant.room_id == room.id, Grant.user_id == user_id)
                )
            if grant is None or grant.revoked_at is not None:
                return None, "removed"
        return grant, None

    def _user_info(self, room: Room, user_id: str) -> UserInfo:
        try:
            with acting_for(room.team_id, room.enterprise_id):
                return self.slack.user_info(user_id)
        except Exception as e:  # fail closed: no new grant without knowing who it is for
            log.warning("call join: users.info for %s failed: %s", user_id, type(e).__name__)
            raise _SignInFailed("slack_down") from None


class _SignInFailed(Exception):
    def __init__(self, page: str) -> None:
        super().__init__(page)
        self.page = page


def handle_hook(
    calls: SlackCalls | None,
    settings: Settings,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
) -> Iterable[bytes]:
    """``POST /ams/hook/<MEETBOT_WEBHOOK_SECRET>``: AMS's ``listenerHookURL``.

    404 for a wrong path secret (constant time), 405 for other methods, 400
    for a body that is neither AMS's JSON nor its form encoding. Everything
    else answers 200 at once, ours or not (with Calls off too), because AMS
    retries a hook that did not get 200; the Slack side happens later, on the
    Calls thread.
    """
    given = environ.get("PATH_INFO", "")[len(HOOK_PREFIX) :]
    if not path_secret_ok(given, settings.webhook_secret):
        return json_response(start_response, "404 Not Found", {"error": "not found"})
    if environ.get("REQUEST_METHOD") != "POST":
        return _method_not_allowed(start_response, "POST")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0 or length > MAX_HOOK_BODY:
        return json_response(start_response, "400 Bad Request", {"error": "bad body length"})
    raw = environ["wsgi.input"].read(length) if length else b""
    ctype = str(environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
        if ctype == "application/json" or text.lstrip().startswith("{"):
            body = json.loads(text)
        else:
            body = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return json_response(
            start_response, "400 Bad Request", {"error": "expected AMS's hook body"}
        )
    action, stream_id = body.get("action"), body.get("id")
    room_hint = body.get("mainTrackId") or body.get("roomId")
    ours = False
    if (
        calls is not None
        and isinstance(action, str)
        and isinstance(stream_id, str)
        and (room_hint is None or isinstance(room_hint, str))
    ):
        ours = calls.stream_event(action, stream_id, room_hint)
    log.debug("AMS hook %r for a stream%s", action, "" if ours else " (ignored)")
    return json_response(start_response, "200 OK", {"ok": True})
