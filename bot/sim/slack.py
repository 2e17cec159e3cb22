"""Loopback doubles that play Slack on 127.0.0.1, for tests, `meetbot demo` and `bench/`.

Two halves, in the style of bolt-python's own test suite:

* `SlackDouble` is a real HTTP server that answers Web API calls the way Slack
  does (`WebClient(base_url=double.api_url)`), records every call, keeps the
  state the bot can observe (messages and their edits, views, Calls,
  `response_url` replies) and can misbehave on demand (faults, rate limits,
  latency). Going through real HTTP and the real `slack_sdk` client means the
  bot's retry handlers, timeouts and error handling are exercised as in
  production, which mocking `client` objects cannot do.
* `SlackSender` plays Slack towards the bot: it builds the exact bodies Slack
  POSTs for slash commands, interactivity and events, signs them with
  `SignatureVerifier.generate_signature` and sends them to the bot's HTTP
  endpoint, so Bolt's signature check and routing run unmodified.

Only the Slack behaviour the bot relies on is modelled; the facts come from
`../shared/docs/slack.md`. Where Slack is stricter than convenient (for
example `chat.update` only accepts the channel id that `chat.postMessage`
returned, never a user id) the double is strict too, so that such bugs show up
in tests rather than in production.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import hashlib
import json
import math
import re
import secrets
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import requests
from slack_sdk.signature import SignatureVerifier

from bot.sim.priority import NiceThreads

__all__ = [
    "DEFAULT_SCOPES",
    "Call",
    "Fault",
    "Hold",
    "SlackDouble",
    "SlackSender",
]

#: Scopes reported by `auth.test` (`x-oauth-scopes` header) unless others are given.
DEFAULT_SCOPES: tuple[str, ...] = (
    "calls:read",
    "calls:write",
    "channels:read",
    "chat:write",
    "commands",
    "groups:read",
    "im:history",
    "im:read",
    "im:write",
    "mpim:read",
    "team:read",
    "users:read",
)

_METHODS = frozenset(
    {
        "auth.test",
        "auth.revoke",
        "chat.postMessage",
        "chat.update",
        "chat.postEphemeral",
        "chat.delete",
        "users.info",
        "conversations.open",
        "conversations.history",
        "conversations.members",
        "views.open",
        "views.publish",
        "views.update",
        "calls.add",
        "calls.update",
        "calls.end",
        "calls.participants.add",
        "calls.participants.remove",
        "team.info",
    }
)

# Form-encoded calls carry structured arguments as JSON strings (slack_sdk does
# this for `blocks`, `attachments`, `view` and the Calls API's `users`).
_JSON_FORM_FIELDS = frozenset({"blocks", "attachments", "view", "metadata", "users"})
# Form-encoded booleans arrive as "true"/"1"/"False"...; normalised so that tests
# can assert `args["unfurl_links"] is False` whatever the encoding.
_BOOL_FORM_FIELDS = frozenset(
    {
        "unfurl_links",
        "unfurl_media",
        "as_user",
        "reply_broadcast",
        "mrkdwn",
        "link_names",
        "include_locale",
        "return_im",
        "prevent_creation",
    }
)
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})

_MAX_MESSAGE_BLOCKS = 50
_MAX_SURFACE_BLOCKS = 100
_MAX_TEXT = 40_000
_RESPONSE_URL_USES = 5
_RESPONSE_URL_TTL = 30 * 60.0
_TRIGGER_TTL = 3.0
_TRIGGER_RE = re.compile(r"^\d+\.\d+\.[0-9a-f]+$")
_INTERACTIVE = frozenset(
    {
        "button",
        "checkboxes",
        "channels_select",
        "conversations_select",
        "datepicker",
        "datetimepicker",
        "email_text_input",
        "external_select",
        "multi_channels_select",
        "multi_conversations_select",
        "multi_external_select",
        "multi_static_select",
        "multi_users_select",
        "number_input",
        "overflow",
        "plain_text_input",
        "radio_buttons",
        "rich_text_input",
        "static_select",
        "timepicker",
        "url_text_input",
        "users_select",
        "workflow_button",
    }
)
_ID_ALPHABET = string.ascii_letters + string.digits
_EDGE_HTML = (
    "<!DOCTYPE html><html><head><title>Slack</title></head><body>"
    "<h1>Server Error</h1><p>Something went wrong on Slack's side. "
    "Please try again.</p></body></html>"
)


def _rand_id(n: int = 5) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


def _upper_id(prefix: str, n: int = 10) -> str:
    return prefix + secrets.token_hex(n).upper()[:n]


@dataclass
class Call:
    """One Web API call received by the double, in arrival order.

    `args` are the arguments as the bot sent them (form, query or JSON; JSON
    encoded form fields such as `blocks` decoded). `status` and `error` are
    filled in once the double has answered, so a test can tell an attempted
    DM that failed from one that landed.
    """

    method: str
    args: dict[str, Any]
    at: float
    status: int = 0
    #: The workspace whose token made the call (None when unauthenticated).
    team_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when Slack answered HTTP 200 with `ok: true`."""
        return self.status == 200 and self.error is None


@dataclass
class Fault:
    """A scripted failure registered with `SlackDouble.fail`.

    `remaining` counts down on each use; `None` means the fault never wears off.
    """

    method: str
    error: str
    status: int
    remaining: int | None
    channel: str | None
    retry_after: int | None


@dataclass
class Hold:
    """A call held on its way in (``SlackDouble.hold``): it waits until ``release()``.

    ``arrived`` is set when the held request reached the double, so a test can
    act while it is in flight (a post rendered, not yet recorded by the bot).
    """

    method: str
    channel: str | None
    arrived: threading.Event
    released: threading.Event
    taken: bool = False

    def release(self) -> None:
        self.released.set()


class _ApiError(Exception):
    """Raised inside method handlers; becomes `{"ok": false, "error": ...}`."""

    def __init__(
        self,
        error: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def _invalid(*messages: str) -> _ApiError:
    return _ApiError("invalid_arguments", extra={"response_metadata": {"messages": list(messages)}})


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] | None = None
    error: str | None = None


