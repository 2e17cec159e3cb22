"""Slack's requests: checked before Bolt sees them, then dispatched by Bolt's App.

Bolt verifies signatures and routes to the listeners (``handlers/``). Two
things happen here first, for every POST to ``/slack/``: the signature and the
payload's shape are checked on the raw bytes (Bolt parses before it verifies,
so an unsigned body it cannot parse would cost a 500 and a traceback), and the
parsed fields are handed to Bolt instead of being parsed twice.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.adapter.wsgi.http_request import WsgiHttpRequest
from slack_bolt.adapter.wsgi.http_response import WsgiHttpResponse
from slack_bolt.context import BoltContext
from slack_bolt.oauth.oauth_settings import OAuthSettings
from slack_bolt.request import BoltRequest
from slack_bolt.request.internals import build_context
from slack_bolt.response import BoltResponse
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

from bot.config import Settings
from bot.logs import correlation_id, with_correlation
from bot.slack.gateway import acting_for
from bot.slack.workspaces import BOT_SCOPES, ROTATE_BEFORE_MIN, GuardedOAuthFlow, Workspaces
from bot.web.responses import json_response

__all__ = ["SLACK_PREFIX", "CorrelatedApp", "SlackRoute", "build_bolt_app"]

log = logging.getLogger("meetbot.web")

SLACK_PREFIX = "/slack/"
#: What Bolt's App reads from the environment when it is not given them.
BOLT_ENV = ("SLACK_BOT_TOKEN", "SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET")


class CorrelatedApp(App):
    """Bolt's App, running each request under one correlation id and its workspace.

    Not a middleware: Bolt's ``next()`` only flags "go on"; listeners run after
    every middleware has returned, outside any ``with`` one opened. Both the
    WSGI and the Socket Mode adapters call ``dispatch``, and with
    ``process_before_response=True`` the listeners run inside it.
    """

    def dispatch(self, req: BoltRequest) -> BoltResponse:
        # Slack calls made for this request, and work handed on from it
        # (Services.submit copies the context), use the request's workspace.
        with acting_for(req.context.team_id, req.context.enterprise_id):
            if correlation_id.get():  # HTTP mode: wsgi_app gave the whole request one
                return super().dispatch(req)
            event_id = req.body.get("event_id") if isinstance(req.body, dict) else None
            with with_correlation(event_id if isinstance(event_id, str) else None):
                return super().dispatch(req)


def build_bolt_app(
    settings: Settings, workspaces: Workspaces, register: Callable[[App], None]
) -> App:
    """Bolt's App for ``settings`` (one bot token, or OAuth installs in our database);
    ``register(app)`` adds the listeners."""
    s = settings
    client = WebClient(token=s.slack_bot_token, base_url=s.slack_api_url, timeout=10)
    oauth: dict[str, Any] = {}
    if s.oauth_enabled:
        # Multi-workspace: Bolt's install flow at /slack/install and
        # /slack/oauth_redirect (state checked), installations in our database.
        oauth["oauth_flow"] = GuardedOAuthFlow(
            allowed=workspaces.allowed,
            client=WebClient(base_url=s.slack_api_url, timeout=10),
            settings=OAuthSettings(
                client_id=s.slack_client_id,
                client_secret=s.slack_client_secret,
                scopes=list(BOT_SCOPES),
                installation_store_bot_only=True,
                token_rotation_expiration_minutes=ROTATE_BEFORE_MIN,
                **workspaces.oauth_kwargs(),
            ),
        )
        oauth["installation_store"] = workspaces.installation_store
        oauth["installation_store_bot_only"] = True
    # Bolt reads settings it was not given from the environment. Everything it
    # needs is passed here, so it must see none of them:
    # - SLACK_BOT_TOKEN: `client` carries the token; Bolt, finding the variable
    #   too, warned at every start that it would be unused.
    # - SLACK_CLIENT_ID/SECRET turn Bolt's own OAuth on (file-based stores, token
    #   ignored). Beside a bot token they are for Sign in with Slack
    #   (bot/web/call_join.py), not installs.
    hide = ("SLACK_BOT_TOKEN",) if s.oauth_enabled else BOLT_ENV
    hidden = {k: os.environ.pop(k) for k in hide if k in os.environ}
    try:
        app = CorrelatedApp(
            signing_secret=s.slack_signing_secret or "unused-in-socket-mode",
            client=client,
            # Answer Slack as soon as the listener returns: listeners only ack and
            # hand over, so there is nothing to wait for and no 10 ms ack polling.
            process_before_response=True,
            token_verification_enabled=False,
            request_verification_enabled=s.http_mode,
            **oauth,
        )
    finally:
        os.environ.update(hidden)
    register(app)
    return app


class SlackRoute:
    """Everything under ``/slack/``: events, commands, clicks, and OAuth installs."""

    def __init__(self, bolt_app: App, signing_secret: str) -> None:
        self.bolt_app = bolt_app
        self.signing_secret = signing_secret
        self._handler = SlackRequestHandler(bolt_app)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            refused = _check_slack_post(environ, length, self.signing_secret)
            if refused is not None:
                return json_response(start_response, refused[0], {"error": refused[1]})
        with with_correlation():
            try:
                if "meetbot.slack_fields" in environ:
                    return _dispatch_fields(self.bolt_app, environ, start_response)
                return self._handler(environ, start_response)
            except Exception as e:  # Bolt building its request from odd fields
                log.warning("refused a Slack request Bolt could not read: %r", e)
                return json_response(
                    start_response, "400 Bad Request", {"error": "malformed request"}
                )


def _slack_signed(secret: str, environ: dict[str, Any], body: bytes) -> bool:
    """Slack's v0 signature over the raw bytes, with a timestamp inside the window.

    Checked before Bolt sees the body because Bolt parses it (JSON, form,
    ``payload=``) *before* it verifies: an unsigned body it cannot parse, or a
    timestamp header that is not a number, would cost a 500 and a traceback.
    Bolt verifies again; both follow Slack's rules.
    """
    ts = str(environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP") or "")
    sig = str(environ.get("HTTP_X_SLACK_SIGNATURE") or "")
    # slack_sdk's verifier does the HMAC, the 5-minute window and the constant-
    # time compare; it only needs a header it can read as a number.
    if not (secret and ts.isascii() and ts.isdigit() and len(ts) <= 12 and sig.isascii()):
        return False
    try:
        return SignatureVerifier(secret).is_valid(body=body, timestamp=ts, signature=sig)
    except UnicodeDecodeError:  # it decodes the body as UTF-8; Slack always sends UTF-8
        return False


def _slack_payload(body: bytes, content_type: str) -> Any:
    """The body as Slack meant it; ValueError if it is not JSON or form data.

    Bolt gets these fields rather than its own parse: Bolt's ``parse_body``
    takes any form body containing the text "payload" (``/meet payload
    review``, a command from #payload-team) for an interactivity payload,
    finds no ``payload`` field and reads nothing: the command would get a 404.
    """
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not text:
        return {}
    if content_type.split(";")[0] == "application/json" or text.startswith("{"):
        return json.loads(text)
    fields = dict(parse_qsl(text, keep_blank_values=True))
    if "payload" in fields:
        return json.loads(fields["payload"])
    return fields


def _payload_problem(body: Any) -> str | None:
    """The first field of a signed payload that is not shaped as Slack sends it, else None.

    Bolt's matchers and argument builders index these without checking types
    (a string ``actions``, a view without ``type``: 500), and listeners should
    be able to trust them too.
    """
    if not isinstance(body, dict):
        return "body"
    for key in _SLACK_STRINGS:
        if body.get(key) is not None and not isinstance(body[key], str):
            return key
    for key in ("user", "team", "enterprise", "channel", "view", "event", "container", "message"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            return key
    for key in ("view", "event"):  # null is fine elsewhere (an org install's team), not here
        if key in body and body[key] is None:
            return key
    auths = body.get("authorizations")
    if auths is not None and not (
        isinstance(auths, list) and all(isinstance(a, dict) for a in auths)
    ):
        return "authorizations"
    actions = body.get("actions")
    if body.get("type") == "block_actions" and not (
        isinstance(actions, list)
        and actions
        and all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions)
    ):
        return "actions"
    view = body.get("view") or {}
    if body.get("type") in ("view_submission", "view_closed") and not (
        isinstance(view.get("type"), str) and isinstance(view.get("callback_id"), str)
    ):
        return "view"
    if view.get("private_metadata") is not None and not isinstance(view["private_metadata"], str):
        return "view.private_metadata"
    for state in (body.get("state"), view.get("state")):
        values = state.get("values") if isinstance(state, dict) else state
        if values is not None and not (
            isinstance(values, dict)
            and all(
                isinstance(block, dict) and all(_element_ok(el) for el in block.values())
                for block in values.values()
            )
        ):
            return "state"
    return None


_SLACK_STRINGS = (
    *("type", "command", "text", "user_id", "team_id", "channel_id", "callback_id"),
    *("trigger_id", "response_url", "action_id"),
)
_SLACK_LISTS = {
    "selected_options": dict,
    "selected_users": str,
    "selected_conversations": str,
    "selected_channels": str,
}


def _element_ok(el: Any) -> bool:
    """One input's state in ``state.values`` has Slack's containers (scalars are not checked)."""
    if not isinstance(el, dict):
        return False
    if el.get("selected_option") is not None and not isinstance(el["selected_option"], dict):
        return False
    return all(
        el.get(key) is None
        or (isinstance(el[key], list) and all(isinstance(item, kind) for item in el[key]))
        for key, kind in _SLACK_LISTS.items()
    )


def _check_slack_post(environ: dict[str, Any], length: int, secret: str) -> tuple[str, str] | None:
    """Read a POST to /slack/ once and refuse it, (status, error), unless Bolt can take it.

    Leaves the same bytes in ``wsgi.input`` for Bolt, and the parsed fields in
    ``environ["meetbot.slack_fields"]``: Bolt gets them rather than parsing the
    body a second time (a tenth of the ack path's CPU, measured), and they are
    right where Bolt would misread the body.
    """
    stream = environ.get("wsgi.input")
    body = stream.read(length) if stream is not None and length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    if not _slack_signed(secret, environ, body):
        if _is_ssl_check(body, str(environ.get("CONTENT_TYPE") or "")):
            return None  # Slack's certificate check: Bolt answers 200 itself and runs nothing
        return "401 Unauthorized", "invalid request"
    try:
        payload = _slack_payload(body, str(environ.get("CONTENT_TYPE") or ""))
        problem = _payload_problem(payload)
    except (ValueError, RecursionError):
        problem = "not UTF-8 JSON or form data"
    if problem is not None:
        log.warning("refused a signed Slack request: malformed %s", problem)
        return "400 Bad Request", "malformed request"
    environ["meetbot.slack_fields"] = payload
    environ["meetbot.slack_body"] = body
    return None


def _is_ssl_check(body: bytes, content_type: str) -> bool:
    """A form body with ``ssl_check=1``, which Bolt lets through unsigned (and parses safely)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if content_type.split(";")[0] == "application/json" or text.startswith("{"):
        return False
    if "payload" in text:
        return False
    return dict(parse_qsl(text, keep_blank_values=True)).get("ssl_check") == "1"


def _dispatch_fields(
    bolt_app: App, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """Dispatch a checked Slack POST with the fields ``_check_slack_post`` parsed.

    Bolt's request is built around an empty body (nothing to parse), then given
    the raw text (its own signature check reads it) and the fields.
    """
    raw = WsgiHttpRequest(environ)
    req = BoltRequest(body="", query=raw.query_string, headers=raw.get_headers())
    req.raw_body = environ["meetbot.slack_body"].decode("utf-8")
    req.body = environ["meetbot.slack_fields"]
    req.context = build_context(BoltContext({}), req.body)
    resp = bolt_app.dispatch(req)
    out = WsgiHttpResponse(status=resp.status, headers=resp.headers, body=resp.body)
    start_response(out.status, out.get_headers())
    return out.get_body()
