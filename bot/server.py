"""``meetbot serve``: one process answers Slack, works after each ack, sends, sweeps.

It builds the bot (``bot.services``), migrates the database, settles the
stream secret, then serves HTTP with waitress (or connects out to Slack in
Socket Mode, still answering health checks on ``PORT``) until SIGTERM or
SIGINT, when it stops taking requests, finishes the work in hand and hands
back its leases. More capacity is more replicas on one PostgreSQL.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from typing import Any

from slack_sdk import WebClient

from bot.ams.client import AmsClient, AmsError, is_enterprise
from bot.config import Settings
from bot.services import Services
from bot.web.app import MAX_BODY_BYTES

__all__ = ["ListenError", "SocketModeError", "serve"]

log = logging.getLogger("meetbot.server")


class SocketModeError(Exception):
    """Socket Mode could not be established at start."""


class ListenError(Exception):
    """The HTTP port could not be opened at start."""


class _Stop(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM/SIGINT to leave the server loop.

    A KeyboardInterrupt, because waitress's loop swallows ordinary exceptions
    raised while it closes a connection but re-raises this one.
    """


def serve(
    settings: Settings,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - a service listens on all interfaces
    ready: threading.Event | None = None,
) -> None:
    """Run the bot until SIGTERM/SIGINT: HTTP mode, or Socket Mode with SLACK_APP_TOKEN.

    One process answers Slack, does the work after each ack, sends the outbox
    and runs the scheduler; more capacity is more replicas on one PostgreSQL.
    """
    services = Services(settings)
    services.store.migrate()
    services.prepare_secret()
    warn_about_ams_edition(services.ams)
    try:
        socket_handler, server = _front(services, settings, host)
    except BaseException:  # a port in use, Slack refusing Socket Mode...
        services.stop()
        raise
    services.start()
    if settings.http_mode:
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


def _front(services: Services, settings: Settings, host: str) -> tuple[Any, Any]:
    """The Bolt app and what carries Slack's requests to it: (Socket Mode handler, server)."""
    import waitress

    bolt_app = services.bolt_app()
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
    # paid by whichever request is running then).
    gc.collect()
    gc.freeze()
    try:
        server = waitress.create_server(
            services.wsgi_app(bolt_app if settings.http_mode else None),
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