def _json_reply(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> _Reply:
    error = None if payload.get("ok") else str(payload.get("error", "unknown"))
    # Slack's Web API escapes every "/" in its JSON ("https:\/\/…"), as PHP's
    # json_encode does by default; clients decode it, but a library that logs the
    # raw body (slack_sdk at DEBUG) shows it that way. "/" occurs only inside
    # JSON strings, where "\/" is a valid escape of it.
    body = json.dumps(payload).replace("/", "\\/")
    return _Reply(status, body.encode(), headers=dict(headers or {}), error=error)


# ---------------------------------------------------------------------------
# Request parsing


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    out: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            out[name] = payload
        else:
            out[name] = payload.decode("utf-8", "replace")
    return out


def _parse_args(
    content_type: str, body: bytes, query: str
) -> tuple[dict[str, Any], bool, str | None]:
    """Parse a Web API request like Slack: query string, then form or JSON body.

    Returns (args, is_json, parse_error).
    """
    args: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    ctype = content_type.split(";", 1)[0].strip().lower()
    is_json = ctype == "application/json"
    if body:
        if is_json:
            try:
                data = json.loads(body)
            except ValueError:
                return args, True, "invalid_json"
            if not isinstance(data, dict):
                return args, True, "invalid_json"
            args.update(data)
        elif ctype == "multipart/form-data":
            try:
                args.update(_parse_multipart(content_type, body))
            except Exception:  # noqa: BLE001 - any parse failure is Slack's invalid_form_data
                return args, False, "invalid_form_data"
        else:
            try:
                args.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            except (UnicodeDecodeError, ValueError):
                return args, False, "invalid_form_data"
    if not is_json:
        for key in _JSON_FORM_FIELDS & args.keys():
            value = args[key]
            if isinstance(value, str) and value[:1] in ("[", "{"):
                try:
                    args[key] = json.loads(value)
                except ValueError:
                    pass  # left as a string: the method answers invalid_*_format
        for key in _BOOL_FORM_FIELDS & args.keys():
            value = args[key]
            if isinstance(value, str):
                low = value.strip().lower()
                if low in _TRUE:
                    args[key] = True
                elif low in _FALSE:
                    args[key] = False
    return args, is_json, None


# ---------------------------------------------------------------------------
# Block Kit checks (the subset Slack enforces with invalid_blocks)


def _text_of(obj: Any) -> str:
    if isinstance(obj, dict):
        value = obj.get("text", "")
        return value if isinstance(value, str) else str(value)
    return ""


def _check_blocks(
    blocks: Any, limit: int, pointer: str = "/blocks"
) -> tuple[str | None, list[str]]:
    """Return (error code, Slack-style messages) or (None, []) when valid."""
    if not isinstance(blocks, list):
        return "invalid_blocks_format", [f"[ERROR] must be an array [json-pointer:{pointer}]"]
    problems: list[str] = []

    def err(message: str, ptr: str) -> None:
        problems.append(f"[ERROR] {message} [json-pointer:{ptr}]")

    if len(blocks) > limit:
        err(f"no more than {limit} items allowed", pointer)
    seen_block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        p = f"{pointer}/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            err("missing required field: type", p)
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or not 0 < len(block_id) <= 255:
                err("must be between 1 and 255 characters", f"{p}/block_id")
            elif block_id in seen_block_ids:
                err("duplicate block_id", f"{p}/block_id")
            else:
                seen_block_ids.add(block_id)
        seen_actions: set[str] = set()
        kind = block["type"]
        if kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and not fields:
                err("must provide either text or fields", p)
            if text is not None:
                n = len(_text_of(text))
                if n == 0:
                    err("must be more than 0 characters", f"{p}/text/text")
                elif n > 3000:
                    err("must be less than 3001 characters", f"{p}/text/text")
            if fields is not None:
                if not isinstance(fields, list) or len(fields) > 10:
                    err("no more than 10 items allowed", f"{p}/fields")
                else:
                    for j, f in enumerate(fields):
                        if len(_text_of(f)) > 2000:
                            err("must be less than 2001 characters", f"{p}/fields/{j}/text")
            accessory = block.get("accessory")
            if isinstance(accessory, dict):
                _check_element(accessory, f"{p}/accessory", seen_actions, err)
        elif kind == "header":
            n = len(_text_of(block.get("text")))
            if not 0 < n <= 150:
                err("must be between 1 and 150 characters", f"{p}/text/text")
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not elements:
                err("must provide at least 1 element", f"{p}/elements")
            elif len(elements) > 25:
                err("no more than 25 items allowed", f"{p}/elements")
            else:
                for j, el in enumerate(elements):
                    if isinstance(el, dict):
                        _check_element(el, f"{p}/elements/{j}", seen_actions, err)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 0 < len(elements) <= 10:
                err("must provide between 1 and 10 elements", f"{p}/elements")
        elif kind == "input":
            if len(_text_of(block.get("label"))) > 2000:
                err("must be less than 2001 characters", f"{p}/label/text")
            element = block.get("element")
            if not isinstance(element, dict):
                err("missing required field: element", f"{p}/element")
            else:
                _check_element(element, f"{p}/element", seen_actions, err)
    return ("invalid_blocks", problems) if problems else (None, [])


def _check_element(
    element: dict[str, Any], p: str, seen: set[str], err: Callable[[str, str], None]
) -> None:
    action_id = element.get("action_id")
    if action_id is not None:
        if not isinstance(action_id, str) or not 0 < len(action_id) <= 255:
            err("must be between 1 and 255 characters", f"{p}/action_id")
        elif action_id in seen:
            err("duplicate action_id", f"{p}/action_id")
        else:
            seen.add(action_id)
    if element.get("type") == "button":
        n = len(_text_of(element.get("text")))
        if not 0 < n <= 75:
            err("must be between 1 and 75 characters", f"{p}/text/text")
        value = element.get("value")
        if isinstance(value, str) and len(value) > 2000:
            err("must be less than 2001 characters", f"{p}/value")
        url = element.get("url")
        if isinstance(url, str) and len(url) > 3000:
            err("must be less than 3001 characters", f"{p}/url")


def _with_ids(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy blocks, filling in `block_id`/`action_id` where Slack generates them.

    Slack stores and echoes generated ids, and `block_actions` payloads carry
    them, so handlers must not assume their own ids survive when unset.
    """
    out = copy.deepcopy(blocks)
    used = {b["block_id"] for b in out if isinstance(b.get("block_id"), str)}
    for block in out:
        if "block_id" not in block:
            new = _rand_id(4)
            while new in used:
                new = _rand_id(4)
            used.add(new)
            block["block_id"] = new
        candidates: list[Any] = []
        if block.get("type") == "actions":
            candidates.extend(block.get("elements") or [])
        candidates.append(block.get("accessory"))
        candidates.append(block.get("element"))
        for el in candidates:
            if isinstance(el, dict) and el.get("type") in _INTERACTIVE:
                el.setdefault("action_id", _rand_id(5))
    return out


# ---------------------------------------------------------------------------
# The Web API double


class _Server(NiceThreads, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    double: SlackDouble


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SlackDouble/1.0"
    server: _Server
    # Headers and body go out in two writes; with Nagle on, the second waits for
    # the client's delayed ACK of the first (40 ms on Linux), so every call took
    # its latency plus 40 ms. Slack answers in one go.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence per-request logging: benchmarks push thousands of requests."""

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.server.double._handle(self)

    do_GET = do_POST


class SlackDouble:
    """A loopback Slack Web API, recording every call and keeping Slack's state.

    Seeded (unless `seed=False`) with the bot's own user, channel `C1`
    "general" and user `U1` "alice", which are `SlackSender`'s defaults, so a
    scenario works without setup. DM channels are `"D" + user id`.

    Rate limits only apply to `chat.postMessage` and only when configured:
    `per_channel_rate` messages per second per channel (burst of 1) and
    `workspace_cap_per_minute` across the workspace in any `workspace_window`
    seconds (a sliding window, 60 s unless set: Slack's documented cap is per
    minute; a shorter window lets a benchmark make the cap bind in seconds),
    both measured on `clock`, which tests can replace to avoid sleeping.
    """

    def __init__(
        self,
        bot_token: str = "xoxb-test",  # noqa: S107 - a fixture, not a credential
        team_id: str = "T0001",
        *,
        latency: float = 0.0,
        per_channel_rate: float | None = None,
        workspace_cap_per_minute: int | None = None,
        workspace_window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        bot_user_id: str = "UMEETBOT",
        bot_id: str = "BMEETBOT",
        bot_name: str = "meetbot",
        app_id: str = "A0001",
        team_name: str = "Meetbot Test",
        team_domain: str = "meetbot-test",
        seed: bool = True,
    ) -> None:
        if per_channel_rate is not None and per_channel_rate <= 0:
            raise ValueError("per_channel_rate must be positive")
        if workspace_cap_per_minute is not None and workspace_cap_per_minute <= 0:
            raise ValueError("workspace_cap_per_minute must be positive")
        self.bot_token = bot_token
        self.tokens: set[str] = {bot_token}
        #: bot token → the workspace it belongs to (several, for OAuth installs).
        self.workspaces: dict[str, dict[str, Any]] = {
            bot_token: {"team_id": team_id, "team_name": team_name, "enterprise_id": None}
        }
        self.oauth_client: tuple[str, str] | None = None
        self._oauth_codes: dict[str, dict[str, Any]] = {}
        #: Tokens revoked with auth.revoke: Slack refuses them from then on.
        self.revoked: set[str] = set()
        #: Sign in with Slack: who "the browser" is signed in as, and issued codes.
        self.openid_user: str | None = None
        self.openid_approve = True
        self._openid_codes: dict[str, dict[str, Any]] = {}
        self.team_id = team_id
        self.team_name = team_name
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.bot_name = bot_name
        self.app_id = app_id
        self.scopes: list[str] = list(scopes)
        self.latency = latency
        self.per_channel_rate = per_channel_rate
        self.workspace_cap_per_minute = workspace_cap_per_minute
        self.workspace_window = workspace_window
        self.clock = clock

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.users: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self._init_recorded_state()

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

        self.add_user(bot_user_id, bot_name, is_bot=True, display_name=bot_name)
        if seed:
            self.add_channel("C1", "general", members=["U1"])
            self.add_user("U1", "alice")

    # -- several workspaces and the OAuth install flow -------------------------
    def add_workspace(
        self,
        team_id: str,
        *,
        bot_token: str | None = None,
        team_name: str | None = None,
        enterprise_id: str | None = None,
    ) -> str:
        """Another workspace the app can be installed in; returns its bot token."""
        token = bot_token or f"xoxb-{team_id.lower()}-{len(self.workspaces)}"
        with self._lock:
            self.workspaces[token] = {
                "team_id": team_id,
                "team_name": team_name or f"Team {team_id}",
                "enterprise_id": enterprise_id,
            }
        return token

    def enable_oauth(self, client_id: str, client_secret: str) -> None:
        """Answer ``oauth.v2.access`` for this app's client credentials."""
        self.oauth_client = (client_id, client_secret)

    def issue_oauth_code(
        self, team_id: str, *, installer: str = "U1", is_enterprise_install: bool = False
    ) -> str:
        """The ``code`` Slack would append to the redirect after someone approved the install."""
        token = next(t for t, w in self.workspaces.items() if w["team_id"] == team_id)
        code = f"code-{team_id}-{len(self._oauth_codes)}"
        with self._lock:
            self._oauth_codes[code] = {
                "token": token,
                "installer": installer,
                "is_enterprise_install": is_enterprise_install,
            }
        return code

    def _oauth_access(self, args: dict[str, Any], headers: Mapping[str, str]) -> _Reply:
        client_id, client_secret = args.get("client_id"), args.get("client_secret")
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            import base64

            raw = base64.b64decode(auth[6:].strip()).decode()
            client_id, _, client_secret = raw.partition(":")
        if self.oauth_client is None or (client_id, client_secret) != self.oauth_client:
            return _json_reply(200, {"ok": False, "error": "invalid_client_id"})
        grant = self._oauth_codes.pop(str(args.get("code") or ""), None)
        if grant is None:
            return _json_reply(200, {"ok": False, "error": "invalid_code"})
        ws = self.workspaces[grant["token"]]
        enterprise = {"id": ws["enterprise_id"], "name": "Grid"} if ws["enterprise_id"] else None
        return _json_reply(
            200,
            {
                "ok": True,
                "app_id": self.app_id,
                "authed_user": {"id": grant["installer"]},
                "scope": ",".join(self.scopes),
                "token_type": "bot",
                "access_token": grant["token"],
                "bot_user_id": self.bot_user_id,
                "team": None
                if grant["is_enterprise_install"]
                else {"id": ws["team_id"], "name": ws["team_name"]},
                "enterprise": enterprise,
                "is_enterprise_install": grant["is_enterprise_install"],
            },
        )

    # -- Sign in with Slack (OpenID Connect) ------------------------------------
    def sign_in_as(self, user_id: str | None, *, approve: bool = True) -> None:
        """Who the authorize page stand-in treats as signed in (None: nobody).

        ``approve=False`` plays a person who presses Cancel: the redirect then
        carries ``error=access_denied``. Client credentials come from
        ``enable_oauth`` (Sign in with Slack uses the app's own).
        """
        self.openid_user = user_id
        self.openid_approve = approve

    def issue_openid_code(
        self, user_id: str, *, redirect_uri: str, nonce: str | None = None
    ) -> str:
        """The ``code`` Slack appends to ``redirect_uri`` after ``user_id`` signed in."""
        code = "oidc-" + secrets.token_urlsafe(12)
        with self._lock:
            self._openid_codes[code] = {
                "user": user_id,
                "redirect_uri": redirect_uri,
                "nonce": nonce,
                "issued": self.clock(),
            }
        return code

    def _openid_authorize(self, query: str) -> _Reply:
        """``GET /openid/connect/authorize``: the consent page, decided at once.

        Checks what Slack checks (``response_type=code``, ``openid`` in the
        scope, this app's ``client_id``, a ``redirect_uri``), then redirects
        back with a code for ``openid_user`` and the ``state`` untouched.
        """
        q = dict(parse_qsl(query, keep_blank_values=True))
        client = self.oauth_client
        if (
            q.get("response_type") != "code"
            or "openid" not in (q.get("scope") or "").split()
            or client is None
            or q.get("client_id") != client[0]
            or not q.get("redirect_uri")
        ):
            return _Reply(400, b"invalid_request", "text/plain")
        if self.openid_user is None:
            page = b"<!doctype html><title>Sign in to Slack</title><h1>Sign in to Slack</h1>"
            return _Reply(200, page, "text/html; charset=utf-8")
        back: dict[str, str] = {"state": q.get("state", "")}
        if self.openid_approve:
            back["code"] = self.issue_openid_code(
                self.openid_user, redirect_uri=q["redirect_uri"], nonce=q.get("nonce")
            )
        else:
            back["error"] = "access_denied"
        sep = "&" if "?" in q["redirect_uri"] else "?"
        location = q["redirect_uri"] + sep + urlencode(back)
        return _Reply(302, b"", "text/plain", {"Location": location})

    def _openid_token(self, args: dict[str, Any], headers: Mapping[str, str]) -> _Reply:
        """``openid.connect.token``: client credentials (Basic or form) + a code → id_token.

        Like Slack: a code works once, for 10 minutes, with the same
        ``redirect_uri``. The id_token is signed HS256 with the client secret
        (Slack signs RS256; a client that took it from this endpoint over TLS
        need not check the signature).
        """
        import base64

        import jwt

        client_id, client_secret = args.get("client_id"), args.get("client_secret")
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            raw = base64.b64decode(auth[6:].strip()).decode()
            client_id, _, client_secret = raw.partition(":")
        if self.oauth_client is None or client_id != self.oauth_client[0]:
            return _json_reply(200, {"ok": False, "error": "invalid_client_id"})
        if client_secret != self.oauth_client[1]:
            return _json_reply(200, {"ok": False, "error": "bad_client_secret"})
        grant = self._openid_codes.pop(str(args.get("code") or ""), None)
        if grant is None or self.clock() - grant["issued"] > 600:
            return _json_reply(200, {"ok": False, "error": "invalid_code"})
        if args.get("redirect_uri") != grant["redirect_uri"]:
            return _json_reply(200, {"ok": False, "error": "bad_redirect_uri"})
        user = self.users.get(grant["user"])
        if user is None:
            return _json_reply(200, {"ok": False, "error": "invalid_code"})
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://slack.com",
            "sub": user["id"],
            "aud": client_id,
            "exp": now + 3600,
            "iat": now,
            "auth_time": now,
            "https://slack.com/user_id": user["id"],
            "https://slack.com/team_id": user["team_id"],
            "https://slack.com/team_name": self.team_name,
            "name": user["real_name"],
        }
        if grant["nonce"] is not None:
            claims["nonce"] = grant["nonce"]
        id_token = jwt.encode(claims, str(client_secret), algorithm="HS256")
        return _json_reply(
            200,
            {
                "ok": True,
                "access_token": "xoxp-openid-" + secrets.token_hex(8),
                "token_type": "Bearer",
                "id_token": id_token,
            },
        )

    def _init_recorded_state(self) -> None:
        self.calls: list[Call] = []
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.views: dict[str, dict[str, Any]] = {}
        self.home_views: dict[str, dict[str, Any]] = {}
        self.slack_calls: dict[str, dict[str, Any]] = {}
        self.ratelimited_count = 0
        self._messages: dict[str, dict[str, dict[str, Any]]] = {}
        self._history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._faults: list[Fault] = []
        self._holds: list[Hold] = []
        self._response_urls: dict[str, dict[str, float]] = {}
        self._triggers: dict[str, dict[str, Any]] = {}
        self._view_owner: dict[str, str | None] = {}
        self._tat: dict[str, float] = {}
        self._posted: deque[float] = deque()
        self._last_ts = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> SlackDouble:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.double = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="slack-double",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; recorded state stays readable."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SlackDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the double must be started)."""
        if self._server is None:
            raise RuntimeError("SlackDouble is not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """Web API base URL, for `WebClient(base_url=...)` and `SLACK_API_URL`."""
        return f"{self.base_url}/api/"

    # -- set-up ---------------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        name: str | None = None,
        *,
        tz: str = "Europe/Berlin",
        is_bot: bool = False,
        is_admin: bool = False,
        is_owner: bool = False,
        is_restricted: bool = False,
        is_ultra_restricted: bool = False,
        deleted: bool = False,
        display_name: str | None = None,
        real_name: str | None = None,
        email: str | None = None,
        team_id: str | None = None,
        enterprise_id: str | None = None,
        connect: bool = False,
    ) -> dict[str, Any]:
        """Add (or replace) a workspace member; returns the `users.info` object.

        `tz` is validated at once so a typo fails in the test set-up, not later.
        `team_id` is the person's workspace (default: the double's own) and
        `enterprise_id` their Enterprise Grid org. As on Slack, `users.info`
        finds a person only with a token of their own workspace or org;
        `connect=True` makes them a Slack Connect user, whom every workspace's
        token finds, with their own `team_id`.
        """
        ZoneInfo(tz)
        name = name or user_id.lower()
        record = {
            "id": user_id,
            "name": name,
            "real_name": real_name or name.capitalize(),
            "display_name": display_name if display_name is not None else name,
            "tz": tz,
            "is_bot": is_bot,
            "is_admin": is_admin or is_owner,
            "is_owner": is_owner,
            "is_restricted": is_restricted or is_ultra_restricted,
            "is_ultra_restricted": is_ultra_restricted,
            "deleted": deleted,
            "email": email,
            "team_id": team_id or self.team_id,
            "enterprise_id": enterprise_id,
            "connect": connect,
        }
        with self._lock:
            self.users[user_id] = record
            return self._user_object(record)

    def add_channel(
        self,
        channel_id: str,
        name: str,
        *,
        is_private: bool = False,
        bot_member: bool = True,
        is_archived: bool = False,
        members: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Add a channel with its human (or bot) ``members``. The bot can post only
        where it is a member: otherwise a private channel answers
        `channel_not_found` and a public one `not_in_channel` (unless the
        `chat:write.public` scope is granted), as Slack does. `conversations.members`
        lists ``members`` (and the bot, when it is one).
        """
        record = {
            "id": channel_id,
            "name": name,
            "is_private": is_private,
            "is_im": False,
            "bot_member": bot_member,
            "is_archived": is_archived,
            "members": list(dict.fromkeys(members)),
        }
        with self._lock:
            self.channels[channel_id] = record
            return dict(record)

    def join_channel(self, channel_id: str, *user_ids: str) -> None:
        """People join a channel (``conversations.members`` lists them from now on)."""
        with self._lock:
            members = self.channels[channel_id]["members"]
            members.extend(u for u in user_ids if u not in members)

    def leave_channel(self, channel_id: str, *user_ids: str) -> None:
        """People leave a channel."""
        with self._lock:
            record = self.channels[channel_id]
            record["members"] = [u for u in record["members"] if u not in user_ids]

    def fail(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        status: int | None = None,
        times: int | None = 1,
        channel: str | None = None,
        retry_after: int | None = None,
    ) -> Fault:
        """Make the next `times` matching calls to `method` fail (`None`: forever).

        `channel` restricts the fault to one recipient: it matches the call's
        `channel`, `user`, `user_id` or `users` argument, and a user id and
        their DM channel (`U2` / `DU2`) are treated as the same recipient.
        `status` defaults to 429 for `ratelimited` and 200 otherwise; a 429
        carries `Retry-After` (`retry_after`, default 1) and a 5xx answers an
        HTML page as Slack's edge does. Faults are consulted in the order they
        were added; a failed call has no effect on the double's state.
        """
        if status is None:
            status = 429 if error in ("ratelimited", "rate_limited") else 200
        if status == 429 and retry_after is None:
            retry_after = 1
        fault = Fault(method, error, status, times, channel, retry_after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def hold(self, method: str, *, channel: str | None = None) -> Hold:
        """Hold the next call to ``method`` (for ``channel``, matched as ``fail`` does)
        until ``release()``; it is then answered as usual. At most 30 s."""
        hold = Hold(method, channel, threading.Event(), threading.Event())
        with self._lock:
            self._holds.append(hold)
        return hold

    def _wait_if_held(self, method: str, args: dict[str, Any]) -> None:
        with self._lock:
            hold = next(
                (
                    h
                    for h in self._holds
                    if not h.taken
                    and h.method == method
                    and (h.channel is None or self._recipient(h.channel) in self._recipients(args))
                ),
                None,
            )
            if hold is None:
                return
            hold.taken = True
        hold.arrived.set()
        hold.released.wait(30)

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget recorded calls, messages, views, responses, faults and rate
        windows; keep users, channels, tokens and configuration, so one
        double can serve several test cases.
        """
        with self._lock:
            self._init_recorded_state()
            self._changed.notify_all()

    def make_response_url(self, key: str | None = None) -> str:
        """A `response_url` served by this double; POSTs land in `responses[key]`.

        Like Slack's, it takes at most 5 replies within 30 minutes (by `clock`).
        """
        key = key or uuid.uuid4().hex
        with self._lock:
            self._response_urls.setdefault(key, {"created": self.clock(), "uses": 0})
            self.responses.setdefault(key, [])
        return f"{self.base_url}/response/{key}"

    def issue_trigger_id(self, user_id: str | None = None) -> str:
        """Mint a trigger id as Slack attaches to interactions.

        `views.open` refuses it after 3 s (by `clock`) with
        `expired_trigger_id` and on second use with `trigger_exchanged`.
        """
        trigger = f"{int(time.time() * 1000)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
        with self._lock:
            self._triggers[trigger] = {"issued": self.clock(), "user": user_id, "used": False}
        return trigger

    # -- observation ------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        """Every recorded call to `method`, in arrival order."""
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def _channel_key(self, channel: str) -> str:
        if channel[:1] in ("U", "W") and channel in self.users:
            return "D" + channel
        return channel

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Current messages of a channel (edits applied, deletions removed).

        A user id is read as that user's DM channel.
        """
        with self._lock:
            store = self._messages.get(self._channel_key(channel), {})
            return [copy.deepcopy(m) for m in store.values()]

    def dms_to(self, user_id: str) -> list[dict[str, Any]]:
        """Current messages in the bot's DM with `user_id`."""
        return self.messages("D" + user_id)

    def get_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """One message in its current state, or None."""
        with self._lock:
            msg = self._messages.get(self._channel_key(channel), {}).get(ts)
            return copy.deepcopy(msg) if msg is not None else None

    def message_history(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """Every version of a message, the original first (kept after deletion)."""
        with self._lock:
            return copy.deepcopy(self._history.get((self._channel_key(channel), ts), []))

    def ephemerals_to(self, user_id: str) -> list[dict[str, Any]]:
        """Ephemeral messages shown to `user_id` (`chat.postEphemeral`)."""
        with self._lock:
            return [copy.deepcopy(e) for e in self.ephemerals if e["user"] == user_id]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate()` is true, re-checking after each request.

        Bolt runs listeners after `ack()` on its own threads, so tests need a
        way to wait for post-ack work without sleeping a fixed time.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
            return True

    def wait_for_calls(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Wait for at least `count` calls to `method`; raise TimeoutError otherwise."""
        if not self.wait_until(lambda: len(self.calls_to(method)) >= count, timeout):
            seen = [c.method for c in self.calls]
            raise TimeoutError(
                f"expected {count} call(s) to {method} within {timeout}s; saw {seen}"
            )
        return self.calls_to(method)

    def wait_for_responses(self, key: str, count: int = 1, timeout: float = 5.0) -> list[dict]:
        """Wait for at least `count` POSTs to the response_url `key`."""
        if not self.wait_until(lambda: len(self.responses.get(key, [])) >= count, timeout):
            raise TimeoutError(f"expected {count} response(s) to {key} within {timeout}s")
        with self._lock:
            return list(self.responses[key])

    # -- HTTP plumbing ----------------------------------------------------------

    def _handle(self, req: _Handler) -> None:
        url = urlsplit(req.path)
        try:
            length = int(req.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = req.rfile.read(length) if length > 0 else b""
        if url.path.startswith("/api/"):
            reply = self._api(url.path[len("/api/") :], req.headers, body, url.query)
        elif url.path.startswith("/response/"):
            reply = self._response_url(url.path[len("/response/") :], body)
        elif url.path == "/openid/connect/authorize":
            with self._lock:
                reply = self._openid_authorize(url.query)
        else:
            reply = _Reply(404, b"not found", "text/plain")
        try:
            req.send_response(reply.status)
            req.send_header("Content-Type", reply.content_type)
            req.send_header("Content-Length", str(len(reply.body)))
            for name, value in (reply.headers or {}).items():
                req.send_header(name, value)
            req.end_headers()
            req.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            req.close_connection = True

    def _api(self, method: str, headers: Mapping[str, str], body: bytes, query: str) -> _Reply:
        args, is_json, parse_error = _parse_args(headers.get("Content-Type", ""), body, query)
        if self.latency:
            time.sleep(self.latency)
        self._wait_if_held(method, args)
        with self._lock:
            call = Call(method, args, self.clock())
            self.calls.append(call)
            reply = self._dispatch(method, args, is_json, parse_error, headers)
            call.status = reply.status
            if reply.status == 429:
                self.ratelimited_count += 1
            call.error = reply.error
            self._changed.notify_all()
        return reply

    def _dispatch(
        self,
        method: str,
        args: dict[str, Any],
        is_json: bool,
        parse_error: str | None,
        headers: Mapping[str, str],
    ) -> _Reply:
        if method == "oauth.v2.access":
            return self._oauth_access(args, headers)
        if method == "openid.connect.token":
            return self._openid_token(args, headers)
        if method not in _METHODS:
            return _json_reply(200, {"ok": False, "error": "unknown_method", "req_method": method})
        auth = headers.get("Authorization") or ""
        token: str | None = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if not token and not is_json:
            token = args.get("token") or None
        if not token:
            return _json_reply(200, {"ok": False, "error": "not_authed"})
        if token not in self.tokens and token not in self.workspaces:
            return _json_reply(200, {"ok": False, "error": "invalid_auth"})
        if token in self.revoked:
            return _json_reply(200, {"ok": False, "error": "token_revoked"})
        self._token = token
        if self.calls and self.calls[-1].method == method and self.calls[-1].team_id is None:
            self.calls[-1].team_id = (self.workspaces.get(token) or {}).get("team_id")
        scope_headers = {
            "x-oauth-scopes": ",".join(self.scopes),
            "x-accepted-oauth-scopes": "",
        }
        if parse_error:
            return _json_reply(200, {"ok": False, "error": parse_error}, scope_headers)
        fault = self._take_fault(method, args)
        if fault is not None:
            return self._fault_reply(fault)
        handler = getattr(self, "_m_" + method.replace(".", "_"))
        try:
            payload = handler(args)
        except _ApiError as e:
            body = {"ok": False, "error": e.error, **e.extra}
            return _json_reply(e.status, body, {**scope_headers, **e.headers})
        return _json_reply(200, {"ok": True, **payload}, scope_headers)

    def _recipient(self, value: str) -> str:
        if value.startswith("D") and value[1:] in self.users:
            return value[1:]
        return value

    def _recipients(self, args: dict[str, Any]) -> set[str]:
        """Whom a call is for: its ``channel``, ``user``, ``user_id`` or ``users``."""
        candidates: set[str] = set()
        for key in ("channel", "user", "user_id"):
            value = args.get(key)
            if isinstance(value, str):
                candidates.add(self._recipient(value))
        users = args.get("users")
        if isinstance(users, str):
            candidates.update(self._recipient(u.strip()) for u in users.split(","))
        return candidates

    def _take_fault(self, method: str, args: dict[str, Any]) -> Fault | None:
        for fault in self._faults:
            if fault.method != method or fault.remaining == 0:
                continue
            if fault.channel is not None:
                if self._recipient(fault.channel) not in self._recipients(args):
                    continue
            if fault.remaining is not None:
                fault.remaining -= 1
            self._faults = [f for f in self._faults if f.remaining != 0]
            return fault
        return None

    @staticmethod
    def _fault_reply(fault: Fault) -> _Reply:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.status >= 500:
            return _Reply(
                fault.status, _EDGE_HTML.encode(), "text/html; charset=utf-8", headers, fault.error
            )
        return _json_reply(fault.status, {"ok": False, "error": fault.error}, headers)

    def _response_url(self, key: str, body: bytes) -> _Reply:
        def text(status: int, message: str) -> _Reply:
            return _Reply(status, message.encode(), "text/html")

        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                return text(400, "invalid_payload")
            state = self._response_urls.setdefault(key, {"created": self.clock(), "uses": 0})
            if self.clock() - state["created"] > _RESPONSE_URL_TTL:
                return text(404, "expired_url")
            if state["uses"] >= _RESPONSE_URL_USES:
                return text(404, "used_url")
            if not payload.get("delete_original") and not (
                payload.get("text") or payload.get("blocks") or payload.get("attachments")
            ):
                return text(400, "no_text")
            if "blocks" in payload:
                code, _ = _check_blocks(payload["blocks"], _MAX_MESSAGE_BLOCKS)
                if code:
                    return text(400, code)
            state["uses"] += 1
            self.responses.setdefault(key, []).append(payload)
            self._changed.notify_all()
            return text(200, "ok")

    # -- helpers used by the methods --------------------------------------------

    def _next_ts(self) -> str:
        micros = int(time.time() * 1_000_000)
        if micros <= self._last_ts:
            micros = self._last_ts + 1
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _user(self, user_id: Any) -> dict[str, Any]:
        record = self.users.get(user_id) if isinstance(user_id, str) else None
        if record is None:
            raise _ApiError("user_not_found")
        return record

    def _visible(self, u: dict[str, Any]) -> bool:
        """Whether the calling token's workspace can see ``u`` with ``users.info``.

        Slack answers ``user_not_found`` for a person of an unrelated workspace;
        people of the same Enterprise Grid org, and Slack Connect users, are found.
        """
        ws = self.workspaces.get(getattr(self, "_token", ""), {})
        team, org = ws.get("team_id", self.team_id), ws.get("enterprise_id")
        return (
            u["connect"]
            or u["team_id"] == team
            or (org is not None and u["enterprise_id"] == org)
            or u["id"] == self.bot_user_id
        )

    def _user_object(self, u: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC).astimezone(ZoneInfo(u["tz"]))
        offset = now.utcoffset()
        profile = {
            "display_name": u["display_name"],
            "display_name_normalized": u["display_name"],
            "real_name": u["real_name"],
            "real_name_normalized": u["real_name"],
            "team": u["team_id"],
        }
        if u["email"]:
            profile["email"] = u["email"]
        if u["is_bot"]:
            profile["bot_id"] = self.bot_id if u["id"] == self.bot_user_id else "B" + u["id"]
        out: dict[str, Any] = {
            "id": u["id"],
            "team_id": u["team_id"],
            "name": u["name"],
            "deleted": u["deleted"],
            "real_name": u["real_name"],
            "tz": u["tz"],
            "tz_label": now.tzname(),
            "tz_offset": int(offset.total_seconds()) if offset is not None else 0,
            "profile": profile,
            "is_admin": u["is_admin"],
            "is_owner": u["is_owner"],
            "is_primary_owner": u["is_owner"],
            "is_restricted": u["is_restricted"],
            "is_ultra_restricted": u["is_ultra_restricted"],
            "is_bot": u["is_bot"],
            "is_app_user": False,
            "updated": 1_700_000_000,
        }
        if u["enterprise_id"]:
            # Enterprise Grid: the org and the workspaces of it the person is in.
            out["enterprise_user"] = {
                "id": u["id"],
                "enterprise_id": u["enterprise_id"],
                "enterprise_name": "Grid",
                "is_admin": u["is_admin"],
                "is_owner": u["is_owner"],
                "teams": [u["team_id"]],
            }
        return out

    def _ensure_dm(self, user_id: str) -> str:
        channel_id = "D" + user_id
        if channel_id not in self.channels:
            self.channels[channel_id] = {
                "id": channel_id,
                "name": user_id,
                "is_private": True,
                "is_im": True,
                "user": user_id,
                "bot_member": True,
                "is_archived": False,
                "members": [user_id],
            }
        return channel_id

    def _dm_user(self, user_id: str) -> dict[str, Any]:
        user = self.users.get(user_id)
        if user is None:
            raise _ApiError("channel_not_found")
        if user["is_bot"]:
            raise _ApiError("cannot_dm_bot")
        return user

    def _postable_channel(self, channel: Any) -> str:
        """Resolve a `channel` argument the way chat.postMessage does."""
        if not isinstance(channel, str) or not channel:
            raise _ApiError("channel_not_found")
        if channel.startswith("#"):
            for record in self.channels.values():
                if record["name"] == channel[1:] and not record["is_im"]:
                    channel = record["id"]
                    break
            else:
                raise _ApiError("channel_not_found")
        if channel[0] in ("U", "W"):
            # Deactivated users still get the DM (Slack answers ok).
            self._dm_user(channel)
            return self._ensure_dm(channel)
        record = self.channels.get(channel)
        if record is None and channel.startswith("D") and channel[1:] in self.users:
            self._dm_user(channel[1:])
            return self._ensure_dm(channel[1:])
        if record is None:
            raise _ApiError("channel_not_found")
        if record["is_archived"]:
            raise _ApiError("is_archived")
        if not record["bot_member"]:
            if record["is_private"]:
                raise _ApiError("channel_not_found")
            if "chat:write.public" not in self.scopes:
                raise _ApiError("not_in_channel")
        return channel

    def _existing_channel(self, channel: Any) -> str:
        """Resolve a channel for chat.update/chat.delete: ids only, like Slack."""
        if not isinstance(channel, str) or channel not in self.channels:
            raise _ApiError("channel_not_found")
        return channel

    def _checked_blocks(self, blocks: Any, limit: int) -> list[dict[str, Any]]:
        code, messages = _check_blocks(blocks, limit)
        if code:
            raise _ApiError(code, extra={"response_metadata": {"messages": messages}})
        return _with_ids(blocks)

    def _check_text(self, args: dict[str, Any], *, required: bool = True) -> None:
        text = args.get("text")
        if isinstance(text, str) and len(text) > _MAX_TEXT:
            raise _ApiError("msg_too_long")
        if required and not (text or args.get("blocks") or args.get("attachments")):
            raise _ApiError("no_text")

    def _check_rate(self, channel: str) -> None:
        """Apply the configured chat.postMessage limits; raise a 429 when over."""
        now = self.clock()
        waits: list[float] = []
        if self.per_channel_rate is not None:
            tat = self._tat.get(channel, now)
            if tat > now:
                waits.append(tat - now)
        if self.workspace_cap_per_minute is not None:
            window = self._posted
            while window and window[0] <= now - self.workspace_window:
                window.popleft()
            if len(window) >= self.workspace_cap_per_minute:
                waits.append(window[0] + self.workspace_window - now)
        if waits:
            retry = str(max(1, math.ceil(max(waits))))
            raise _ApiError("ratelimited", status=429, headers={"Retry-After": retry})
        if self.per_channel_rate is not None:
            self._tat[channel] = max(self._tat.get(channel, now), now) + 1.0 / self.per_channel_rate
        if self.workspace_cap_per_minute is not None:
            self._posted.append(now)

    def _bot_message(self, args: dict[str, Any], ts: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": args.get("text") or "",
            "ts": ts,
            "bot_profile": {
                "id": self.bot_id,
                "app_id": self.app_id,
                "name": self.bot_name,
                "deleted": False,
                "team_id": self.team_id,
            },
        }
        if "blocks" in args:
            message["blocks"] = self._checked_blocks(args["blocks"], _MAX_MESSAGE_BLOCKS)
        if args.get("attachments"):
            message["attachments"] = copy.deepcopy(args["attachments"])
        if args.get("thread_ts"):
            message["thread_ts"] = str(args["thread_ts"])
        if args.get("metadata"):
            message["metadata"] = copy.deepcopy(args["metadata"])
        return message

    def _view_object(self, view: Any, kinds: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(view, dict):
            raise _invalid("[ERROR] missing required field: view")
        problems: list[str] = []
        if view.get("type") not in kinds:
            problems.append(f"[ERROR] must be one of {list(kinds)} [json-pointer:/view/type]")
        if view.get("type") == "modal":
            n = len(_text_of(view.get("title")))
            if not 0 < n <= 24:
                problems.append(
                    "[ERROR] must be between 1 and 24 characters [json-pointer:/view/title/text]"
                )
        meta = view.get("private_metadata", "")
        if isinstance(meta, str) and len(meta) > 3000:
            problems.append(
                "[ERROR] must be less than 3001 characters [json-pointer:/view/private_metadata]"
            )
        callback_id = view.get("callback_id", "")
        if isinstance(callback_id, str) and len(callback_id) > 255:
            problems.append(
                "[ERROR] must be less than 256 characters [json-pointer:/view/callback_id]"
            )
        if problems:
            raise _invalid(*problems)
        code, messages = _check_blocks(view.get("blocks", []), _MAX_SURFACE_BLOCKS, "/view/blocks")
        if code:
            raise _ApiError(code, extra={"response_metadata": {"messages": messages}})
        view_id = _upper_id("V")
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": view["type"],
            "blocks": _with_ids(view.get("blocks", [])),
            "private_metadata": meta or "",
            "callback_id": callback_id or "",
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{_rand_id(8)}",
            "title": copy.deepcopy(view.get("title")),
            "close": copy.deepcopy(view.get("close")),
            "submit": copy.deepcopy(view.get("submit")),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.app_id,
            "external_id": view.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }

    def _call_users(self, users: Any) -> list[dict[str, Any]]:
        if isinstance(users, str):
            try:
                users = json.loads(users)
            except ValueError:
                raise _ApiError("invalid_users") from None
        if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
            raise _ApiError("invalid_users")
        for u in users:
            if "slack_id" not in u and "external_id" not in u:
                raise _ApiError("invalid_users")
        return copy.deepcopy(users)

    def _slack_call(self, call_id: Any) -> dict[str, Any]:
        """The Call registered as ``call_id``; Slack's Calls methods answer
        ``invalid_call_id`` for one it does not know (calls.end, calls.update,
        calls.participants.* reference pages)."""
        call = self.slack_calls.get(call_id) if isinstance(call_id, str) else None
        if call is None:
            raise _ApiError("invalid_call_id")
        return call

    # -- Web API methods -----------------------------------------------------------

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        ws = self.workspaces.get(getattr(self, "_token", ""), {})
        return {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": ws.get("team_name", self.team_name),
            "user": self.bot_name,
            "team_id": ws.get("team_id", self.team_id),
            "enterprise_id": ws.get("enterprise_id"),
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _m_auth_revoke(self, args: dict[str, Any]) -> dict[str, Any]:
        """The calling token stops working; ``test=true`` only says it would."""
        if str(args.get("test", "")).lower() in ("1", "true"):
            return {"revoked": False}
        self.revoked.add(self._token)
        return {"revoked": True}

    def _m_team_info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "team": {
                "id": self.team_id,
                "name": self.team_name,
                "domain": self.team_domain,
                "url": f"https://{self.team_domain}.slack.com/",
                "email_domain": "",
                "icon": {"image_default": True},
                "is_verified": False,
            }
        }

    def _m_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self._user(args.get("user"))
        if not self._visible(user):
            raise _ApiError("user_not_found")
        return {"user": self._user_object(user)}

    def _m_conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel"):
            channel = self._existing_channel(args["channel"])
            return {"channel": {"id": channel}, "no_op": True, "already_open": True}
        users = args.get("users")
        if isinstance(users, list):
            ids = [str(u) for u in users]
        elif isinstance(users, str) and users.strip():
            ids = [u.strip() for u in users.split(",") if u.strip()]
        else:
            raise _ApiError("users_list_not_supplied")
        if len(ids) > 8:
            raise _ApiError("too_many_users")
        for uid in ids:
            user = self._user(uid)
            if user["is_bot"]:
                raise _ApiError("cannot_dm_bot")
            if user["deleted"]:
                raise _ApiError("user_disabled")
        if len(ids) == 1:
            existed = "D" + ids[0] in self.channels
            channel_id = self._ensure_dm(ids[0])
        else:
            members = sorted({*ids, self.bot_user_id})
            digest = hashlib.sha1(",".join(members).encode(), usedforsecurity=False)
            channel_id = "G" + digest.hexdigest()[:10].upper()
            existed = channel_id in self.channels
            self.channels.setdefault(
                channel_id,
                {
                    "id": channel_id,
                    "name": "mpdm-" + "--".join(members),
                    "is_private": True,
                    "is_im": False,
                    "is_mpim": True,
                    "bot_member": True,
                    "is_archived": False,
                    "members": list(dict.fromkeys(ids)),
                },
            )
        out: dict[str, Any] = {"channel": {"id": channel_id}}
        if existed:
            out.update(no_op=True, already_open=True)
        return out

    def _m_conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """Newest first, like Slack; ``metadata`` only with ``include_all_metadata``."""
        channel = self._existing_channel(args.get("channel"))
        try:
            limit = max(1, min(int(args.get("limit") or 100), 999))
        except (TypeError, ValueError):
            raise _ApiError("invalid_limit") from None
        with_meta = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        out = []
        for ts in sorted(self._messages.get(channel, {}), reverse=True)[:limit]:
            message = copy.deepcopy(self._messages[channel][ts])
            if not with_meta:
                message.pop("metadata", None)
            out.append(message)
        return {"messages": out, "has_more": False}

    def _m_conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        """The members of a conversation, a page at a time, as Slack lists them.

        Like Slack: each kind of conversation needs its read scope
        (``channels:read`` public, ``groups:read`` private, ``im:read``,
        ``mpim:read``), a private one the bot is not in is ``channel_not_found``
        (so is any DM but the bot's own), the bot is listed where it is a
        member, ``limit`` defaults to 100, and ``next_cursor`` is empty on the
        last page (base64 of ``user:<first id of the next page>``).
        """
        import base64

        channel = args.get("channel")
        record = self.channels.get(channel) if isinstance(channel, str) else None
        if record is None:
            raise _ApiError("channel_not_found")
        kind = (
            "im:read"
            if record["is_im"]
            else "mpim:read"
            if record.get("is_mpim")
            else "groups:read"
            if record["is_private"]
            else "channels:read"
        )
        if kind not in self.scopes:
            raise _ApiError(
                "missing_scope", extra={"needed": kind, "provided": ",".join(self.scopes)}
            )
        if record["is_private"] and not record["bot_member"]:
            raise _ApiError("channel_not_found")
        members = list(record["members"])
        if record["bot_member"] and self.bot_user_id not in members:
            members.append(self.bot_user_id)
        try:
            limit = int(args.get("limit") or 100)
        except (TypeError, ValueError):
            raise _ApiError("invalid_limit") from None
        limit = max(1, min(limit, 1000))
        start = 0
        cursor = args.get("cursor")
        if cursor:
            try:
                first = base64.b64decode(str(cursor), validate=True).decode()
            except ValueError:
                raise _ApiError("invalid_cursor") from None
            if not first.startswith("user:") or first[5:] not in members:
                raise _ApiError("invalid_cursor")
            start = members.index(first[5:])
        page = members[start : start + limit]
        rest = members[start + limit :]
        next_cursor = base64.b64encode(f"user:{rest[0]}".encode()).decode() if rest else ""
        return {"members": page, "response_metadata": {"next_cursor": next_cursor}}

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        channel = self._postable_channel(args.get("channel"))
        self._check_text(args)
        message = self._bot_message(args, "0")  # validate before spending rate budget
        self._check_rate(channel)
        ts = self._next_ts()
        message["ts"] = ts
        self._messages.setdefault(channel, {})[ts] = message
        self._history[(channel, ts)] = [copy.deepcopy(message)]
        return {"channel": channel, "ts": ts, "message": copy.deepcopy(message)}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._existing_channel(args.get("channel"))
        ts = args.get("ts")
        message = self._messages.get(channel, {}).get(ts) if isinstance(ts, str) else None
        if message is None:
            raise _ApiError("message_not_found")
        if not any(k in args for k in ("text", "blocks", "attachments")):
            raise _ApiError("no_text")
        self._check_text(args, required=False)
        updated = copy.deepcopy(message)
        if "text" in args:
            updated["text"] = args.get("text") or ""
        if "blocks" in args:
            # Slack keeps the old blocks when `blocks` is absent; [] removes them.
            updated["blocks"] = self._checked_blocks(args["blocks"], _MAX_MESSAGE_BLOCKS)
        if "attachments" in args:
            updated["attachments"] = copy.deepcopy(args["attachments"])
        if args.get("metadata"):
            updated["metadata"] = copy.deepcopy(args["metadata"])
        updated["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        self._messages[channel][ts] = updated
        self._history.setdefault((channel, ts), []).append(copy.deepcopy(updated))
        return {
            "channel": channel,
            "ts": ts,
            "text": updated["text"],
            "message": copy.deepcopy(updated),
        }

    def _m_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._existing_channel(args.get("channel"))
        ts = args.get("ts")
        store = self._messages.get(channel, {})
        if not isinstance(ts, str) or ts not in store:
            raise _ApiError("message_not_found")
        del store[ts]
        return {"channel": channel, "ts": ts}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        channel = self._postable_channel(args.get("channel"))
        user = self.users.get(args.get("user")) if isinstance(args.get("user"), str) else None
        if user is None or user["deleted"] or user["is_bot"]:
            raise _ApiError("user_not_in_channel")
        self._check_text(args)
        message = self._bot_message(args, self._next_ts())
        # In the record, `user` is the recipient (the bot is the author).
        self.ephemerals.append({**message, "channel": channel, "user": user["id"]})
        return {"message_ts": message["ts"]}

    def _m_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        trigger_id = args.get("trigger_id")
        if not isinstance(trigger_id, str) or not trigger_id:
            raise _invalid("[ERROR] missing required field: trigger_id")
        trigger = self._triggers.get(trigger_id)
        if trigger is None and not _TRIGGER_RE.fullmatch(trigger_id):
            raise _ApiError("invalid_trigger_id")
        if trigger is not None:
            if trigger["used"]:
                raise _ApiError("trigger_exchanged")
            if self.clock() - trigger["issued"] > _TRIGGER_TTL:
                raise _ApiError("expired_trigger_id")
        view = self._view_object(args.get("view"), ("modal",))
        if trigger is not None:
            trigger["used"] = True
        self.views[view["id"]] = view
        self._view_owner[view["id"]] = trigger["user"] if trigger else None
        return {"view": copy.deepcopy(view)}

    def _m_views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        view_id, external_id = args.get("view_id"), args.get("external_id")
        if not view_id and not external_id:
            raise _ApiError("invalid_arguments")
        current = (
            self.views.get(view_id)
            if view_id
            else next((v for v in self.views.values() if v["external_id"] == external_id), None)
        )
        if current is None:
            raise _ApiError("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise _ApiError("hash_conflict")
        new = self._view_object(args.get("view"), ("modal",))
        new.update(id=current["id"], root_view_id=current["root_view_id"])
        self.views[current["id"]] = new
        return {"view": copy.deepcopy(new)}

    def _m_views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = args.get("user_id")
        self._user(user_id)
        current = self.home_views.get(user_id)
        if current is not None and args.get("hash") and args["hash"] != current["hash"]:
            raise _ApiError("hash_conflict")
        view = self._view_object(args.get("view"), ("home",))
        if current is not None:
            view.update(id=current["id"], root_view_id=current["root_view_id"])
        self.home_views[user_id] = view
        return {"view": copy.deepcopy(view)}

    def _m_calls_add(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("external_unique_id") or not args.get("join_url"):
            raise _ApiError("invalid_arguments")
        if not args.get("created_by"):  # required with a bot token
            raise _invalid("[ERROR] created_by is required when using a bot token")
        creator = args["created_by"]
        if not isinstance(creator, str) or creator not in self.users:
            raise _ApiError("invalid_created_by")  # calls.add: "not a valid user ID"
        call_id = _upper_id("R")
        call = {
            "id": call_id,
            "date_start": int(args.get("date_start") or time.time()),
            "external_unique_id": args["external_unique_id"],
            "join_url": args["join_url"],
            "desktop_app_join_url": args.get("desktop_app_join_url"),
            "external_display_id": args.get("external_display_id"),
            "title": args.get("title"),
            "created_by": args["created_by"],
            "users": self._call_users(args["users"]) if args.get("users") else [],
        }
        self.slack_calls[call_id] = call
        return {"call": copy.deepcopy(call)}

    def _m_calls_update(self, args: dict[str, Any]) -> dict[str, Any]:
        call = self._slack_call(args.get("id"))
        for key in ("title", "join_url", "desktop_app_join_url"):
            if args.get(key):
                call[key] = args[key]
        return {"call": copy.deepcopy(call)}

    def _m_calls_end(self, args: dict[str, Any]) -> dict[str, Any]:
        call = self._slack_call(args.get("id"))
        if "date_end" in call:
            # calls.end's reference page: a Call already ended answers
            # {"ok": true, "error": "inactive_call"}, so slack_sdk raises nothing.
            return {"error": "inactive_call"}
        call["date_end"] = int(time.time())
        if args.get("duration") is not None:
            call["duration"] = int(args["duration"])
        return {}

    def _m_calls_participants_add(self, args: dict[str, Any]) -> dict[str, Any]:
        call = self._slack_call(args.get("id"))
        for user in self._call_users(args.get("users")):
            if user not in call["users"]:
                call["users"].append(user)
        return {}

    def _m_calls_participants_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        call = self._slack_call(args.get("id"))
        gone = self._call_users(args.get("users"))
        call["users"] = [u for u in call["users"] if u not in gone]
        return {}

    # -- used by SlackSender ----------------------------------------------------------

    def _find_action(
        self, channel: str, action_id: str, ts: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
        """Latest message in `channel` (or the one at `ts`) with an element
        `action_id`: (message, block, element)."""
        with self._lock:
            store = self._messages.get(self._channel_key(channel), {})
            candidates = [store[ts]] if ts in store else [] if ts else list(store.values())
            for message in reversed(candidates):
                for block in message.get("blocks") or []:
                    elements = list(block.get("elements") or [])
                    elements.append(block.get("accessory"))
                    for el in elements:
                        if isinstance(el, dict) and el.get("action_id") == action_id:
                            return copy.deepcopy(message), block, copy.deepcopy(el)
        return None

    def _latest_view(self, callback_id: str, user_id: str) -> dict[str, Any] | None:
        with self._lock:
            for view_id in reversed(list(self.views)):
                view = self.views[view_id]
                owner = self._view_owner.get(view_id)
                if view["callback_id"] == callback_id and owner in (None, user_id):
                    return copy.deepcopy(view)
        return None


# ---------------------------------------------------------------------------
# Signed requests towards the bot


class SlackSender:
    """Sends the signed HTTP requests Slack sends to a bot's request URL.

    Bodies are byte-for-byte what Slack posts (form-encoded commands,
    `payload=` JSON for interactivity, JSON for events), signed with
    `SignatureVerifier.generate_signature`, so Bolt's own verification runs.
    Each call accepts `timestamp=` (e.g. `sender.stale_timestamp()`, a valid
    signature over a replayed timestamp) and `signature=` (sent verbatim, e.g.
    `SlackSender.BAD_SIGNATURE`) to check that the bot answers 401.

    With a `double`, response URLs and trigger ids come from it, so replies
    are recorded and `views.open` enforces trigger expiry; the returned
    `requests.Response` then carries `response_key`, `response_url` and
    `trigger_id` attributes.
    """

    BAD_SIGNATURE = "v0=" + "0" * 64

    def __init__(
        self,
        bot_url: str,
        signing_secret: str,
        *,
        team_id: str | None = None,
        double: SlackDouble | None = None,
        team_domain: str | None = None,
        api_app_id: str = "A0001",
        verification_token: str = "verification-token",  # noqa: S107 - fixture
        timeout: float = 10.0,
        enterprise_id: str | None = None,
        enterprise_install: bool = False,
    ) -> None:
        self.bot_url = bot_url
        # Enterprise Grid: commands carry the org, and say whether the app was
        # installed org-wide.
        self.enterprise_id = enterprise_id
        self.enterprise_install = enterprise_install
        # Default to the double's workspace so payloads and API state agree.
        self.team_id = team_id or (double.team_id if double else "T0001")
        self.team_domain = team_domain or (double.team_domain if double else "meetbot-test")
        self.api_app_id = api_app_id
        self.verification_token = verification_token
        self.double = double
        self.timeout = timeout
        self._verifier = SignatureVerifier(signing_secret)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------

    def __enter__(self) -> SlackSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the per-thread HTTP sessions."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _session(self) -> requests.Session:
        # One keep-alive session per thread: requests.Session is not
        # documented as thread-safe and benchmarks send from many threads.
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    @staticmethod
    def stale_timestamp(age: int = 600) -> int:
        """A request timestamp older than Slack's 300 s replay window."""
        return int(time.time()) - age

    def sign(self, body: bytes | str, timestamp: int | None = None) -> dict[str, str]:
        """The two signature headers Slack adds for `body`."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self._verifier.generate_signature(timestamp=ts, body=body)
        assert signature is not None
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}

    def post(
        self,
        body: bytes,
        content_type: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Sign and POST a raw body to the bot; the building block of the rest."""
        signed = self.sign(body, timestamp)
        if signature is not None:
            signed["X-Slack-Signature"] = signature
        all_headers = {
            "Content-Type": content_type,
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            "Accept": "application/json,*/*",
            **signed,
            **(headers or {}),
        }
        return self._session().post(
            self.bot_url, data=body, headers=all_headers, timeout=self.timeout
        )

    def _user_name(self, user_id: str, user_name: str | None) -> str:
        if user_name is not None:
            return user_name
        record = self.double.users.get(user_id) if self.double else None
        if record is not None:
            return record["name"]
        return "alice" if user_id == "U1" else user_id.lower()

    def _user(self, user_id: str, user_name: str | None) -> dict[str, Any]:
        name = self._user_name(user_id, user_name)
        record = self.double.users.get(user_id) if self.double else None
        team = record["team_id"] if record is not None else self.team_id
        return {"id": user_id, "username": name, "name": name, "team_id": team}

    def _team(self) -> dict[str, str]:
        return {"id": self.team_id, "domain": self.team_domain}

    def _enterprise(self) -> dict[str, str] | None:
        """Interactivity payloads name the Enterprise Grid org (or carry null)."""
        return {"id": self.enterprise_id, "name": "Grid"} if self.enterprise_id else None

    def _response_url(self) -> tuple[str, str | None]:
        if self.double is not None:
            key = uuid.uuid4().hex
            return self.double.make_response_url(key), key
        digits = secrets.randbelow(10**13)
        return (
            f"https://hooks.slack.com/commands/{self.team_id}/{digits}/{secrets.token_hex(12)}",
            None,
        )

    def _trigger_id(self, user_id: str) -> str:
        if self.double is not None:
            return self.double.issue_trigger_id(user_id)
        return f"{int(time.time() * 1000)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"

    @staticmethod
    def _dm_channel(channel_id: str) -> str:
        return "D" + channel_id if channel_id[:1] in ("U", "W") else channel_id

    def _channel(self, channel_id: str, channel_name: str | None) -> dict[str, str]:
        if channel_name is None:
            record = self.double.channels.get(channel_id) if self.double else None
            if channel_id.startswith("D"):
                channel_name = "directmessage"
            elif record is not None:
                channel_name = record["name"]
            else:
                channel_name = "general" if channel_id == "C1" else channel_id.lower()
        return {"id": channel_id, "name": channel_name}

    def _interactive(
        self,
        payload: dict[str, Any],
        *,
        timestamp: int | None,
        signature: str | None,
        **attrs: Any,
    ) -> requests.Response:
        body = urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()
        resp = self.post(
            body, "application/x-www-form-urlencoded", timestamp=timestamp, signature=signature
        )
        for name, value in attrs.items():
            setattr(resp, name, value)
        return resp

    # -- what Slack sends ------------------------------------------------------------

    def command(
        self,
        text: str,
        *,
        user_id: str = "U1",
        user_name: str | None = None,
        channel_id: str = "C1",
        channel_name: str | None = None,
        command: str = "/meet",
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> requests.Response:
        """A slash command, form-encoded with Slack's fields in Slack's order.

        `user_name`/`channel_name` default to the double's records (else
        "alice"/"general" for the default ids); a user id as `channel_id`
        means the user's DM with the bot.
        """
        channel_id = self._dm_channel(channel_id)
        channel = self._channel(channel_id, channel_name)
        user_name = self._user_name(user_id, user_name)
        response_url, key = self._response_url()
        trigger_id = self._trigger_id(user_id)
        fields = [
            ("token", self.verification_token),
            ("team_id", self.team_id),
            ("team_domain", self.team_domain),
            ("channel_id", channel_id),
            ("channel_name", channel["name"]),
            ("user_id", user_id),
            ("user_name", user_name),
            ("command", command),
            ("text", text),
            ("api_app_id", self.api_app_id),
            *([("enterprise_id", self.enterprise_id)] if self.enterprise_id else []),
            ("is_enterprise_install", "true" if self.enterprise_install else "false"),
            ("response_url", response_url),
            ("trigger_id", trigger_id),
        ]
        resp = self.post(
            urlencode(fields).encode(),
            "application/x-www-form-urlencoded",
            timestamp=timestamp,
            signature=signature,
        )
        resp.response_key = key  # type: ignore[attr-defined]
        resp.response_url = response_url  # type: ignore[attr-defined]
        resp.trigger_id = trigger_id  # type: ignore[attr-defined]
        return resp

    def block_action(
        self,
        action_id: str,
        value: str | None,
        *,
        user_id: str,
        channel_id: str = "C1",
        message_ts: str | None = None,
        block_id: str | None = None,
        container: dict[str, Any] | None = None,
        user_name: str | None = None,
        channel_name: str | None = None,
        message: dict[str, Any] | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> requests.Response:
        """A `block_actions` click on a button.

        With a double and no `message`, the message is looked up there: the
        one at `message_ts`, or else the latest one holding `action_id`, so a
        test can "click the button the bot posted" and the payload carries
        the real `block_id`, button text and message as Slack would. A user id
        as `channel_id` means that user's DM with the bot.
        """
        channel_id = self._dm_channel(channel_id)
        element: dict[str, Any] = {}
        if message is None and self.double is not None:
            found = self.double._find_action(channel_id, action_id, message_ts)
            if found is not None:
                message, block, element = found
                block_id = block_id or block.get("block_id")
            elif message_ts is not None:
                message = self.double.get_message(channel_id, message_ts)
        if message is None:
            message = {
                "type": "message",
                "user": self.double.bot_user_id if self.double else "UMEETBOT",
                "text": "",
                "ts": message_ts or f"{time.time():.6f}",
            }
        message_ts = message.get("ts", message_ts)
        action: dict[str, Any] = {
            "action_id": action_id,
            "block_id": block_id or _rand_id(4),
            "text": element.get("text") or {"type": "plain_text", "text": "Button", "emoji": True},
            "type": element.get("type", "button"),
            "action_ts": f"{time.time():.6f}",
        }
        if value is not None:
            action["value"] = value
        if element.get("url"):
            action["url"] = element["url"]
        response_url, key = self._response_url()
        trigger_id = self._trigger_id(user_id)
        payload = {
            "type": "block_actions",
            "user": self._user(user_id, user_name),
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "container": container
            or {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel_id,
                "is_ephemeral": False,
            },
            "trigger_id": trigger_id,
            "team": self._team(),
            "enterprise": self._enterprise(),
            "is_enterprise_install": self.enterprise_install,
            "channel": self._channel(channel_id, channel_name),
            "message": message,
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [action],
        }
        return self._interactive(
            payload,
            timestamp=timestamp,
            signature=signature,
            response_key=key,
            response_url=response_url,
            trigger_id=trigger_id,
        )

    @staticmethod
    def _state_values(values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for block_id, actions in values.items():
            out[block_id] = {}
            for action_id, value in actions.items():
                if isinstance(value, dict):
                    out[block_id][action_id] = dict(value)
                elif isinstance(value, list):
                    out[block_id][action_id] = {
                        "type": "multi_users_select",
                        "selected_users": list(value),
                    }
                else:
                    out[block_id][action_id] = {"type": "plain_text_input", "value": value}
        return out

    def view_submission(
        self,
        callback_id: str,
        values: Mapping[str, Mapping[str, Any]],
        *,
        user_id: str,
        private_metadata: str | None = None,
        user_name: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> requests.Response:
        """A modal submission.

        `values` is `state.values`: `{block_id: {action_id: element_state}}`;
        a plain value is shorthand for a `plain_text_input`, a list for a
        `multi_users_select`. With a double, the latest modal the bot opened
        with this `callback_id` supplies the view id, blocks and (unless
        given) `private_metadata`.
        """
        opened = self.double._latest_view(callback_id, user_id) if self.double else None
        view_id = opened["id"] if opened else _upper_id("V")
        view: dict[str, Any] = {
            "id": view_id,
            "team_id": self.team_id,
            "type": "modal",
            "blocks": opened["blocks"] if opened else [],
            "private_metadata": private_metadata
            if private_metadata is not None
            else (opened["private_metadata"] if opened else ""),
            "callback_id": callback_id,
            "state": {"values": self._state_values(values)},
            "hash": opened["hash"] if opened else f"{int(time.time())}.{_rand_id(8)}",
            "title": opened["title"] if opened else {"type": "plain_text", "text": "Modal"},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": opened["close"] if opened else None,
            "submit": opened["submit"] if opened else None,
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.api_app_id,
            "external_id": "",
            "app_installed_team_id": self.team_id,
            "bot_id": self.double.bot_id if self.double else "BMEETBOT",
        }
        payload = {
            "type": "view_submission",
            "team": self._team(),
            "user": self._user(user_id, user_name),
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "trigger_id": self._trigger_id(user_id),
            "view": view,
            "response_urls": [],
            "is_enterprise_install": self.enterprise_install,
            "enterprise": self._enterprise(),
        }
        return self._interactive(payload, timestamp=timestamp, signature=signature)

    def shortcut(
        self,
        callback_id: str,
        *,
        user_id: str,
        user_name: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> requests.Response:
        """A global shortcut (no channel, no response_url)."""
        trigger_id = self._trigger_id(user_id)
        payload = {
            "type": "shortcut",
            "token": self.verification_token,
            "action_ts": f"{time.time():.6f}",
            "team": self._team(),
            "user": self._user(user_id, user_name),
            "is_enterprise_install": self.enterprise_install,
            "enterprise": self._enterprise(),
            "callback_id": callback_id,
            "trigger_id": trigger_id,
        }
        return self._interactive(
            payload, timestamp=timestamp, signature=signature, trigger_id=trigger_id
        )

    def message_shortcut(
        self,
        callback_id: str,
        *,
        user_id: str,
        channel_id: str,
        message: dict[str, Any],
        user_name: str | None = None,
        channel_name: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> requests.Response:
        """A message shortcut (`message_action`) on `message`."""
        channel_id = self._dm_channel(channel_id)
        response_url, key = self._response_url()
        trigger_id = self._trigger_id(user_id)
        payload = {
            "type": "message_action",
            "token": self.verification_token,
            "action_ts": f"{time.time():.6f}",
            "team": self._team(),
            "user": self._user(user_id, user_name),
            "channel": self._channel(channel_id, channel_name),
            "is_enterprise_install": self.enterprise_install,
            "enterprise": self._enterprise(),
            "callback_id": callback_id,
            "trigger_id": trigger_id,
            "response_url": response_url,
            "message_ts": message.get("ts"),
            "message": message,
        }
        return self._interactive(
            payload,
            timestamp=timestamp,
            signature=signature,
            response_key=key,
            response_url=response_url,
            trigger_id=trigger_id,
        )

    def event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> requests.Response:
        """An Events API `event_callback`; pass the same `event_id` with
        `retry_num` to replay a delivery as Slack's retries do."""
        event_id = event_id or _upper_id("Ev", 12)
        event = dict(event)
        event.setdefault("event_ts", f"{time.time():.6f}")
        bot_user = self.double.bot_user_id if self.double else "UMEETBOT"
        envelope = {
            "token": self.verification_token,
            "team_id": self.team_id,
            **({"enterprise_id": self.enterprise_id} if self.enterprise_id else {}),
            "api_app_id": self.api_app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": self.enterprise_id,
                    "team_id": None if self.enterprise_install else self.team_id,
                    "user_id": bot_user,
                    "is_bot": True,
                    "is_enterprise_install": self.enterprise_install,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": "4-" + secrets.token_urlsafe(24),
        }
        headers: dict[str, str] = {}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason
        resp = self.post(
            json.dumps(envelope).encode(),
            "application/json",
            timestamp=timestamp,
            signature=signature,
            headers=headers,
        )
        resp.event_id = event_id  # type: ignore[attr-defined]
        return resp
