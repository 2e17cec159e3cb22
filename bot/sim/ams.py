"""A loopback Ant Media Server (AMS) test double, with Circle's participants.

Why this exists: the bot's AMS client, the room lifecycle, ``meetbot demo`` and the
benchmarks must run with no real AMS and no network, yet fail the way production
fails. So this is a *real* HTTP server on 127.0.0.1 (not a mocked ``requests``)
that follows ``shared/docs/ams.md`` and AMS's own source: the same paths, status
codes, bodies and quirks (404 with an empty body, DELETE answering 200 with
``success: false``, settings POST resetting omitted fields, the login lockout,
java-jwt's zero-leeway token check, Tomcat's HTML 403 pages, ``200 []`` from a
failing datastore). It also plays the people in a Circle conference, who publish
their own streams as subtracks of the room, so the bot's authorization webhooks
and listener hooks are called with the shapes AMS really sends.

Every behaviour names the AMS (or Circle) source file it was read from; where
the deciding code is in AMS's closed Enterprise Edition the comment says so, and
``docs/ams-double.md`` lists those guesses. Source read: ant-media/Ant-Media-Server
(master, 2026-06) and ant-media/conference-call-application (2026-04).

Tests run the double in-process, so all state is guarded by one lock and the
inspection properties return snapshots.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import re
import secrets
import socket
import string
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import requests

from bot.sim.priority import NiceThreads

__all__ = [
    "COMMUNITY_EDITION",
    "DEFAULT_ADMIN_EMAIL",
    "DEFAULT_ADMIN_PASSWORD",
    "DEFAULT_APP_SETTINGS",
    "ENTERPRISE_EDITION",
    "FORM_CONTENT_TYPE",
    "HOOK_ENDED",
    "HOOK_NO_ACTIVE_SUBTRACKS",
    "HOOK_STARTED",
    "HOOK_TIMEOUT",
    "LOCKOUT_FAILURES",
    "LOCKOUT_SECONDS",
    "MAX_LIST_SIZE",
    "MSG_ID_INVALID",
    "MSG_ID_TAKEN",
    "MSG_INVALID_APP_JWT",
    "MSG_NOT_ALLOWED_IP",
    "PRESENTATION_SUFFIX",
    "PUBLISH_MODE",
    "REMOTE_BOT_IP",
    "WEBHOOK_TIMEOUT",
    "AmsDouble",
    "HookDelivery",
    "ManualClock",
    "Participant",
    "RecordedRequest",
    "circle_stream_id",
    "verify_hs256",
]

log = logging.getLogger("meetbot.sim.ams")

ENTERPRISE_EDITION = "Enterprise Edition"
COMMUNITY_EDITION = "Community Edition"
VERSION_NAME = "3.0.3"
BUILD_NUMBER = "20250110_1200"

#: DataStore.MAX_ITEM_IN_ONE_LIST: ``/broadcasts/list`` never returns more per page.
MAX_LIST_SIZE = 250
LOCKOUT_FAILURES = 3
LOCKOUT_SECONDS = 300

MSG_ID_TAKEN = "Stream id is already being used. Please change stream id or keep it empty"
MSG_ID_INVALID = "Stream id is not valid."
MSG_NOT_ALLOWED_IP = "Not allowed IP"
MSG_INVALID_APP_JWT = "Invalid App JWT Token"
MSG_NOT_AUTHENTICATED = "Not authenticated user"

DEFAULT_ADMIN_EMAIL = "admin@meetbot.test"
DEFAULT_ADMIN_PASSWORD = "correct-horse-battery-staple"

#: Where requests "come from" when ``ip_allowed`` is False: a TEST-NET-3 address,
#: standing in for a bot that runs on another machine than AMS.
REMOTE_BOT_IP = "203.0.113.7"

#: Allowed stream/room id characters (ams.md: ``A-Z a-z 0-9 - _ .``, no length limit).
STREAM_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

#: AcceptOnlyStreamsWithWebhook.java: ``setConnectTimeout(2 * 1000)``,
#: ``setSocketTimeout(5 * 1000)``. The play webhook is Enterprise code; the same
#: timeouts are assumed for it.
WEBHOOK_TIMEOUT = (2.0, 5.0)
#: AntMediaApplicationAdapter.sendPOST: connect, connection-request and socket
#: timeouts are all 2000 ms for listener hooks.
HOOK_TIMEOUT = (2.0, 2.0)
#: The ``mode`` of a WebRTC publish check. Enterprise code (WebSocketEnterpriseHandler)
#: passes it; AMS issue #7190 (3.0.0) and the webhook guide's screenshot both show
#: ``"mode": "live"`` (Red5's publish mode, StreamService.java, for RTMP too).
PUBLISH_MODE = "live"
#: conference-call-application react/src/pages/AntMedia.js startScreenSharing():
#: the screen share publishes ``publishStreamId + "_presentation"``.
PRESENTATION_SUFFIX = "_presentation"

#: AntMediaApplicationAdapter.HOOK_ACTION_* names the double sends.
HOOK_STARTED = "liveStreamStarted"
HOOK_ENDED = "liveStreamEnded"
HOOK_NO_ACTIVE_SUBTRACKS = "noActiveSubtracksLeftInMainTrack"
#: AppSettings.webhookContentType: ``application/json`` (default) or this.
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])token=)[^&\s\"]+")
#: Circle's makeid() alphabet (AntMedia.js): letters and digits.
_MAKEID_ALPHABET = string.ascii_letters + string.digits

#: AMS's own defaults for an application's settings. A settings POST starts from
#: these, not from the current values: that is the AMS quirk the bot must survive
#: (fields left out are reset), so the double must reproduce it.
DEFAULT_APP_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        # recording / muxing: ordinary settings the bot never touches
        "mp4MuxingEnabled": False,
        "webMMuxingEnabled": False,
        "addDateTimeToMp4FileName": False,
        "hlsMuxingEnabled": True,
        "hlsListSize": "15",
        "hlsTime": "2",
        "hlsPlayListType": "",
        "deleteHLSFilesOnEnded": True,
        "dashMuxingEnabled": False,
        "webRTCEnabled": True,
        "webRTCFrameRate": 30,
        "h264Enabled": True,
        "vp8Enabled": False,
        "h265Enabled": False,
        "dataChannelEnabled": True,
        "dataChannelPlayerDistribution": "all",
        "encoderSettingsString": "",
        "generatePreview": False,
        "objectDetectionEnabled": False,
        "maxResolutionAccept": 0,
        "stunServerURI": "stun:stun1.l.google.com:19302",
        "vodFolder": "",
        "s3RecordingEnabled": False,
        "acceptOnlyStreamsInDataStore": False,
        # listener hooks (AppSettings.java: listenerHookURL "", webhookContentType
        # application/json, webhookRetryCount 0, webhookRetryDelay 1000 ms)
        "listenerHookURL": "",
        "webhookContentType": "application/json",
        "webhookRetryCount": 0,
        "webhookRetryDelay": 1000,
        # rooms
        "acceptOnlyRoomsInDataStore": False,
        # one-time tokens, TOTP, JWT: one scheme per direction at most
        "publishTokenControlEnabled": False,
        "playTokenControlEnabled": False,
        "enableTimeTokenForPublish": False,
        "enableTimeTokenForPlay": False,
        "timeTokenSubscriberOnly": False,
        "publishJwtControlEnabled": False,
        "playJwtControlEnabled": False,
        "jwtStreamSecretKey": "",
        # REST access
        "jwtControlEnabled": False,
        "jwtSecretKey": "",
        "ipFilterEnabled": True,
        "remoteAllowedCIDR": "127.0.0.1",
        # per-join authorization webhooks
        "webhookAuthenticateURL": "",
        "webhookPlayAuthUrl": "",
    }
)

#: The token schemes AMS allows at most one of, per direction.
TOKEN_SCHEMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "publish": (
            "publishTokenControlEnabled",
            "publishJwtControlEnabled",
            "enableTimeTokenForPublish",
        ),
        "play": ("playTokenControlEnabled", "playJwtControlEnabled", "enableTimeTokenForPlay"),
    }
)

Clock = Callable[[], float]
StopSemantics = Literal["enterprise", "community"]


class ManualClock:
    """A clock a test moves by hand, so lockouts and token expiry need no sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward (or back, with a negative value); returns the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to an absolute unix time."""
        with self._lock:
            self._now = float(now)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the double received it (header names are lower-cased)."""

    method: str
    path: str
    query: dict[str, list[str]]
    json: Any
    headers: dict[str, str]
    body: bytes = b""
    at: float = 0.0

    def header(self, name: str, default: str | None = None) -> str | None:
        """Header value by case-insensitive name."""
        return self.headers.get(name.lower(), default)


