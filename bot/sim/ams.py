"""A loopback Ant Media Server (AMS) test double.

Why this exists: the bot's AMS client, the room lifecycle, ``meetbot demo`` and the
benchmarks must run with no real AMS and no network, yet fail the way production
fails. So this is a *real* HTTP server on 127.0.0.1 (not a mocked ``requests``)
that follows ``shared/docs/ams.md``: the same paths, status codes, bodies and
quirks (404 with an empty body, DELETE answering 200 with ``success: false``,
settings POST resetting omitted fields, the login lockout, java-jwt's zero-leeway
token check). It also lets a test inject faults (5xx, hangs, connection resets,
latency) and inspect every request it received.

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
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from bot.sim.priority import NiceThreads

__all__ = [
    "COMMUNITY_EDITION",
    "DEFAULT_ADMIN_EMAIL",
    "DEFAULT_ADMIN_PASSWORD",
    "DEFAULT_APP_SETTINGS",
    "ENTERPRISE_EDITION",
    "LOCKOUT_FAILURES",
    "LOCKOUT_SECONDS",
    "MAX_LIST_SIZE",
    "MSG_ID_INVALID",
    "MSG_ID_TAKEN",
    "MSG_INVALID_APP_JWT",
    "MSG_NOT_ALLOWED_IP",
    "REMOTE_BOT_IP",
    "AmsDouble",
    "ManualClock",
    "RecordedRequest",
    "verify_hs256",
]

log = logging.getLogger("meetbot.sim.ams")

ENTERPRISE_EDITION = "Enterprise Edition"
COMMUNITY_EDITION = "Community Edition"
VERSION_NAME = "3.0.3"
BUILD_NUMBER = "20250110_1200"

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

WEBHOOK_TIMEOUT = (2.0, 5.0)
_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])token=)[^&\s\"]+")

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
        "listenerHookURL": "",
        "vodFolder": "",
        "s3RecordingEnabled": False,
        "acceptOnlyStreamsInDataStore": False,
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
    success: bool, message: str = "", data_id: str = "", error_id: int = 0
) -> dict[str, Any]:
    """AMS's ``Result`` object."""
    return {"success": success, "message": message, "dataId": data_id, "errorId": error_id}


def _empty(status: int) -> _Reply:
    return _Reply(status, b"", None)


