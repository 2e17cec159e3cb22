"""The composition root: builds the services, the Bolt app and the HTTP routes.

Slack listeners live in ``handlers/`` and are found through the
``meetbot.listeners`` entry-point group, so that ``bot/`` never imports
``handlers/`` (the layering rule) while ``meetbot serve`` still wires them.
"""

from __future__ import annotations

import contextvars
import gc
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import entry_points
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.oauth.oauth_settings import OAuthSettings
from slack_bolt.request import BoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

from bot import reconcile as ams_reconcile
from bot.ams import AmsClient, AmsError, AmsManagement, is_enterprise
from bot.calls import CALL_JOIN_PREFIX, HOOK_PREFIX, SlackCalls, handle_hook
from bot.config import Settings
from bot.http import json_response
from bot.joinlinks import JOIN_PREFIX, handle_join
from bot.logs import correlation_id, with_correlation
from bot.metrics import Metrics, Readiness
from bot.notify import SlackGateway, acting_for
from bot.outbox import OutboxWorker, worker_id
from bot.revocation import WEBHOOK_PREFIX, handle_webhook
from bot.rooms import Rooms, SecretSource, StaticSecret
from bot.scheduler import Scheduler
from bot.schedules import Schedules
from bot.store import Store
from bot.stream_secret import (
    RotatingSecret,
    Vault,
    bootstrap,
    build_management,
    reconcile,
    rotate,
)
from bot.worker import FrontActivity, HandOverError, WorkerDied, WorkerLink
from bot.workspaces import BOT_SCOPES, ROTATE_BEFORE_MIN, GuardedOAuthFlow, Workspaces

log = logging.getLogger("meetbot.app")

MAX_BODY_BYTES = 1024 * 1024
UNEXPECTED_FAILURE = (
    ":warning: Something went wrong on my side and that did not happen. "
    "Please try again in a minute; if it keeps failing, tell your Slack admin."
)


class SocketModeError(Exception):
    """Socket Mode could not be established at start."""


class ListenError(Exception):
    """The HTTP port could not be opened at start."""