@dataclass(frozen=True)
class HookDelivery:
    """One POST the double made: a publish/play authorization check or a listener hook.

    ``payload`` is what was encoded (the dict, before JSON or form encoding);
    ``status`` is the HTTP answer, or None when ``error`` says why there was none.
    """

    kind: Literal["publish", "play", "hook"]
    url: str
    payload: dict[str, Any]
    content_type: str
    body: bytes
    status: int | None
    error: str | None = None


@dataclass
class Participant:
    """One person in a Circle conference, as a test drives them through the double.

    ``stream_id`` is their own publish stream (a subtrack of the room), never the
    room id. The flags say what AMS currently lets them do: ``publishing`` (their
    camera/microphone stream is live), ``presenting`` (their ``_presentation``
    stream is live), ``playing`` (they watch and listen to the room). ``why`` is
    the last refusal, for assertion messages. The double updates the flags (under
    its lock) when AMS would: a refused reconnect, a REST stop of their stream...
    """

    room_id: str
    stream_id: str
    token: str | None
    name: str
    subscriber_id: str | None = None
    subscriber_code: str | None = None
    play_only: bool = False
    publishing: bool = False
    presenting: bool = False
    playing: bool = False
    why: str = ""

    @property
    def presentation_id(self) -> str:
        """The stream Circle publishes a screen share under."""
        return self.stream_id + PRESENTATION_SUFFIX

    @property
    def joined(self) -> bool:
        """In the meeting as Circle shows it: watching, and publishing unless play-only."""
        return self.playing and (self.play_only or self.publishing)


@dataclass
class _Live:
    """A stream AMS is receiving right now (the media connection, not the DB record)."""

    stream_id: str
    room_id: str
    person: Participant
    presentation: bool


@dataclass
class _Fault:
    kind: Literal["fail", "hang", "reset"]
    remaining: int
    pattern: re.Pattern[str] | None
    status: int = 500
    seconds: float = 0.0
    after_processing: bool = False


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json_reply(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> _Reply:
    return _Reply(status, json.dumps(obj).encode("utf-8"), "application/json", headers or [])


def _result(
    success: bool, message: str | None = "", data_id: str | None = "", error_id: int = 0
) -> dict[str, Any]:
    """AMS's ``Result`` object (rest/model/Result.java; ``new Result(false)`` has nulls)."""
    return {"success": success, "message": message, "dataId": data_id, "errorId": error_id}


def _empty(status: int) -> _Reply:
    return _Reply(status, b"", None)


_DESCRIPTIONS = {
    403: "The server understood the request but refuses to authorize it.",
    404: "The origin server did not find a current representation for the target resource "
    "or is not willing to disclose that one exists.",
    500: "The server encountered an unexpected condition that prevented it from fulfilling "
    "the request.",
    502: "The server, while acting as a gateway or proxy, received an invalid response from "
    "an inbound server it accessed while attempting to fulfill the request.",
    503: "The server is currently unable to handle the request due to a temporary overload or "
    "scheduled maintenance, which will likely be alleviated after some delay.",
}


def _tomcat_error(status: int, message: str | None = None) -> _Reply:
    """Tomcat's ErrorReportValve page, what ``HttpServletResponse.sendError`` produces.

    JWTFilter.java and IPFilter.java refuse with ``sendError(403, "...")``, so a REST
    403 is this HTML page with the message in it, not a JSON ``Result``. 5xx answers
    from the container look the same.
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    title = f"HTTP Status {status} \u2013 {html.escape(phrase)}"
    parts = [
        f'<!doctype html><html lang="en"><head><title>{title}</title>'
        '<style type="text/css">body {font-family:Tahoma,Arial,sans-serif;} '
        "h1, h2, h3, b {color:white;background-color:#525D76;} h1 {font-size:22px;} "
        "p {font-size:12px;} .line {height:1px;background-color:#525D76;border:none;}"
        "</style></head><body>",
        f'<h1>{title}</h1><hr class="line" /><p><b>Type</b> Status Report</p>',
    ]
    if message:
        parts.append(f"<p><b>Message</b> {html.escape(message)}</p>")
    description = _DESCRIPTIONS.get(status)
    if description:
        parts.append(f"<p><b>Description</b> {description}</p>")
    parts.append('<hr class="line" /><h3>Apache Tomcat</h3></body></html>')
    body = "".join(parts).encode("utf-8")
    return _Reply(status, body, "text/html;charset=utf-8", [("Content-Language", "en")])


def _error_page(status: int) -> _Reply:
    """What the servlet container sends for an injected 5xx: HTML, not JSON."""
    return _tomcat_error(status)


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def verify_hs256(token: str, key: bytes, now: float) -> tuple[dict[str, Any] | None, str]:
    """Verify a JWT the way AMS does (java-jwt defaults), against an injectable clock.

    Why not ``jwt.decode``: PyJWT reads the wall clock and warns on short keys; AMS
    uses java-jwt, which truncates "now" to whole seconds, has **zero leeway**,
    checks ``exp`` only when present, and rejects an ``iat`` or ``nbf`` in the
    future. Returns ``(claims, "ok")`` or ``(None, reason)``.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None, "malformed token"
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    except (ValueError, binascii.Error, UnicodeError):
        return None, "malformed token"
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None, "malformed token"
    if header.get("alg") != "HS256":
        return None, f"algorithm {header.get('alg')!r} is not HS256"
    expected = hmac.new(key, signing_input, hashlib.sha256).digest()
    if not key or not hmac.compare_digest(expected, signature):
        return None, "signature does not match the secret"
    whole_seconds = int(now)
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _is_number(claims[name]):
            return None, f"claim {name} is not a number"
    if "exp" in claims and whole_seconds > claims["exp"]:
        return None, "token expired"
    for name in ("iat", "nbf"):
        if name in claims and claims[name] > whole_seconds:
            return None, f"{name} is in the future"
    return claims, "ok"


def circle_stream_id(name: str) -> str:
    """The publish stream id Circle makes up when the link has no ``streamId``.

    conference-call-application react/src/pages/WaitingRoom.js: ``streamName
    .replace(/[\\W_]/g, "") + "_" + makeid(10)``: the typed name without anything
    but ASCII letters and digits (JavaScript's ``\\W`` is ASCII; ``_`` goes too),
    then ten random letters/digits (AntMedia.js makeid()).
    """
    kept = re.sub(r"[\W_]", "", name, flags=re.ASCII)
    return kept + "_" + "".join(secrets.choice(_MAKEID_ALPHABET) for _ in range(10))


def circle_status_metadata(
    *, mic_muted: bool = False, camera_on: bool = True, screen: bool = False, play_only: bool
) -> str:
    """The ``metaData`` Circle publishes with (AntMedia.js getUserStatusMetadata()).

    ``JSON.stringify`` output: compact, keys in this order, role ``"default"``
    (WebinarRoles.js) for a conference participant.
    """
    return json.dumps(
        {
            "isMicMuted": mic_muted,
            "isCameraOn": camera_on,
            "isScreenShared": screen,
            "playOnly": play_only,
            "role": "default",
        },
        separators=(",", ":"),
    )


def _circle_query(query: str) -> dict[str, str]:
    """Circle's query parameters: the SDK's getUrlParameter URL-decodes the *whole*
    query string, then splits on ``&`` and ``=`` (ams.md, "Circle links")."""
    params: dict[str, str] = {}
    for pair in unquote(query).split("&"):
        parts = pair.split("=")
        if len(parts) >= 2 and parts[0] and parts[0] not in params:
            params[parts[0]] = parts[1]  # the first match wins, text after a 2nd "=" is lost
    return params


def _ip_allowed(address: str, cidrs: str | None) -> bool:
    """AMS's ``remoteAllowedCIDR``: comma-separated addresses or networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in (cidrs or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _jersey_boolean(query: Mapping[str, list[str]], name: str) -> bool | None:
    """A ``Boolean`` ``@QueryParam``: absent is null; otherwise ``Boolean.valueOf``
    (only a case-insensitive ``true`` is true)."""
    values = query.get(name)
    if not values:
        return None
    return values[0].strip().lower() == "true"


def _settings_type_error(name: str, value: Any) -> str | None:
    """Jackson refuses a value of the wrong JSON type; so do we (catches client bugs)."""
    default = DEFAULT_APP_SETTINGS[name]
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = value is None or isinstance(value, str)
    return None if ok else f"{name} must be a {type(default).__name__}"


class _Server(NiceThreads, ThreadingHTTPServer):
    """ThreadingHTTPServer that can be stopped without waiting on slow handlers.

    ``block_on_close`` is off so ``server_close()`` does not join handler threads
    that a test made hang, and open keep-alive sockets are tracked so ``stop()``
    can shut them down and unblock their threads.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], double: AmsDouble) -> None:
        self.double = double
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """Parses, records, applies faults, and hands the request to the double."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the bot's requests.Session expects
    server_version = "AmsDouble/" + VERSION_NAME
    sys_version = ""
    timeout = 60  # idle keep-alive connections do not pin threads forever
    # Headers and body go out in two writes; with Nagle on, the client's delayed
    # ACK would add ~40 ms to every keep-alive call and skew the benchmarks.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Circle links carry ?token=<JWT> in the request line: never log a token.
        line = _TOKEN_IN_QUERY.sub(r"\1***", format % args)
        log.debug("%s - %s", self.address_string(), line)

    def _handle(self) -> None:
        double = self.server.double
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        raw = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            json=body,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=raw,
            at=time.monotonic(),
        )
        double._record(request)
        fault = double._take_fault(request.path)
        if fault is None:
            self._send(double._dispatch(request))
        elif fault.kind == "fail":
            self._send(_error_page(fault.status))
        elif fault.kind == "reset":
            if fault.after_processing:
                double._dispatch(request)
            self._reset()
        elif fault.after_processing:  # hang, but the work is done first
            reply = double._dispatch(request)
            if double._sleep(fault.seconds):
                self._send(reply)
            else:
                self._reset()
        else:  # hang before doing anything: a slow server
            if double._sleep(fault.seconds):
                self._send(double._dispatch(request))
            else:
                self._reset()

    def _send(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            if reply.content_type:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client gave up (timeout) and closed: nothing to do
            self.close_connection = True

    def _reset(self) -> None:
        """Close with RST and no answer: the client sees "connection reset"."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass


