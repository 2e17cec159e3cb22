"""The composition root: builds the services, the Bolt app and the HTTP routes.

Slack listeners live in ``handlers/`` and are found through the
``meetbot.listeners`` entry-point group, so that ``bot/`` never imports
``handlers/`` (the layering rule) while ``meetbot serve`` still wires them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import entry_points
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient

from bot.ams import AmsClient
from bot.config import Settings
from bot.logs import correlation_id, with_correlation
from bot.metrics import Metrics, Readiness
from bot.notify import SlackGateway
from bot.outbox import OutboxWorker, worker_id
from bot.rooms import Rooms, StaticSecret
from bot.scheduler import Scheduler
from bot.store import Store

log = logging.getLogger("meetbot.app")

MAX_BODY_BYTES = 1024 * 1024


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT to leave the server loop."""


Listener = Callable[[App, "Services"], None]


class Services:
    """Everything a listener may use, built once per process."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.owner = worker_id()
        self.store = Store(settings.database_url)
        self.metrics = Metrics(self.store, clock=clock)
        self.ams = AmsClient(
            settings.ams_url,
            settings.ams_app,
            rest_jwt_secret=settings.ams_rest_jwt_secret,
            timeout=(3.05, settings.ams_timeout),
            observer=self.metrics.observe_ams,
        )
        self.slack = SlackGateway(settings.slack_bot_token, settings.slack_api_url)
        self.rooms = Rooms(
            settings,
            self.store,
            self.ams,
            self.slack,
            StaticSecret(settings.ams_jwt_secret or ""),
            clock=clock,
        )
        self.rooms.owner = self.owner
        self.rooms.on_event = self.metrics.room_event
        self.outbox = OutboxWorker(
            self.store, self.slack, self.rooms, workers=settings.fanout_workers, owner=self.owner
        )
        self.rooms.outbox = self.outbox
        self.outbox.on_result = self.metrics.outbox_result
        self.scheduler: Scheduler | None = None
        # Post-ack work: never Bolt's own small pool, never the request thread.
        self._background = ThreadPoolExecutor(max_workers=16, thread_name_prefix="work")

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn`` after the ack; exceptions are logged, never lost."""

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception:
                log.exception("background task %s failed", getattr(fn, "__name__", fn))
                raise

        # Copy the caller's context so its correlation id follows the work.
        return self._background.submit(contextvars.copy_context().run, run)

    def sweep_tasks(self) -> dict[str, Callable[[], object]]:
        """The units of due work every replica looks for on each tick."""
        return {"expire": self.rooms.sweep_expired, "cleanup": self.rooms.cleanup_failed}

    def start(self) -> None:
        self.outbox.start()
        self.scheduler = Scheduler(self.settings.sweep_interval, self.sweep_tasks())
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self._background.shutdown(wait=True, cancel_futures=False)
        self.outbox.stop()
        self.store.dispose()


def load_listeners() -> list[Listener]:
    """The ``register(app, services)`` functions that installed packages offer."""
    return [ep.load() for ep in entry_points(group="meetbot.listeners")]


def build_bolt_app(services: Services, listeners: Iterable[Listener] | None = None) -> App:
    s = services.settings
    client = WebClient(token=s.slack_bot_token, base_url=s.slack_api_url, timeout=10)
    app = App(
        token=s.slack_bot_token,
        signing_secret=s.slack_signing_secret or "unused-in-socket-mode",
        client=client,
        # Answer Slack as soon as the listener returns: listeners only ack and
        # hand over, so there is nothing to wait for and no 10 ms ack polling.
        process_before_response=True,
        token_verification_enabled=False,
        request_verification_enabled=s.http_mode,
    )

    @app.middleware
    def correlate(body: dict[str, Any], next_: Callable[[], Any]) -> Any:
        """One correlation id per Slack request; HTTP mode already set one in wsgi_app."""
        if correlation_id.get():
            return next_()
        event_id = body.get("event_id") if isinstance(body, dict) else None
        with with_correlation(event_id if isinstance(event_id, str) else None):
            return next_()

    for register in listeners if listeners is not None else load_listeners():
        register(app, services)
    return app


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [data]


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
            length = 0
        if length > MAX_BODY_BYTES:
            return _json(start_response, "413 Payload Too Large", {"error": "body too large"})
        if path == "/healthz" and method == "GET":
            return _json(start_response, "200 OK", {"ok": True})
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
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable", body)
        if path.startswith("/slack/") and slack_handler is not None:
            with with_correlation():
                return slack_handler(environ, start_response)
        return _json(start_response, "404 Not Found", {"error": "not found"})

    return application


def serve(
    settings: Settings,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - a service listens on all interfaces
    ready: threading.Event | None = None,
) -> None:
    """Run the bot until SIGTERM/SIGINT: HTTP mode, or Socket Mode with SLACK_APP_TOKEN."""
    import waitress

    services = Services(settings)
    services.store.migrate()
    bolt_app = build_bolt_app(services)
    services.start()
    server = waitress.create_server(
        wsgi_app(services, bolt_app if settings.http_mode else None),
        host=host,
        port=settings.port,
        threads=16,
        max_request_body_size=MAX_BODY_BYTES,
        ident="meetbot",
    )
    socket_handler = None
    if not settings.http_mode:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        socket_handler = SocketModeHandler(bolt_app, settings.slack_app_token)
        socket_handler.connect()
        log.info("Socket Mode connected; health checks on port %s", settings.port)
    else:
        log.info("listening on %s:%s (HTTP mode, /slack/events)", host, settings.port)

    def shutdown(signum: int, _frame: Any) -> None:
        raise _Stop(signum)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
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
        services.stop()
        log.info("stopped")