class _Stop(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM/SIGINT to leave the server loop.

    A KeyboardInterrupt, because waitress's loop swallows ordinary exceptions
    raised while it closes a connection but re-raises this one.
    """


Listener = Callable[[App, "Services"], None]


class Services:
    """Everything a listener may use, built once per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        metrics_hook: Callable[[Metrics], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.owner = worker_id()
        self.store = Store(settings.database_url)
        self.vault: Vault | None = None
        self.mgmt: AmsManagement | None = None
        self.rotating: RotatingSecret | None = None
        self.metrics = Metrics(self.store, clock=clock)
        if metrics_hook is not None:  # before anything binds its hooks
            metrics_hook(self.metrics)
        self.ams = AmsClient(
            settings.ams_url,
            settings.ams_app,
            rest_jwt_secret=settings.ams_rest_jwt_secret,
            timeout=(3.05, settings.ams_timeout),
            observer=self.metrics.observe_ams,
        )
        self.workspaces = Workspaces(settings, self.store.engine)
        self.slack = SlackGateway(
            settings.slack_bot_token,
            settings.slack_api_url,
            token_for=self.workspaces.token_for if settings.oauth_enabled else None,
        )
        self.rooms = Rooms(
            settings,
            self.store,
            self.ams,
            self.slack,
            self._secret_source(),
            clock=clock,
        )
        self.rooms.owner = self.owner
        self.rooms.on_event = self.metrics.room_event
        self.calls = SlackCalls.install(settings, self.store, self.rooms, self.slack, clock=clock)
        self.outbox = OutboxWorker(
            self.store,
            self.slack,
            self.rooms,
            workers=settings.fanout_workers,
            owner=self.owner,
            lease=settings.outbox_lease,
        )
        self.rooms.outbox = self.outbox
        self.schedules = Schedules(settings, self.store, self.rooms, self.slack, clock=clock)
        self.outbox.on_result = self.metrics.outbox_result
        self.scheduler: Scheduler | None = None
        # Post-ack work: never Bolt's own small pool, never the request thread.
        self._background = ThreadPoolExecutor(max_workers=16, thread_name_prefix="work")
        # Under `meetbot serve`, the worker process that runs it (bot/worker.py).
        self.worker: WorkerLink | None = None
        # Objects listeners make that handed-over calls may name (the App Home).
        self.shared: dict[str, Any] = {}
        self._portable: dict[str, Any] | None = None
        # Listeners' own cleanups (e.g. the App Home publisher): run first in stop(),
        # so work that can be dropped does not hold up the shutdown.
        self.on_stop: list[Callable[[], None]] = []

    def _secret_source(self) -> SecretSource:
        """The stream secret: from the environment, or stored and rotated.

        With MEETBOT_SECRET_KEY set the secret lives encrypted in the database
        (versioned); it is seeded from AMS_JWT_SECRET or AMS on first start,
        and settled against AMS at start (see ``stream_secret.reconcile``).
        """
        s = self.settings
        if not s.secret_key:
            return StaticSecret(s.ams_jwt_secret or "")
        self.vault = Vault(s.secret_key)
        self.mgmt = build_management(s)
        self.rotating = RotatingSecret(self.store, self.vault)
        return self.rotating

    def prepare_secret(self) -> None:
        """At start: seed and settle the stored stream secret (no-op when static)."""
        if self.vault is None or self.rotating is None:
            return
        bootstrap(self.settings, self.store, self.vault, self.mgmt)
        if self.mgmt is not None:
            log.info(
                "stream secret: %s",
                reconcile(self.settings, self.store, self.vault, self.mgmt, owner=self.owner),
            )
        self.rotating.invalidate()

    def rotate_if_due(self) -> str | None:
        """The sweep's rotation step: at most one replica rotates, when the secret aged out."""
        result = rotate(
            self.settings,
            self.store,
            self.vault,
            self.mgmt,
            owner=self.owner,
            now=int(self.clock()),
            on_rotated=self._rotated,
        )
        return result.reason if result.rotated else None

    def _rotated(self, version: int) -> None:
        assert self.rotating is not None
        self.rotating.invalidate()
        self.reissue_links()

    def reissue_links(self) -> int:
        """Edit DMs once per new secret version (click-time links need no edit)."""
        if self.rotating is None or self.settings.public_url:
            return 0
        version, _ = self.rotating.current()
        return self.rooms.reissue_links(version)

    def share(self, name: str, obj: Any) -> None:
        """Let calls handed to the worker process name ``obj`` (made by a listener).

        Listeners run in both processes, so each has its own object of that name.
        """
        self.shared[name] = obj
        self._portable = None

    def portable_objects(self) -> dict[str, Any]:
        """What crosses to the worker process by name, not by value (bot/worker.py).

        The same dict until a listener shares another object: built once, not
        on every hand-over.
        """
        if self._portable is not None:
            return self._portable
        objects: dict[str, Any] = {
            "services": self,
            "rooms": self.rooms,
            "slack": self.slack,
            "store": self.store,
            "ams": self.ams,
            "schedules": self.schedules,
            "workspaces": self.workspaces,
            "outbox": self.outbox,
            "metrics": self.metrics,
        }
        if self.calls is not None:
            objects["calls"] = self.calls
        objects.update(self.shared)
        self._portable = objects
        return objects

    def hand_over_to(self, worker: WorkerLink) -> None:
        """This process answers Slack; ``worker`` does the work (see bot/worker.py)."""
        self.worker = worker
        self.outbox.elsewhere = worker.kick

    def submit(
        self, fn: Callable[..., Any], *args: Any, reply_to: str | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Run ``fn`` after the ack, in the worker process when there is one.

        The returned future says only that the work was handed over then.
        """
        if self.worker is not None and self.worker.alive:
            try:
                self.worker.call(fn, args, kwargs, reply_to)
            except HandOverError as e:
                # A listener handing over something that cannot travel by name:
                # a bug, but the person who asked still gets their room.
                log.error("ran %r here: it cannot go to the worker process (%s)", fn, e)
            else:
                done: Future[Any] = Future()
                done.set_result(None)
                return done
        return self.submit_here(fn, *args, reply_to=reply_to, **kwargs)

    def submit_here(
        self, fn: Callable[..., Any], *args: Any, reply_to: str | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Run ``fn`` after the ack in this process; exceptions are logged, never lost.

        ``reply_to``: the request's ``response_url``. If the work fails in a way
        nobody planned for (a database locked past its busy timeout, a bug),
        the person who asked still hears that it did not happen.
        """

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception:
                log.exception("background task %s failed", getattr(fn, "__name__", fn))
                if reply_to:
                    self.slack.respond(reply_to, UNEXPECTED_FAILURE)
                raise

        # Copy the caller's context so its correlation id follows the work.
        return self._background.submit(contextvars.copy_context().run, run)

    def sweep_tasks(self) -> dict[str, Callable[[], object]]:
        """The units of due work every replica looks for on each tick."""
        tasks: dict[str, Callable[[], object]] = {
            "expire": self.rooms.sweep_expired,
            "cleanup": self.rooms.cleanup_failed,
            "reconcile": self.reconcile_if_due,
            "schedules": lambda: self.schedules.fire_due(self.owner),
        }
        if self.settings.rotation_enabled and self.mgmt is not None:
            tasks["rotate"] = self.rotate_if_due
        if self.vault is not None:
            # A rotation by another replica or by `meetbot rotate-secret`.
            tasks["reissue"] = self.reissue_links
        if self.calls is not None:
            tasks["calls"] = self.calls.sweep
        return tasks

    def uninstall(self, team_id: str | None, enterprise_id: str | None, why: str) -> None:
        """``app_uninstalled`` / ``tokens_revoked``: end the workspace's rooms and
        schedules, then forget its installation."""
        log.warning("workspace %s: %s; ending its rooms and schedules", team_id, why)
        if team_id:
            ended = self.rooms.end_workspace(team_id, reason=f"the app was {why}")
            stopped = self.schedules.stop_workspace(team_id)
            log.info("workspace %s: %d rooms ended, %d schedules stopped", team_id, ended, stopped)
        self.workspaces.forget(team_id, enterprise_id)

    def reconcile_if_due(self) -> object:
        return ams_reconcile.run_if_due(
            self.store,
            self.ams,
            self.rooms,
            owner=self.owner,
            now=int(self.clock()),
            interval=self.settings.reconcile_interval,
        )

    def start(self) -> None:
        self.outbox.start()
        self.scheduler = Scheduler(self.settings.sweep_interval, self.sweep_tasks())
        self.scheduler.start()

    def stop(self) -> None:
        for hook in self.on_stop:
            try:
                hook()
            except Exception:
                log.exception("stop hook %r failed", hook)
        if self.scheduler is not None:
            self.scheduler.stop()
        self._background.shutdown(wait=True, cancel_futures=False)
        self.schedules.close()
        if self.calls is not None:
            self.calls.close()
        self.outbox.stop()
        self.rooms.close()
        self.store.release_rooms(self.owner)
        self.ams.close()
        self.store.dispose()


def load_listeners() -> list[Listener]:
    """The ``register(app, services)`` functions that installed packages offer."""
    return [ep.load() for ep in entry_points(group="meetbot.listeners")]


class CorrelatedApp(App):
    """Bolt's App, running each request under one correlation id and its workspace.

    Not a middleware: Bolt's ``next()`` only flags "go on"; listeners run after
    every middleware has returned, outside any ``with`` one opened. Both the
    WSGI and the Socket Mode adapters call ``dispatch``, and with
    ``process_before_response=True`` the listeners run inside it.
    """

    #: Told when a request starts and ends (the worker waits for quiet moments).
    activity: FrontActivity | None = None

    def dispatch(self, req: BoltRequest) -> BoltResponse:
        if self.activity is None:
            return self._dispatch(req)
        self.activity.touch()
        try:
            return self._dispatch(req)
        finally:
            self.activity.touch()

    def _dispatch(self, req: BoltRequest) -> BoltResponse:
        # Slack calls made for this request, and work handed on from it
        # (Services.submit copies the context), use the request's workspace.
        with acting_for(req.context.team_id, req.context.enterprise_id):
            if correlation_id.get():  # HTTP mode: wsgi_app gave the whole request one
                return super().dispatch(req)
            event_id = req.body.get("event_id") if isinstance(req.body, dict) else None
            with with_correlation(event_id if isinstance(event_id, str) else None):
                return super().dispatch(req)


def build_bolt_app(services: Services, listeners: Iterable[Listener] | None = None) -> App:
    s = services.settings
    client = WebClient(token=s.slack_bot_token, base_url=s.slack_api_url, timeout=10)
    oauth: dict[str, Any] = {}
    if s.oauth_enabled:
        # Multi-workspace: Bolt's install flow at /slack/install and
        # /slack/oauth_redirect (state checked), installations in our database.
        oauth["oauth_flow"] = GuardedOAuthFlow(
            allowed=services.workspaces.allowed,
            client=WebClient(base_url=s.slack_api_url, timeout=10),
            settings=OAuthSettings(
                client_id=s.slack_client_id,
                client_secret=s.slack_client_secret,
                scopes=list(BOT_SCOPES),
                installation_store_bot_only=True,
                token_rotation_expiration_minutes=ROTATE_BEFORE_MIN,
                **services.workspaces.oauth_kwargs(),
            ),
        )
        oauth["installation_store"] = services.workspaces.installation_store
        oauth["installation_store_bot_only"] = True
    # Bolt turns its own OAuth (file-based stores, token ignored) on whenever
    # SLACK_CLIENT_ID/SECRET are in the environment. Beside a bot token they are
    # for Sign in with Slack (bot/calls.py), not installs: hide them from Bolt.
    hidden = {
        k: os.environ.pop(k)
        for k in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET")
        if not s.oauth_enabled and k in os.environ
    }
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
    if services.worker is not None:
        app.activity = services.worker.activity

    for register in listeners if listeners is not None else load_listeners():
        register(app, services)
    return app


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
    from urllib.parse import parse_qsl

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
    import io

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
    from urllib.parse import parse_qsl

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
    from slack_bolt.adapter.wsgi.http_request import WsgiHttpRequest
    from slack_bolt.adapter.wsgi.http_response import WsgiHttpResponse
    from slack_bolt.context import BoltContext
    from slack_bolt.request import BoltRequest
    from slack_bolt.request.internals import build_context

    raw = WsgiHttpRequest(environ)
    req = BoltRequest(body="", query=raw.query_string, headers=raw.get_headers())
    req.raw_body = environ["meetbot.slack_body"].decode("utf-8")
    req.body = environ["meetbot.slack_fields"]
    req.context = build_context(BoltContext({}), req.body)
    resp = bolt_app.dispatch(req)
    out = WsgiHttpResponse(status=resp.status, headers=resp.headers, body=resp.body)
    start_response(out.status, out.get_headers())
    return out.get_body()


def wsgi_app(services: Services, bolt_app: App | None) -> Callable[..., Iterable[bytes]]:
    """Bolt's routes plus the bot's own: health, and later join links and webhooks."""
    slack_handler = SlackRequestHandler(bolt_app) if bolt_app is not None else None
    readiness = Readiness.for_settings(
        services.store, services.settings, observer=services.metrics.observe_ams
    )

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return json_response(start_response, "400 Bad Request", {"error": "bad Content-Length"})
        if length > MAX_BODY_BYTES:
            return json_response(
                start_response, "413 Payload Too Large", {"error": "body too large"}
            )
        if path == "/healthz" and method == "GET":
            return json_response(start_response, "200 OK", {"ok": True})
        if path == "/metrics" and method == "GET":
            data, content_type = services.metrics.render()
            start_response(
                "200 OK",
                [
                    ("Content-Type", content_type),
                    ("Content-Length", str(len(data))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [data]
        if path == "/readyz" and method == "GET":
            ready, body = readiness.check()
            worker = services.worker.problem() if services.worker is not None else None
            if worker is not None:  # calls would wait (starting) or be lost (stopped)
                ready = False
                body = {"ready": False, "reasons": {**body.get("reasons", {}), "worker": worker}}
            return json_response(
                start_response, "200 OK" if ready else "503 Service Unavailable", body
            )
        if path.startswith(CALL_JOIN_PREFIX) and services.calls is not None:
            return services.calls.handle_join(environ, start_response)
        if path.startswith(HOOK_PREFIX):
            return handle_hook(services.calls, services.settings, environ, start_response)
        if path.startswith(JOIN_PREFIX):
            return handle_join(services.rooms, environ, start_response)
        if path.startswith(WEBHOOK_PREFIX):
            return handle_webhook(services.rooms, environ, start_response)
        if path.startswith("/slack/") and slack_handler is not None:
            if method == "POST":
                secret = services.settings.slack_signing_secret or ""
                refused = _check_slack_post(environ, length, secret)
                if refused is not None:
                    return json_response(start_response, refused[0], {"error": refused[1]})
            with with_correlation():
                try:
                    if bolt_app is not None and "meetbot.slack_fields" in environ:
                        return _dispatch_fields(bolt_app, environ, start_response)
                    return slack_handler(environ, start_response)
                except Exception as e:  # Bolt building its request from odd fields
                    log.warning("refused a Slack request Bolt could not read: %r", e)
                    return json_response(
                        start_response, "400 Bad Request", {"error": "malformed request"}
                    )
        return json_response(start_response, "404 Not Found", {"error": "not found"})

    return application


def warn_about_ams_edition(ams: AmsClient) -> None:
    """Say loudly at start when AMS is Community Edition: it checks no token at all,
    so every link would work for anyone. An unreachable AMS is only noted: the
    bot keeps running and reports AMS errors to users as they happen."""
    try:
        version = ams.version()
    except AmsError as e:
        log.warning("AMS did not answer the version check at start: %s", e)
        return
    if not is_enterprise(version):
        log.warning(
            "AMS %s is %s: it does NOT check join tokens, so any link works for anyone. "
            "meetbot needs Ant Media Server Enterprise Edition.",
            version.get("versionName", "?"),
            version.get("versionType", "not Enterprise Edition"),
        )
    else:
        log.info("AMS %s, %s", version.get("versionName", "?"), version.get("versionType"))


def serve(
    settings: Settings,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - a service listens on all interfaces
    ready: threading.Event | None = None,
) -> None:
    """Run the bot until SIGTERM/SIGINT: HTTP mode, or Socket Mode with SLACK_APP_TOKEN.

    This process answers Slack; a worker process it starts does the work that
    follows each ack, the outbox and the scheduler (bot/worker.py says why).
    Raises WorkerDied, after stopping, if the worker ended first.
    """
    services = Services(settings)
    services.store.migrate()
    services.prepare_secret()
    warn_about_ams_edition(services.ams)
    worker = WorkerLink(settings, services)
    services.hand_over_to(worker)
    try:
        socket_handler, server = _front(services, settings, host)
    except BaseException:  # a port in use, Slack refusing Socket Mode...
        worker.stop()
        services.stop()
        raise
    if settings.http_mode:
        log.info("listening on %s:%s (HTTP mode, /slack/events)", host, settings.port)

    def shutdown(signum: int, _frame: Any) -> None:
        raise _Stop(signum)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    # A dead worker stops the front too: the supervisor then restarts both.
    worker.on_death = lambda: os.kill(os.getpid(), signal.SIGTERM)
    if worker.died.is_set():
        worker.on_death()
    if ready is not None:
        ready.set()
    try:
        server.run()
    except _Stop as stop:
        log.info("signal %s: no longer taking requests, finishing work in hand", stop.args[0])
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=5)
        if socket_handler is not None:
            socket_handler.close()
        worker.stop()
        services.stop()
        log.info("stopped")
    if worker.died.is_set():
        raise WorkerDied(f"the worker process ended (exit code {worker.process.exitcode})")


def _front(services: Services, settings: Settings, host: str) -> tuple[Any, Any]:
    """The Bolt app and what carries Slack's requests to it: (Socket Mode handler, server)."""
    import waitress

    bolt_app = build_bolt_app(services)
    socket_handler = None
    if not settings.http_mode:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        socket_handler = SocketModeHandler(
            bolt_app,
            settings.slack_app_token,
            web_client=WebClient(base_url=settings.slack_api_url, timeout=10),
        )
        try:
            socket_handler.connect()
        except Exception as e:
            raise SocketModeError(
                f"Socket Mode could not connect to Slack ({type(e).__name__}: {e}); "
                "check SLACK_APP_TOKEN (an xapp- token with connections:write)"
            ) from None
        log.info("Socket Mode connected; health checks on port %s", settings.port)
    # Everything built so far lives as long as the process: keep it out of the
    # cyclic collector's full passes, which would otherwise walk it (several ms,
    # paid by whichever request is running then; seen in the ack p99).
    gc.collect()
    gc.freeze()
    try:
        server = waitress.create_server(
            wsgi_app(services, bolt_app if settings.http_mode else None),
            host=host,
            port=settings.port,
            threads=16,
            max_request_body_size=MAX_BODY_BYTES,
            ident="meetbot",
        )
    except OSError as e:
        if socket_handler is not None:
            socket_handler.close()
        raise ListenError(
            f"cannot listen on {host}:{settings.port} ({e.strerror or e}); "
            "is another meetbot (or something else) using PORT?"
        ) from None
    return socket_handler, server