def _error_page(status: int) -> _Reply:
    """What a servlet container sends for a 5xx: HTML, not JSON (clients must cope)."""
    body = (
        f"<!doctype html><html><head><title>HTTP Status {status}</title></head>"
        f"<body><h1>HTTP Status {status}</h1></body></html>"
    )
    return _Reply(status, body.encode("utf-8"), "text/html;charset=utf-8")


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
    """

    def __init__(
        self,
        app: str = "Conference",
        *,
        stream_secret: str | None = None,
        rest_jwt_secret: str | None = None,
        server_jwt_secret: str | None = None,
        edition: str = ENTERPRISE_EDITION,
        ip_allowed: bool = True,
        users: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
        clock: Clock = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.app = app
        self.edition = edition
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
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._users: dict[str, str] = dict(
            users if users is not None else {DEFAULT_ADMIN_EMAIL: DEFAULT_ADMIN_PASSWORD}
        )
        self._failed_logins: dict[str, int] = {}
        self._blocked_until: dict[str, float] = {}
        self._sessions: set[str] = set()

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
        """Ids of the participants (subtracks) currently in a room."""
        with self._lock:
            return [
                b["streamId"]
                for b in self._broadcasts.values()
                if b.get("mainTrackStreamId") == room_id
            ]

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

    # ------------------------------------------------------------------ joins

    def check_join(
        self,
        room_id: str,
        token: str | None,
        mode: Literal["publish", "play"] = "publish",
        *,
        participant_id: str = "",
        query_params: str = "",
    ) -> tuple[bool, str]:
        """Decide a Circle join the way AMS does; returns ``(allowed, reason)``.

        Community Edition checks nothing. Enterprise checks, when JWT control is on
        for ``mode``: HS256 with the *current* ``jwtStreamSecretKey`` (zero leeway,
        ``exp``, future ``iat``/``nbf`` refused), ``streamId == room_id`` and
        ``type == "publish"`` (Circle passes the publish token to play too). Then
        ``acceptOnlyRoomsInDataStore``, then the authorization webhook (HTTP 200
        only). The webhook is called outside the lock: it may be slow.
        """
        if mode not in ("publish", "play"):
            raise ValueError(f"mode must be 'publish' or 'play', not {mode!r}")
        with self._lock:
            settings = self._settings
            edition = self.edition
            room = copy.deepcopy(self._broadcasts.get(room_id))
        if edition != ENTERPRISE_EDITION:
            return True, "community edition: tokens are not checked"
        jwt_on = settings[
            "publishJwtControlEnabled" if mode == "publish" else "playJwtControlEnabled"
        ]
        if jwt_on:
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
        if settings.get("acceptOnlyRoomsInDataStore") and (
            room is None or room.get("mainTrackStreamId")
        ):
            return False, "room is not in the data store (acceptOnlyRoomsInDataStore)"
        hook = settings.get("webhookAuthenticateURL" if mode == "publish" else "webhookPlayAuthUrl")
        if hook:
            payload = {
                "appName": self.app,
                "name": (room or {}).get("name") or "",
                "streamId": room_id,
                "mode": mode,
                "token": token or "",
                "subscriberId": participant_id,
                "subscriberCode": "",
                "metaData": (room or {}).get("metaData") or "",
                "queryParams": query_params,
            }
            try:
                answer = requests.post(hook, json=payload, timeout=WEBHOOK_TIMEOUT)
            except requests.RequestException as exc:
                return False, f"authorization webhook unreachable: {type(exc).__name__}"
            if answer.status_code != 200:
                return False, f"authorization webhook answered HTTP {answer.status_code}"
        return True, "ok"

    def join(self, room_id: str, token: str | None, participant_id: str) -> bool:
        """A participant publishes into the room: adds a subtrack when the check passes.

        A room that does not exist is auto-created as a "zombi" broadcast unless
        ``acceptOnlyRoomsInDataStore`` is on (which ``check_join`` already refused).
        """
        allowed, reason = self.check_join(room_id, token, "publish", participant_id=participant_id)
        if not allowed:
            log.debug("join of %s refused: %s", room_id, reason)
            return False
        now = self.clock()
        with self._lock:
            room = self._broadcasts.get(room_id)
            if room is None:
                room = _new_broadcast(room_id, app=self.app, name=room_id, now=now, zombi=True)
                self._broadcasts[room_id] = room
            existing = self._broadcasts.get(participant_id)
            if existing is not None:
                return existing.get("mainTrackStreamId") == room_id
            track = _new_broadcast(
                participant_id, app=self.app, name=participant_id, now=now, zombi=True
            )
            track.update(
                status="broadcasting",
                mainTrackStreamId=room_id,
                startTime=int(now * 1000),
                publishType="WebRTC",
            )
            self._broadcasts[participant_id] = track
            room["subTrackStreamIds"] = [*room.get("subTrackStreamIds", []), participant_id]
            room["status"] = "broadcasting"
            room["updateTime"] = int(now * 1000)
            return True

    def leave(self, room_id: str, participant_id: str) -> bool:
        """A participant hangs up. The last one out finishes the room (deletes a zombi)."""
        with self._lock:
            track = self._broadcasts.get(participant_id)
            if track is None or track.get("mainTrackStreamId") != room_id:
                return False
            self._remove_track(participant_id)
            self._finish_if_empty(room_id)
            return True

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
        """AMS's two REST filters, IP first then JWT; both must pass."""
        settings = self._settings
        if settings.get("ipFilterEnabled") and not _ip_allowed(
            self.client_ip, settings.get("remoteAllowedCIDR")
        ):
            return _json_reply(403, _result(False, MSG_NOT_ALLOWED_IP))
        if settings.get("jwtControlEnabled"):
            auth = request.header("authorization") or ""
            if not auth.startswith("Bearer "):
                return _json_reply(403, _result(False, MSG_INVALID_APP_JWT))
            key = (settings.get("jwtSecretKey") or "").encode("utf-8")
            claims, _why = verify_hs256(auth[len("Bearer ") :].strip(), key, self.clock())
            if claims is None:
                return _json_reply(403, _result(False, MSG_INVALID_APP_JWT))
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
                return self._list(offset, size, main_track=None)
            case ["broadcasts", stream_id] if method == "GET":
                with self._lock:
                    found = copy.deepcopy(self._broadcasts.get(stream_id))
                return _empty(404) if found is None else _json_reply(200, found)
            case ["broadcasts", stream_id] if method == "DELETE":
                return _json_reply(200, self._delete(stream_id))
            case ["broadcasts", stream_id, "stop"] if method == "POST":
                stop_subtracks = (request.query.get("stopSubtracks") or ["false"])[0] == "true"
                return _json_reply(200, self._stop(stream_id, stop_subtracks))
            case ["broadcasts", stream_id, "active-subtracks-count"] if method == "GET":
                with self._lock:
                    if stream_id not in self._broadcasts:
                        return _json_reply(404, _result(False, "Broadcast not found"))
                    return _json_reply(200, {"number": len(self._active_tracks(stream_id))})
            case ["broadcasts", stream_id, "active-subtracks", offset, size] if method == "GET":
                return self._list(offset, size, main_track=stream_id)
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
            self._broadcasts[stream_id] = broadcast
            return _json_reply(200, copy.deepcopy(broadcast))

    def _list(self, offset: str, size: str, main_track: str | None) -> _Reply:
        try:
            start, count = int(offset), int(size)
        except ValueError:
            return _empty(404)  # Jersey cannot bind the path parameter
        count = max(0, min(count, MAX_LIST_SIZE))
        start = max(0, start)
        with self._lock:
            if main_track is None:
                items = list(self._broadcasts.values())
            else:
                items = self._active_tracks(main_track)
            return _json_reply(200, copy.deepcopy(items[start : start + count]))

    def _active_tracks(self, room_id: str) -> list[dict[str, Any]]:
        return [
            b
            for b in self._broadcasts.values()
            if b.get("mainTrackStreamId") == room_id and b.get("status") == "broadcasting"
        ]

    def _delete(self, stream_id: str) -> dict[str, Any]:
        with self._lock:
            broadcast = self._broadcasts.get(stream_id)
            if broadcast is None:
                return _result(False, "Broadcast is not found")
            for track_id in list(broadcast.get("subTrackStreamIds", [])):
                self._broadcasts.pop(track_id, None)  # deleteSubtracks defaults to true
            if broadcast.get("mainTrackStreamId"):
                self._remove_track(stream_id)
            else:
                self._broadcasts.pop(stream_id, None)
            return _result(True, "", stream_id)

    def _stop(self, stream_id: str, stop_subtracks: bool) -> dict[str, Any]:
        with self._lock:
            broadcast = self._broadcasts.get(stream_id)
            if broadcast is None:
                return _result(False, "Broadcast is not found")
            if stop_subtracks:
                for track_id in list(broadcast.get("subTrackStreamIds", [])):
                    self._remove_track(track_id)
                self._finish_if_empty(stream_id)
            return _result(True, "", stream_id)

    def _remove_track(self, track_id: str) -> None:
        track = self._broadcasts.pop(track_id, None)
        if track is None:
            return
        room = self._broadcasts.get(track.get("mainTrackStreamId") or "")
        if room is not None:
            room["subTrackStreamIds"] = [
                t for t in room.get("subTrackStreamIds", []) if t != track_id
            ]

    def _finish_if_empty(self, room_id: str) -> None:
        room = self._broadcasts.get(room_id)
        if room is None or room.get("subTrackStreamIds"):
            return
        if room.get("zombi"):
            del self._broadcasts[room_id]  # AMS forgets zombi broadcasts once finished
            return
        room["status"] = "finished"  # a REST-made room stays: the bot must delete it
        room["updateTime"] = int(self.clock() * 1000)

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