class AmsDouble:
    """An in-process, loopback Ant Media Server for one application.

    Typical use::

        with AmsDouble(stream_secret=SECRET) as ams:
            client = AmsClient(ams.url, ams.app)
            ...
            assert ams.count("POST", f"{ams.rest_base}/broadcasts/create") == 1

    ``stream_secret`` turns on JWT control for publish and play (as an operator
    would for Circle); ``rest_jwt_secret`` turns on the REST JWT filter;
    ``server_jwt_secret`` enables ``ProxyAuthorization`` on the management API.
    ``ip_allowed=False`` makes requests appear to come from ``REMOTE_BOT_IP``,
    which the default ``remoteAllowedCIDR`` (``127.0.0.1``) refuses.
    ``stop_semantics`` picks what ``POST /broadcasts/{id}/stop`` and ``DELETE`` do
    to participants: ``"community"`` is the open source (stopSubtracks ignored),
    ``"enterprise"`` what the docs promise (participants stopped); by default it
    follows ``edition``.

    People join like Circle does with :meth:`circle_join` (a link), then
    :meth:`share_screen`, :meth:`reconnect`, :meth:`hang_up`; :meth:`join`,
    :meth:`leave` and :meth:`check_join` are shorthands over the same path.
    """

    def __init__(
        self,
        app: str = "Conference",
        *,
        stream_secret: str | None = None,
        rest_jwt_secret: str | None = None,
        server_jwt_secret: str | None = None,
        edition: str = ENTERPRISE_EDITION,
        stop_semantics: StopSemantics | None = None,
        ip_allowed: bool = True,
        users: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
        clock: Clock = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
        hook_workers: int = 4,
    ) -> None:
        self.app = app
        self.edition = edition
        self.stop_semantics: StopSemantics = stop_semantics or (
            "enterprise" if edition == ENTERPRISE_EDITION else "community"
        )
        self.ip_allowed = ip_allowed
        self.clock: Clock = clock
        self.latency: float = 0.0
        self.server_jwt_secret = server_jwt_secret
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

        initial = dict(DEFAULT_APP_SETTINGS)
        if stream_secret is not None:
            initial.update(
                publishJwtControlEnabled=True,
                playJwtControlEnabled=True,
                jwtStreamSecretKey=stream_secret,
            )
        if rest_jwt_secret is not None:
            initial.update(jwtControlEnabled=True, jwtSecretKey=rest_jwt_secret)
        if settings:
            initial.update(settings)
        self._settings: dict[str, Any] = initial  # replaced, never mutated in place
        self._broadcasts: dict[str, dict[str, Any]] = {}
        # Each room's subtracks (records whose mainTrackStreamId is the room), in the
        # order they were made: the records MongoStore's getActiveSubtracks and
        # getActiveSubtracksCount find with a query on that field (getFilterForSubtracks;
        # MapDBStore, the single-node store, scans its map). A scan of every record
        # here cost the double a millisecond of CPU per call at 5,000 rooms, under its
        # lock, and made the sweep benchmark measure the double rather than the bot.
        self._tracks_of: dict[str, dict[str, None]] = {}
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._users: dict[str, str] = dict(
            users if users is not None else {DEFAULT_ADMIN_EMAIL: DEFAULT_ADMIN_PASSWORD}
        )
        self._failed_logins: dict[str, int] = {}
        self._blocked_until: dict[str, float] = {}
        self._sessions: set[str] = set()

        # Circle's people and their live streams (the media side, apart from the DB).
        self._live: dict[str, _Live] = {}
        self._people: list[Participant] = []
        # AcceptOnlyStreamsWithWebhook.isPublishAllowed is ``synchronized`` and there
        # is one instance per application: one check at a time, whoever asks.
        self._publish_check_lock = threading.Lock()
        self._datastore_faults: dict[str, int] = {"list": 0, "get": 0}

        # Listener hooks: AntMediaApplicationAdapter.notifyHook runs each POST with
        # vertx.executeBlocking(..., ordered=false): a worker pool, no ordering.
        self._hook_workers = max(1, hook_workers)
        self._hook_pool: ThreadPoolExecutor | None = None
        self._hooks_held = False
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._deliveries: list[HookDelivery] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> AmsDouble:
        """Bind (port 0 gives an ephemeral port) and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # stop() waits up to one poll
            name=f"ams-double-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port, without waiting for hung handlers."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in latency/hang faults
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            pool, self._hook_pool = self._hook_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._server = None
        self._thread = None

    def __enter__(self) -> AmsDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        """The bound port (ephemeral unless one was given)."""
        if self._server is None:
            raise RuntimeError("AmsDouble is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, what the bot calls ``AMS_URL`` (e.g. ``http://127.0.0.1:41234``)."""
        return f"http://{self._host}:{self.port}"

    @property
    def rest_base(self) -> str:
        """Path prefix of the app REST API, for ``count()``: ``/Conference/rest/v2``."""
        return f"/{self.app}/rest/v2"

    @property
    def client_ip(self) -> str:
        """The address the IP filter judges requests by."""
        return "127.0.0.1" if self.ip_allowed else REMOTE_BOT_IP

    # ------------------------------------------------------------------ inspection

    @property
    def broadcasts(self) -> dict[str, dict[str, Any]]:
        """Snapshot of the data store: id → Broadcast (participant subtracks included)."""
        with self._lock:
            return copy.deepcopy(self._broadcasts)

    @property
    def settings(self) -> Mapping[str, Any]:
        """Read-only view of the current AppSettings (change them with ``update_settings``)."""
        with self._lock:
            return MappingProxyType(self._settings)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (faulted ones included)."""
        with self._lock:
            return list(self._requests)

    @property
    def deliveries(self) -> list[HookDelivery]:
        """Every POST the double made (auth checks and listener hooks), oldest first."""
        with self._lock:
            return list(self._deliveries)

    def count(self, method: str | None, path: str | re.Pattern[str]) -> int:
        """How many requests matched: ``method`` (None or ``"*"`` = any) and a path.

        ``path`` is a prefix of the full path (e.g. ``f"{ams.rest_base}/broadcasts/"``);
        a compiled pattern, or a string starting with ``^``, is a regex searched in it.
        """
        if isinstance(path, str) and path.startswith("^"):
            path = re.compile(path)
        matched = 0
        for request in self.requests:
            if method not in (None, "*") and request.method != method.upper():
                continue
            if isinstance(path, re.Pattern):
                if path.search(request.path):
                    matched += 1
            elif request.path.startswith(path):
                matched += 1
        return matched

    def clear_requests(self) -> None:
        """Forget the request log, so a test can count only what happens next."""
        with self._lock:
            self._requests.clear()

    def participants(self, room_id: str) -> list[str]:
        """Ids of the room's subtracks in the data store (what the REST API can see).

        After a Community-Edition DELETE these records are gone while the people
        may still be connected: :meth:`connected` says who is.
        """
        with self._lock:
            return [b["streamId"] for b in self._tracks(room_id)]

    def connected(self, room_id: str) -> list[str]:
        """Streams AMS is receiving in the room right now (cameras and screen shares)."""
        with self._lock:
            return [s.stream_id for s in self._live.values() if s.room_id == room_id]

    def watching(self, room_id: str) -> list[str]:
        """Stream ids of the people who can watch and listen to the room right now."""
        with self._lock:
            return [p.stream_id for p in self._people if p.room_id == room_id and p.playing]

    def people(self, room_id: str | None = None) -> list[Participant]:
        """The Circle participants the double knows (the live objects, not copies)."""
        with self._lock:
            return [p for p in self._people if room_id is None or p.room_id == room_id]

    # ------------------------------------------------------------------ test controls

    def fail_next(self, n: int = 1, status: int = 500, path_regex: str | None = None) -> None:
        """Answer the next ``n`` matching requests with ``status`` (an HTML error page)."""
        self._add_fault(_Fault("fail", n, _compile(path_regex), status=status))

    def hang_next(
        self,
        n: int = 1,
        seconds: float = 5.0,
        path_regex: str | None = None,
        *,
        after_processing: bool = False,
    ) -> None:
        """Delay the next ``n`` matching requests by ``seconds`` (longer than the client timeout).

        By default the request is only processed after the delay (a slow server:
        a create may land *after* the client gave up). With ``after_processing``
        the work is done first and only the answer is late (the room exists but the
        client never hears so).
        """
        self._add_fault(
            _Fault(
                "hang", n, _compile(path_regex), seconds=seconds, after_processing=after_processing
            )
        )

    def reset_next(
        self, n: int = 1, path_regex: str | None = None, *, after_processing: bool = False
    ) -> None:
        """Reset the connection (RST, no answer) on the next ``n`` matching requests.

        With ``after_processing`` the request takes effect before the reset.
        """
        self._add_fault(_Fault("reset", n, _compile(path_regex), after_processing=after_processing))

    def clear_faults(self) -> None:
        """Drop pending faults that did not fire (e.g. a path that was never called)."""
        with self._lock:
            self._faults.clear()
            self._datastore_faults = {"list": 0, "get": 0}

    def datastore_fault(self, n: int = 1, *, reads: Iterable[str] = ("list",)) -> None:
        """Make the next ``n`` datastore reads of the given kinds fail inside AMS.

        MongoStore.getBroadcastList catches every exception and returns the empty
        list it started with, so ``GET /broadcasts/list/...`` answers ``200 []``.
        MongoStore.get catches too and returns null, so with ``"get"`` in ``reads``
        ``GET /broadcasts/{id}`` answers 404 with an empty body for a room that
        exists (on AMS only when the broadcast is not in its Caffeine cache).
        """
        kinds = set(reads)
        unknown = kinds - {"list", "get"}
        if unknown:
            raise ValueError(f"unknown datastore reads: {sorted(unknown)}")
        with self._lock:
            for kind in kinds:
                self._datastore_faults[kind] += max(0, n)

    def set_stream_secret(self, secret: str) -> None:
        """Rotate ``jwtStreamSecretKey`` as the management API would: live, at once."""
        self.update_settings(jwtStreamSecretKey=secret)

    def update_settings(self, **changes: Any) -> None:
        """Change AppSettings fields directly (test shortcut; no validation)."""
        with self._lock:
            merged = dict(self._settings)
            merged.update(changes)
            self._settings = merged

    def expire_sessions(self) -> None:
        """Forget every management session, as an AMS restart or session timeout would."""
        with self._lock:
            self._sessions.clear()

    def is_locked(self, email: str) -> bool:
        """Whether the management user is currently blocked after failed logins."""
        with self._lock:
            return self._blocked_until.get(email, 0.0) > self.clock()

    # ------------------------------------------------------------------ listener hooks

    def hold_hooks(self) -> None:
        """Keep listener hooks instead of sending them, until :meth:`release_hooks`.

        AMS sends hooks from a worker pool without ordering, so an ``ended`` can
        reach the bot before its ``started``; holding them lets a test choose the
        order deterministically.
        """
        with self._lock:
            self._hooks_held = True

    def held_hooks(self) -> list[dict[str, Any]]:
        """Payloads of the hooks being held, in the order AMS produced them."""
        with self._lock:
            return [copy.deepcopy(payload) for _url, payload in self._held]

    def release_hooks(
        self,
        order: Literal["reversed", "fifo"] | Callable[[list[dict[str, Any]]], list[int]] = (
            "reversed"
        ),
        *,
        keep_holding: bool = False,
    ) -> list[HookDelivery]:
        """Send the held hooks one after another, in ``order``, and return the deliveries.

        ``order`` is ``"reversed"`` (newest first), ``"fifo"``, or a function given
        the payloads that returns their indexes in the wanted order. Later hooks
        are sent through the pool again unless ``keep_holding``.
        """
        with self._lock:
            held, self._held = self._held, []
            self._hooks_held = keep_holding
        if order == "reversed":
            indexes = list(range(len(held)))[::-1]
        elif order == "fifo":
            indexes = list(range(len(held)))
        else:
            indexes = list(order([copy.deepcopy(p) for _u, p in held]))
            if sorted(indexes) != list(range(len(held))):
                raise ValueError("order must return every held hook's index exactly once")
        return [self._deliver_hook(*held[i]) for i in indexes]

    def wait_hooks(self, timeout: float = 10.0) -> bool:
        """Wait until no listener hook is queued or being sent (held ones do not count)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # ------------------------------------------------------------------ Circle participants

    def circle_join(
        self,
        link: str,
        *,
        name: str | None = None,
        play_only: bool | None = None,
        mic_muted: bool = False,
        camera_on: bool = True,
    ) -> Participant:
        """Open a Circle link and join, as Circle does; returns the participant.

        Circle (conference-call-application AntMedia.js) reads ``token``,
        ``streamId``, ``streamName``, ``playOnly``, ``subscriberId`` and
        ``subscriberCode`` from the link; the person's own stream id is the
        link's ``streamId``, else :func:`circle_stream_id` of their name (``name``,
        else the link's ``streamName``, else ``"Anonymous"``). joinRoom() publishes
        that stream into the room (unless play-only), then plays the room with the
        same token. Here: the publish check (JWT, then ``webhookAuthenticateURL``),
        the play check (JWT, then ``webhookPlayAuthUrl``), then the stream goes
        live and ``liveStreamStarted`` is sent. Refusals leave the flags down and
        say why in ``why``.
        """
        room_id, params = self._parse_link(link)
        display = name if name is not None else params.get("streamName") or "Anonymous"
        only = play_only if play_only is not None else params.get("playOnly") == "true"
        if params.get("streamId"):
            stream_id = params["streamId"]
        elif only:  # AntMedia.js: a play-only visitor gets a bare makeid(10)
            stream_id = "".join(secrets.choice(_MAKEID_ALPHABET) for _ in range(10))
        else:
            stream_id = circle_stream_id(display)
        person = Participant(
            room_id=room_id,
            stream_id=stream_id,
            token=params.get("token", ""),  # getToken(): "" when the link has none
            name=display,
            subscriber_id=params.get("subscriberId"),
            subscriber_code=params.get("subscriberCode"),
            play_only=only,
        )
        with self._lock:
            self._people.append(person)
        self._connect(person, mic_muted=mic_muted, camera_on=camera_on)
        return person

    def share_screen(self, person: Participant) -> bool:
        """Start a screen share: publish ``<stream id>_presentation`` with the same token.

        AntMedia.js startScreenSharing(): name ``"<name> - Screen Share"``, the
        status metadata with ``isScreenShared: true``, main track = the room.
        """
        if person.play_only:
            raise ValueError("a play-only participant cannot share a screen")
        meta = circle_status_metadata(screen=True, play_only=False)
        return self._publish(
            person,
            person.presentation_id,
            name=f"{person.name} - Screen Share",
            metadata=meta,
            presentation=True,
        )

    def stop_screen(self, person: Participant) -> bool:
        """End the screen share (its ``liveStreamEnded`` follows)."""
        return self._end_stream(person.presentation_id)

    def reconnect(self, person: Participant) -> bool:
        """An automatic reconnect: the streams end, then are published again.

        The JS SDK re-sends the same token, so both webhooks run again with it; a
        refused publish or play leaves the person out (flags down). Returns True
        when everything the person had (camera, screen share, play) came back.
        """
        with self._lock:
            had_screen = person.presenting
        self._end_stream(person.presentation_id)
        self._end_stream(person.stream_id)
        with self._lock:
            person.playing = False
        ok = self._connect(person)
        if had_screen and ok:
            ok = self.share_screen(person)
        return ok

    def hang_up(self, person: Participant) -> None:
        """Leave the meeting: every stream of theirs ends, they stop watching."""
        self._end_stream(person.presentation_id)
        self._end_stream(person.stream_id)
        with self._lock:
            person.playing = False
            if person in self._people:
                self._people.remove(person)

    # ------------------------------------------------------------------ shorthands

    def check_join(
        self,
        room_id: str,
        token: str | None,
        mode: Literal["join", "publish", "play"] = "join",
        *,
        participant_id: str | None = None,
        name: str = "Anonymous",
        subscriber_id: str | None = None,
        query_params: Mapping[str, str] | None = None,
    ) -> tuple[bool, str]:
        """Would AMS let a Circle join through? ``(allowed, reason)``, nothing goes live.

        ``"publish"`` runs the publish check for ``participant_id`` (the person's
        stream id; Circle's generated ``<name>_<10 random>`` when None), ``"play"``
        the play check of the room, ``"join"`` (default) both, as Circle does.
        The webhooks are really called.
        """
        if mode not in ("join", "publish", "play"):
            raise ValueError(f"mode must be 'join', 'publish' or 'play', not {mode!r}")
        if mode in ("join", "publish"):
            stream_id = participant_id or circle_stream_id(name)
            ok, why = self._check_publish(
                room_id,
                stream_id,
                token,
                subscriber_id=subscriber_id,
                metadata=circle_status_metadata(play_only=False),
                query_params=query_params,
            )
            if not ok:
                return False, why
        if mode in ("join", "play"):
            return self._check_play(room_id, token, subscriber_id=subscriber_id)
        return True, "ok"

    def join(
        self,
        room_id: str,
        token: str | None,
        participant_id: str,
        *,
        name: str | None = None,
        subscriber_id: str | None = None,
    ) -> bool:
        """A participant joins under the stream id ``participant_id``; True when it is live.

        The same path as :meth:`circle_join` (publish check, play check, hook). A
        room that does not exist is auto-created as a "zombi" broadcast unless
        ``acceptOnlyRoomsInDataStore`` refuses it. A stream already live in this
        room counts as joined (nothing is re-checked).
        """
        with self._lock:
            live = self._live.get(participant_id)
            if live is not None:
                return live.room_id == room_id
        person = Participant(
            room_id=room_id,
            stream_id=participant_id,
            token=token,
            name=name or participant_id,
            subscriber_id=subscriber_id,
        )
        with self._lock:
            self._people.append(person)
        self._connect(person)
        if not person.publishing:
            log.debug("join of %s refused: %s", room_id, person.why)
        return person.publishing

    def leave(self, room_id: str, participant_id: str) -> bool:
        """The stream ``participant_id`` hangs up. The last one out finishes the room."""
        with self._lock:
            live = self._live.get(participant_id)
            if live is None or live.room_id != room_id:
                return False
            person = live.person
        if participant_id == person.stream_id:
            self.hang_up(person)
            return True
        return self._end_stream(participant_id)

    # ------------------------------------------------------------------ internals: joins

    def _parse_link(self, link: str) -> tuple[str, dict[str, str]]:
        parts = urlsplit(link)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if len(segments) < 2 or segments[0] != self.app:
            raise ValueError(f"not a Circle link of app {self.app!r}: {parts.path!r}")
        return segments[-1], _circle_query(parts.query)

    def _connect(
        self, person: Participant, *, mic_muted: bool = False, camera_on: bool = True
    ) -> bool:
        """joinRoom(): publish check, play check, then the stream goes live."""
        publish_ok = True
        meta = circle_status_metadata(
            mic_muted=mic_muted, camera_on=camera_on, play_only=person.play_only
        )
        if not person.play_only:
            publish_ok, why = self._check_publish(
                person.room_id,
                person.stream_id,
                person.token,
                subscriber_id=person.subscriber_id,
                subscriber_code=person.subscriber_code,
                metadata=meta,
            )
            if not publish_ok:
                person.why = why
        play_ok, why = self._check_play(
            person.room_id,
            person.token,
            subscriber_id=person.subscriber_id,
            subscriber_code=person.subscriber_code,
        )
        with self._lock:
            person.playing = play_ok
            if not play_ok:
                person.why = why
        if not person.play_only and publish_ok:
            publish_ok = self._go_live(person, person.stream_id, person.name, meta, False)
        return play_ok and publish_ok

    def _publish(
        self, person: Participant, stream_id: str, *, name: str, metadata: str, presentation: bool
    ) -> bool:
        ok, why = self._check_publish(
            person.room_id,
            stream_id,
            person.token,
            subscriber_id=person.subscriber_id,
            subscriber_code=person.subscriber_code,
            metadata=metadata,
        )
        if not ok:
            person.why = why
            return False
        return self._go_live(person, stream_id, name, metadata, presentation)

    def _check_publish(
        self,
        room_id: str,
        stream_id: str,
        token: str | None,
        *,
        subscriber_id: str | None = None,
        subscriber_code: str | None = None,
        metadata: str | None = None,
        query_params: Mapping[str, str] | None = None,
    ) -> tuple[bool, str]:
        """The publish security chain for a participant's stream in ``room_id``."""
        with self._lock:
            settings = self._settings
            edition = self.edition
            room = copy.deepcopy(self._broadcasts.get(room_id))
        # Community Edition cannot host Circle: WebSocketCommunityHandler.java answers
        # every WebRTC play with "notFound" and relays a WebRTC publish to the local
        # RTMP server without the token. The double checks nothing there (it keeps CE
        # for /version, the doctor's warning and the stop semantics).
        if edition != ENTERPRISE_EDITION:
            return True, "community edition: tokens are not checked"
        # Enterprise-only (closed source): the stream JWT check. ams.md: the claim
        # streamId is the room id (the conference publish token), type "publish".
        if settings["publishJwtControlEnabled"]:
            ok, why = self._check_stream_jwt(settings, room_id, token)
            if not ok:
                return False, why
        # Enterprise-only: acceptOnlyRoomsInDataStore (Community never reads it).
        if settings.get("acceptOnlyRoomsInDataStore") and (
            room is None or room.get("mainTrackStreamId")
        ):
            return False, "room is not in the data store (acceptOnlyRoomsInDataStore)"
        # AcceptOnlyStreamsWithWebhook.java: synchronized, so one app's checks queue.
        with self._publish_check_lock:
            url = self.settings.get("webhookAuthenticateURL") or ""
            if not url:
                return True, "ok"
            payload: dict[str, Any] = {
                "appName": self.app,
                "name": stream_id,  # "for backward compatibility": the same value
                "streamId": stream_id,  # the published stream: the participant's own
                "mode": PUBLISH_MODE,
            }
            # addPropertyIfNotNull: null fields are left out ("" is not null).
            for key, value in (
                ("token", token),
                ("subscriberId", subscriber_id),
                ("subscriberCode", subscriber_code),
                ("metaData", metadata),
            ):
                if value is not None:
                    payload[key] = value
            if query_params is not None:  # Java's Map.toString(): {a=b, c=d}
                payload["queryParams"] = (
                    "{" + ", ".join(f"{k}={v}" for k, v in query_params.items()) + "}"
                )
            # new StringEntity(String): ISO-8859-1, unmappable characters become "?";
            # Content-Type is set to exactly "application/json"; Gson writes compact.
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
            body = text.encode("latin-1", errors="replace")
            sent = self._post("publish", url, payload, body, "application/json")
        if sent.status is None:
            return False, f"authorization webhook unreachable: {sent.error}"
        if sent.status != 200:  # result.set(statuscode == 200): only 200 lets it through
            return False, f"authorization webhook answered HTTP {sent.status}"
        return True, "ok"

    def _check_play(
        self,
        room_id: str,
        token: str | None,
        *,
        subscriber_id: str | None = None,
        subscriber_code: str | None = None,
    ) -> tuple[bool, str]:
        """The WebRTC play security chain; Circle plays the room id with its token."""
        with self._lock:
            settings = self._settings
            edition = self.edition
        if edition != ENTERPRISE_EDITION:  # see _check_publish: no Circle on CE
            return True, "community edition: tokens are not checked"
        if settings["playJwtControlEnabled"]:  # Enterprise-only, as for publish
            ok, why = self._check_stream_jwt(settings, room_id, token)
            if not ok:
                return False, why
        url = settings.get("webhookPlayAuthUrl") or ""
        if not url:
            return True, "ok"
        # Enterprise-only (WebSocketEnterpriseHandler): the shape is the webhook
        # guide's (docs webhook-stream-authorization.md, AMS 2.9.1+). Null fields are
        # assumed left out like the publish check's. Circle (AntMedia.js joinRoom)
        # plays with metaData '{}'; Circle is served by AMS itself, so the websocket's
        # Origin is the AMS address.
        payload: dict[str, Any] = {
            "streamId": room_id,
            "mode": "play",
            "appName": self.app,
            "origin": self.url,
        }
        for key, value in (
            ("token", token),
            ("subscriberId", subscriber_id),
            ("subscriberCode", subscriber_code),
            ("metaData", "{}"),
        ):
            if value is not None:
                payload[key] = value
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        sent = self._post("play", url, payload, body, "application/json")
        if sent.status is None:
            return False, f"play webhook unreachable: {sent.error}"
        if sent.status != 200:
            return False, f"play webhook answered HTTP {sent.status}"
        return True, "ok"

    def _check_stream_jwt(
        self, settings: Mapping[str, Any], room_id: str, token: str | None
    ) -> tuple[bool, str]:
        if not token:
            return False, "unauthorized_access: no token"
        secret = settings.get("jwtStreamSecretKey") or ""
        claims, why = verify_hs256(token, secret.encode("utf-8"), self.clock())
        if claims is None:
            return False, f"unauthorized_access: {why}"
        if claims.get("streamId") != room_id:
            return False, "unauthorized_access: streamId claim does not match the room"
        if claims.get("type") != "publish":
            return False, "unauthorized_access: type claim is not 'publish'"
        return True, "ok"

    def _post(
        self,
        kind: Literal["publish", "play", "hook"],
        url: str,
        payload: dict[str, Any],
        body: bytes,
        content_type: str,
    ) -> HookDelivery:
        """One POST as Apache HttpClient makes it: no redirects followed for a POST."""
        timeout = HOOK_TIMEOUT if kind == "hook" else WEBHOOK_TIMEOUT
        status: int | None = None
        error: str | None = None
        try:
            answer = requests.post(
                url,
                data=body,
                headers={"Content-Type": content_type},
                timeout=timeout,
                allow_redirects=False,
            )
            status = answer.status_code
        except requests.RequestException as exc:
            error = type(exc).__name__
        delivery = HookDelivery(
            kind, url, copy.deepcopy(payload), content_type, body, status, error
        )
        with self._lock:
            self._deliveries.append(delivery)
        return delivery

    def _go_live(
        self, person: Participant, stream_id: str, name: str, metadata: str, presentation: bool
    ) -> bool:
        """The publish started: the subtrack's record, the room's status, the hook."""
        now = self.clock()
        with self._lock:
            if stream_id in self._live:
                # A second publisher of a live id gets "streamIdInUse"
                # (WebSocketCommunityHandler.java; Enterprise assumed the same).
                person.why = "already publishing"
                return False
            room = self._broadcasts.get(person.room_id)
            if room is None:
                room = _new_broadcast(
                    person.room_id, app=self.app, name=person.room_id, now=now, zombi=True
                )
                self._put_broadcast(room)
            track = _new_broadcast(
                stream_id, app=self.app, name=name, now=now, meta=metadata, zombi=True
            )
            track.update(
                status="broadcasting",
                mainTrackStreamId=person.room_id,
                startTime=int(now * 1000),
                publishType="WebRTC",
            )
            self._put_broadcast(track)
            if stream_id not in room.get("subTrackStreamIds", []):
                room["subTrackStreamIds"] = [*room.get("subTrackStreamIds", []), stream_id]
            room["status"] = "broadcasting"
            room["updateTime"] = int(now * 1000)
            self._live[stream_id] = _Live(stream_id, person.room_id, person, presentation)
            if presentation:
                person.presenting = True
            else:
                person.publishing = True
            # AntMediaApplicationAdapter.startPublish → notifyHook(liveStreamStarted)
            self._queue_hook(track, HOOK_STARTED, person.subscriber_id)
        return True

    def _end_stream(self, stream_id: str) -> bool:
        """A live stream stops (hang-up, reconnect, REST stop): closeBroadcast()."""
        with self._lock:
            live = self._live.pop(stream_id, None)
            if live is None:
                return False
            if live.presentation:
                live.person.presenting = False
            else:
                live.person.publishing = False
            track = self._broadcasts.get(stream_id)
            if track is None:  # its record was deleted meanwhile: closeBroadcast is silent
                return True
            # closeBroadcast: a zombi is deleted, else marked finished; then the hook.
            if track.get("zombi"):
                self._remove_track(stream_id)
            else:
                track["status"] = "finished"
            self._queue_hook(track, HOOK_ENDED, live.person.subscriber_id)
            self._main_track_update(live.room_id)
        return True

    def _main_track_update(self, room_id: str) -> None:
        """updateMainTrackWithRecentlyFinishedBroadcast: no active subtrack left →
        a zombi room is deleted, a REST-made one finished; then the room's hook."""
        room = self._broadcasts.get(room_id)
        if room is None or self._active_tracks(room_id):
            return
        if room.get("zombi"):
            self._drop_broadcast(room_id)
        else:
            room["status"] = "finished"  # a REST-made room stays: the bot must delete it
            room["updateTime"] = int(self.clock() * 1000)
        # notifyNoActiveSubtracksLeftInMainTrack: id = the room, no mainTrackId.
        self._queue_hook(room, HOOK_NO_ACTIVE_SUBTRACKS, None, main_track=False, metadata=False)

    # ------------------------------------------------------------------ internals: hooks

    def _queue_hook(
        self,
        broadcast: Mapping[str, Any],
        action: str,
        subscriber_id: str | None,
        *,
        main_track: bool = True,
        metadata: bool = True,
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        """AntMediaApplicationAdapter.notifyHook: build the variables, send from the pool.

        Called with ``self._lock`` held. The URL is the broadcast's own
        ``listenerHookURL`` if set, else the app's (getListenerHookURL).
        """
        url = (broadcast.get("listenerHookURL") or "").strip() or (
            self._settings.get("listenerHookURL") or ""
        ).strip()
        if not url:
            return
        variables: dict[str, Any] = {"id": broadcast["streamId"], "action": action}
        mains = broadcast.get("mainTrackStreamId") if main_track else None

        def put(key: str, value: Any) -> None:  # putToMap: null or blank is left out
            if value is not None and str(value).strip():
                variables[key] = value

        put("streamName", broadcast.get("name"))
        put("category", broadcast.get("category"))
        put("mainTrackId", mains)
        put("roomId", mains)
        put("subscriberId", subscriber_id)
        put("app", self.app)
        meta = broadcast.get("metaData") if metadata else None
        if isinstance(meta, str) and meta.strip():
            # json-simple: a JSON object goes in as an object, text that does not parse
            # as a string; other JSON (an array, a number) throws ClassCastException,
            # which notifyHook does not catch: no hook at all.
            try:
                parsed: Any = json.loads(meta)
            except ValueError:
                parsed = meta
            else:
                if not isinstance(parsed, dict):
                    log.debug("hook %s dropped: metadata is JSON but not an object", action)
                    return
            put("metadata", parsed)
        # Taken when the worker runs, in ms, as a string: two events in the same
        # millisecond tie.
        put("timestamp", str(int(self.clock() * 1000)))
        for key, value in (parameters or {}).items():
            put(key, value)
        if self._hooks_held:
            self._held.append((url, variables))
            return
        if self._hook_pool is None:
            self._hook_pool = ThreadPoolExecutor(self._hook_workers, "ams-double-hook")
        self._in_flight += 1
        try:
            self._hook_pool.submit(self._pooled_hook, url, variables)
        except RuntimeError:  # the double is stopping
            self._in_flight -= 1

    def _pooled_hook(self, url: str, variables: dict[str, Any]) -> None:
        try:
            self._deliver_hook(url, variables)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _deliver_hook(self, url: str, variables: dict[str, Any]) -> HookDelivery:
        """sendPOST: JSON (json-simple) or form encoding, retried ``webhookRetryCount``
        times after ``webhookRetryDelay`` ms when the answer is not 200."""
        with self._lock:
            settings = self._settings
        if settings.get("webhookContentType") == FORM_CONTENT_TYPE:
            pairs = [
                (k, json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else str(v))
                for k, v in variables.items()
            ]
            # UrlEncodedFormEntity's default charset is ISO-8859-1.
            body = urlencode(pairs, encoding="latin-1", errors="replace").encode("ascii")
            content_type = f"{FORM_CONTENT_TYPE}; charset=ISO-8859-1"
        else:
            # json-simple escapes "/" as "\/"; ContentType.APPLICATION_JSON is UTF-8.
            text = json.dumps(variables, separators=(",", ":"), ensure_ascii=False)
            body = text.replace("/", "\\/").encode("utf-8")
            content_type = "application/json; charset=UTF-8"
        retries = int(settings.get("webhookRetryCount") or 0)
        delay = float(settings.get("webhookRetryDelay") or 0) / 1000.0
        while True:
            sent = self._post("hook", url, variables, body, content_type)
            if sent.status == 200 or retries < 1 or not self._sleep(delay):
                return sent
            retries -= 1

    # ------------------------------------------------------------------ internals: plumbing

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            return
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.pattern is None or fault.pattern.search(path)):
                    fault.remaining -= 1
                    taken = copy.copy(fault)
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return taken
        return None

    def _take_datastore_fault(self, kind: str) -> bool:
        with self._lock:
            if self._datastore_faults.get(kind, 0) > 0:
                self._datastore_faults[kind] -= 1
                return True
        return False

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the double is stopping; False means "stop, do not answer"."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)

    def _dispatch(self, request: RecordedRequest) -> _Reply:
        segments = [unquote(s) for s in request.path.split("/")[1:]]
        if segments[:2] == ["rest", "v2"]:
            return self._management(request, segments[2:])
        if segments and segments[0] == self.app:
            if segments[1:3] == ["rest", "v2"]:
                return self._app_rest(request, segments[3:])
            if request.method == "GET" and len(segments) >= 2:
                return self._circle_page(segments[1], "token" in request.query)
        return _empty(404)

    # ------------------------------------------------------------------ internals: app REST

    def _rest_filters(self, request: RecordedRequest) -> _Reply | None:
        """The app's REST filters in StreamApp's web.xml order: JWT, then IP.

        JWTFilter.java: the ``Authorization`` header, a leading ``Bearer`` (any
        case) stripped if present, verified with ``jwtSecretKey`` (java-jwt, no
        claims required). IPFilter.java: ``remoteAllowedCIDR`` when
        ``ipFilterEnabled``. Both refuse with ``sendError(403, ...)``: Tomcat HTML.
        """
        settings = self._settings
        if settings.get("jwtControlEnabled"):
            auth = request.header("authorization")
            token = auth
            if token is not None and token.lower().startswith("bearer"):
                token = token[len("bearer") :].strip()
            key = (settings.get("jwtSecretKey") or "").encode("utf-8")
            claims = None
            if token is not None:
                claims, _why = verify_hs256(token, key, self.clock())
            if claims is None:
                return _tomcat_error(403, MSG_INVALID_APP_JWT)
        if settings.get("ipFilterEnabled") and not _ip_allowed(
            self.client_ip, settings.get("remoteAllowedCIDR")
        ):
            return _tomcat_error(403, MSG_NOT_ALLOWED_IP)
        return None

    def _app_rest(self, request: RecordedRequest, segs: list[str]) -> _Reply:
        if self.latency > 0 and not self._sleep(self.latency):
            return _empty(503)
        denied = self._rest_filters(request)
        if denied is not None:
            return denied
        method = request.method
        match segs:
            case ["version"] if method == "GET":
                return _json_reply(
                    200,
                    {
                        "versionName": VERSION_NAME,
                        "versionType": self.edition,
                        "buildNumber": BUILD_NUMBER,
                    },
                )
            case ["broadcasts", "create"] if method == "POST":
                return self._create(request)
            case ["broadcasts", "list", offset, size] if method == "GET":
                return self._list(offset, size)
            case ["broadcasts", stream_id] if method == "GET":
                if self._take_datastore_fault("get"):
                    return _empty(404)  # MongoStore.get swallowed the error: null
                with self._lock:
                    found = copy.deepcopy(self._broadcasts.get(stream_id))
                return _empty(404) if found is None else _json_reply(200, found)
            case ["broadcasts", stream_id] if method == "DELETE":
                delete_subtracks = _jersey_boolean(request.query, "deleteSubtracks")
                return _json_reply(200, self._delete(stream_id, delete_subtracks is not False))
            case ["broadcasts", stream_id, "stop"] if method == "POST":
                # RestServiceBase.stopStreaming: a missing stopSubtracks means true.
                stop_subtracks = _jersey_boolean(request.query, "stopSubtracks")
                return _json_reply(200, self._stop(stream_id, stop_subtracks is not False))
            case ["broadcasts", stream_id, "active-subtracks-count"] if method == "GET":
                # BroadcastRestService.getActiveSubtracksCount: 404 Result without the
                # room, else a SimpleStat {"number": N} of subtracks still broadcasting.
                with self._lock:
                    if stream_id not in self._broadcasts:
                        return _json_reply(
                            404, _result(False, f"Broadcast not found with id: {stream_id}")
                        )
                    return _json_reply(200, {"number": len(self._active_tracks(stream_id))})
            case ["broadcasts", stream_id, "active-subtracks", offset, size] if method == "GET":
                return self._active_subtracks(stream_id, offset, size)
        return _empty(404)

    def _create(self, request: RecordedRequest) -> _Reply:
        try:
            body = json.loads(request.body) if request.body.strip() else {}
        except ValueError:
            return _json_reply(400, _result(False, "Broadcast object is not valid JSON"))
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return _json_reply(400, _result(False, "Broadcast object is not valid"))
        stream_id = body.get("streamId") or ""
        if not isinstance(stream_id, str):
            return _json_reply(400, _result(False, MSG_ID_INVALID))
        now = self.clock()
        with self._lock:
            if not stream_id:
                stream_id = secrets.token_hex(6) + str(int(now * 1000))
            elif not STREAM_ID_RE.fullmatch(stream_id):
                return _json_reply(400, _result(False, MSG_ID_INVALID))
            if stream_id in self._broadcasts:
                return _json_reply(400, _result(False, MSG_ID_TAKEN))
            broadcast = _new_broadcast(
                stream_id,
                app=self.app,
                name=body.get("name") or "",
                description=body.get("description") or "",
                start=body.get("plannedStartDate") or 0,
                end=body.get("plannedEndDate") or 0,
                meta=body.get("metaData"),
                now=now,
            )
            hook_url = body.get("listenerHookURL")
            if isinstance(hook_url, str) and hook_url:
                broadcast["listenerHookURL"] = hook_url
            self._put_broadcast(broadcast)
            return _json_reply(200, copy.deepcopy(broadcast))

    def _list(self, offset: str, size: str) -> _Reply:
        """``/broadcasts/list``: every broadcast, participants' subtracks included,
        in store order, at most 250 (DataStore.sortAndCropBroadcastList, MongoStore).
        Offsets are plain skips, so a page shifts when streams come and go."""
        try:
            start, count = int(offset), int(size)
        except ValueError:
            return _empty(404)  # Jersey cannot bind the path parameter
        if self._take_datastore_fault("list"):
            return _json_reply(200, [])  # MongoStore.getBroadcastList caught the error
        count = max(0, min(count, MAX_LIST_SIZE))
        start = max(0, start)
        with self._lock:
            items = list(self._broadcasts.values())
            return _json_reply(200, copy.deepcopy(items[start : start + count]))

    def _active_subtracks(self, room_id: str, offset: str, size: str) -> _Reply:
        """BroadcastRestService.getActiveSubtracks: 404 Result without the room; the
        datastores page with skip/limit and do **not** cap ``size`` at 250."""
        try:
            start, count = int(offset), int(size)
        except ValueError:
            return _empty(404)
        with self._lock:
            if room_id not in self._broadcasts:
                return _json_reply(404, _result(False, f"Broadcast not found with id: {room_id}"))
            if count <= 0:
                return _json_reply(200, [])
            items = self._active_tracks(room_id)[max(0, start) : max(0, start) + count]
            return _json_reply(200, copy.deepcopy(items))

    def _active_tracks(self, room_id: str) -> list[dict[str, Any]]:
        return [b for b in self._tracks(room_id) if b.get("status") == "broadcasting"]

    def _tracks(self, room_id: str) -> list[dict[str, Any]]:
        """The records whose mainTrackStreamId is ``room_id`` (under the lock)."""
        return [self._broadcasts[t] for t in self._tracks_of.get(room_id, ())]

    def _put_broadcast(self, broadcast: dict[str, Any]) -> None:
        """Store a record (under the lock), indexed by its room if it is a subtrack."""
        self._broadcasts[broadcast["streamId"]] = broadcast
        main = broadcast.get("mainTrackStreamId")
        if main:
            self._tracks_of.setdefault(main, {})[broadcast["streamId"]] = None

    def _drop_broadcast(self, stream_id: str) -> dict[str, Any] | None:
        """Delete a record (under the lock) and its place in its room's index."""
        broadcast = self._broadcasts.pop(stream_id, None)
        main = broadcast.get("mainTrackStreamId") if broadcast else None
        if main and main in self._tracks_of:
            self._tracks_of[main].pop(stream_id, None)
            if not self._tracks_of[main]:
                del self._tracks_of[main]
        return broadcast

    def _stop(self, stream_id: str, stop_subtracks: bool) -> dict[str, Any]:
        """``POST /broadcasts/{id}/stop`` (RestServiceBase.stopStreaming).

        Community Edition (AntMediaApplicationAdapter.stopStreaming): a live stream
        is one AMS is receiving under that id; its connection is closed and the
        answer is ``success: true``. Otherwise ``success: false`` and nothing
        happens: ``stopSubtracks`` is never read, and a room's main track is never
        live itself in a conference. Enterprise Edition overrides this (closed
        source); the double does what the REST docs promise: ``stopSubtracks``
        (default true) stops every participant, and the answer is ``success:
        true`` for any known id.
        """
        with self._lock:
            broadcast = self._broadcasts.get(stream_id)
            if broadcast is None:
                return _result(False, None, None)  # new Result(false)
            live_self = stream_id in self._live
            tracks = [
                t
                for t, live in self._live.items()
                if live.room_id == stream_id and self.stop_semantics == "enterprise"
            ]
        stopped = False
        if live_self:
            stopped = self._end_stream(stream_id)
        if stop_subtracks:
            for track in tracks:
                stopped = self._end_stream(track) or stopped
        if self.stop_semantics == "community":
            return _result(stopped, None, None)
        return _result(True, None, None)

    def _delete(self, stream_id: str, delete_subtracks: bool) -> dict[str, Any]:
        """``DELETE /broadcasts/{id}`` (RestServiceBase.deleteBroadcast): stop it (with
        subtracks when ``deleteSubtracks``, default true), then delete its record and
        its subtracks' records. 200 always; ``success: false`` for an unknown id.

        With Community stop semantics nobody is disconnected: their records are
        gone, their streams go on (and end later without any hook).
        """
        with self._lock:
            broadcast = self._broadcasts.get(stream_id)
            if broadcast is None:
                return _result(False, None, None)
            was_broadcasting = broadcast.get("status") == "broadcasting"
        stop = self._stop(stream_id, delete_subtracks)
        with self._lock:
            broadcast = self._broadcasts.get(stream_id) or broadcast
            if stop["success"] and was_broadcasting and not broadcast.get("mainTrackStreamId"):
                # notifyLiveStreamEnded(broadcast) for the deleted room itself (a
                # participant's stream already had its hook from closeBroadcast).
                self._queue_hook(broadcast, HOOK_ENDED, None)
            if delete_subtracks:
                for track_id in [b["streamId"] for b in self._tracks(stream_id)]:
                    self._drop_broadcast(track_id)
            if broadcast.get("mainTrackStreamId"):
                self._remove_track(stream_id)
            else:
                self._drop_broadcast(stream_id)
        message = (
            "broadcast is deleted and stopped successfully"
            if stop["success"]
            else "broadcast is deleted but could not stopped "
        )
        return _result(True, message, None)

    def _remove_track(self, track_id: str) -> None:
        track = self._drop_broadcast(track_id)
        if track is None:
            return
        room = self._broadcasts.get(track.get("mainTrackStreamId") or "")
        if room is not None:
            room["subTrackStreamIds"] = [
                t for t in room.get("subTrackStreamIds", []) if t != track_id
            ]

    def _circle_page(self, room_id: str, has_token: bool) -> _Reply:
        safe = html.escape(room_id)
        body = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Circle - {safe}</title></head><body>"
            f"<h1>Circle (AMS test double)</h1><p>Room <code>{safe}</code>, app "
            f"<code>{html.escape(self.app)}</code>; token "
            f"{'present' if has_token else 'missing'}.</p></body></html>"
        )
        return _Reply(200, body.encode("utf-8"), "text/html;charset=utf-8")

    # ------------------------------------------------------------------ internals: management

    def _management(self, request: RecordedRequest, segs: list[str]) -> _Reply:
        method = request.method
        if segs == ["users", "authenticate"] and method == "POST":
            return self._login(request)
        if not self._management_authenticated(request):
            return _json_reply(403, _result(False, MSG_NOT_AUTHENTICATED))
        match segs:
            case ["applications", "settings", app] if method == "GET":
                if app != self.app:
                    return _empty(404)
                with self._lock:
                    return _json_reply(200, dict(self._settings))
            case ["applications", "settings", app] if method == "POST":
                if app != self.app:
                    return _empty(404)
                return self._change_settings(request)
            case ["applications"] if method == "GET":
                return _json_reply(200, {"applications": [self.app]})
        return _empty(404)

    def _login(self, request: RecordedRequest) -> _Reply:
        body = request.json if isinstance(request.json, dict) else {}
        email = str(body.get("email") or "")
        password = str(body.get("password") or "")
        now = self.clock()
        with self._lock:
            blocked_until = self._blocked_until.get(email, 0.0)
            if blocked_until > now:
                return _json_reply(
                    200,
                    _result(
                        False,
                        f"User is blocked for {LOCKOUT_SECONDS} seconds "
                        "because of too many failed login attempts",
                    ),
                )
            if blocked_until:  # the block ran out: start counting afresh
                self._blocked_until.pop(email, None)
                self._failed_logins.pop(email, None)
            expected = self._users.get(email)
            if expected is None or not hmac.compare_digest(expected, password):
                failures = self._failed_logins.get(email, 0) + 1
                self._failed_logins[email] = failures
                if failures >= LOCKOUT_FAILURES:
                    self._blocked_until[email] = now + LOCKOUT_SECONDS
                return _json_reply(200, _result(False, "Invalid email or password"))
            self._failed_logins.pop(email, None)
            session = secrets.token_hex(16).upper()
            self._sessions.add(session)
        cookie = f"JSESSIONID={session}; Path=/; HttpOnly"
        return _json_reply(200, _result(True), headers=[("Set-Cookie", cookie)])

    def _management_authenticated(self, request: RecordedRequest) -> bool:
        proxy = request.header("proxyauthorization")
        if proxy and self.server_jwt_secret:
            claims, _why = verify_hs256(
                proxy.strip(), self.server_jwt_secret.encode("utf-8"), self.clock()
            )
            if claims is not None:
                return True
        raw_cookie = request.header("cookie")
        if not raw_cookie:
            return False
        try:
            jar = SimpleCookie(raw_cookie)
        except CookieError:
            return False
        morsel = jar.get("JSESSIONID")
        with self._lock:
            return morsel is not None and morsel.value in self._sessions

    def _change_settings(self, request: RecordedRequest) -> _Reply:
        body = request.json
        if not isinstance(body, dict):
            return _json_reply(400, _result(False, "AppSettings object is not valid"))
        new_settings = dict(DEFAULT_APP_SETTINGS)  # omitted fields fall back to defaults
        for name, value in body.items():
            if name not in DEFAULT_APP_SETTINGS:
                continue  # unknown properties are ignored
            problem = _settings_type_error(name, value)
            if problem:
                return _json_reply(400, _result(False, problem))
            new_settings[name] = value
        for direction, flags in TOKEN_SCHEMES.items():
            if sum(bool(new_settings[flag]) for flag in flags) > 1:
                return _json_reply(
                    200,
                    _result(
                        False,
                        f"Only one token control (one-time, JWT or TOTP) can be enabled "
                        f"for {direction}",
                    ),
                )
        with self._lock:
            self._settings = new_settings
        return _json_reply(200, _result(True))


