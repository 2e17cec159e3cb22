"""The bot's one HTTP endpoint: every route, by path, behind one size check.

``/slack/`` goes to Bolt (``bot.web.slack``); ``/healthz``, ``/readyz`` and
``/metrics`` are answered here; the rest are the bot's own routes, each a WSGI
callable that the composition root (``bot.services``) built with what it needs:
click-time links, the Slack Call sign-in, and AMS's two webhooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bot.metrics import Metrics
from bot.web.health import Readiness
from bot.web.responses import json_response
from bot.web.slack import SLACK_PREFIX

__all__ = ["MAX_BODY_BYTES", "Route", "wsgi_app"]

MAX_BODY_BYTES = 1024 * 1024

#: A WSGI callable; ``(path prefix, route)`` pairs are tried in order.
Route = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi_app(
    *,
    metrics: Metrics,
    readiness: Readiness,
    slack: Route | None,
    routes: Sequence[tuple[str, Route]],
) -> Route:
    """The WSGI application: ``slack`` is None in Socket Mode (Slack connects nowhere)."""

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
            data, content_type = metrics.render()
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
            return json_response(
                start_response, "200 OK" if ready else "503 Service Unavailable", body
            )
        for prefix, route in routes:
            if path.startswith(prefix):
                return route(environ, start_response)
        if path.startswith(SLACK_PREFIX) and slack is not None:
            return slack(environ, start_response)
        return json_response(start_response, "404 Not Found", {"error": "not found"})

    return application