def _compile(path_regex: str | None) -> re.Pattern[str] | None:
    return re.compile(path_regex) if path_regex else None


def _new_broadcast(
    stream_id: str,
    *,
    app: str,
    name: str,
    now: float,
    description: str = "",
    start: int = 0,
    end: int = 0,
    meta: Any = None,
    zombi: bool = False,
) -> dict[str, Any]:
    """A Broadcast with the fields AMS returns (OpenAPI 2.12 shape + 3.0 additions)."""
    now_ms = int(now * 1000)
    return {
        "streamId": stream_id,
        "status": "created",
        "playListStatus": None,
        "type": "liveStream",
        "publishType": None,
        "name": name,
        "description": description,
        "publish": True,
        "date": now_ms,
        "plannedStartDate": start,
        "plannedEndDate": end,
        "duration": 0,
        "endPointList": [],
        "playListItemList": [],
        "publicStream": True,
        "is360": False,
        "listenerHookURL": None,
        "category": None,
        "ipAddr": None,
        "username": None,
        "password": None,
        "quality": None,
        "speed": 0.0,
        "streamUrl": None,
        "originAdress": "127.0.0.1",
        "mp4Enabled": 0,
        "webMEnabled": 0,
        "seekTimeInMs": 0,
        "conferenceMode": None,
        "subtracksLimit": -1,
        "expireDurationMS": 0,
        "rtmpURL": f"rtmp://127.0.0.1/{app}/{stream_id}",
        "zombi": zombi,
        "pendingPacketSize": 0,
        "hlsViewerCount": 0,
        "dashViewerCount": 0,
        "webRTCViewerCount": 0,
        "rtmpViewerCount": 0,
        "startTime": 0,
        "receivedBytes": 0,
        "bitrate": 0,
        "userAgent": "N/A",
        "latitude": None,
        "longitude": None,
        "altitude": None,
        "mainTrackStreamId": None,
        "subTrackStreamIds": [],
        "absoluteStartTimeMs": 0,
        "webRTCViewerLimit": -1,
        "hlsViewerLimit": -1,
        "dashViewerLimit": -1,
        "subFolder": None,
        "currentPlayIndex": 0,
        "metaData": meta,
        "playlistLoopEnabled": True,
        "updateTime": now_ms,
        "role": "default",
        "hlsParameters": None,
        "autoStartStopEnabled": False,
        "encoderSettingsList": [],
        "anyoneWatching": False,
    }
