"""``POST /ams/auth/<MEETBOT_WEBHOOK_SECRET>``: AMS's two authorization webhooks.

The one URL serves both settings: ``webhookAuthenticateURL`` (the publish
check, every join and reconnect) and ``webhookPlayAuthUrl`` (the play check,
``mode: "play"``). AMS lets a publish or a play through only on HTTP 200; the
decision is ``bot.rooms.access.Access``. It sits on AMS's join path with a 5 s
read timeout, and AMS makes every other publish of the application wait behind
a publish check, so it answers at once. Its URL carries
``MEETBOT_WEBHOOK_SECRET`` because AMS sends no credentials of its own; the
path is compared in constant time and a wrong one is indistinguishable from an
unknown route (404). Tokens arrive in the body and are never logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from bot.config import Settings
from bot.rooms.access import PLAY, PUBLISH, Access
from bot.web.responses import json_response, path_secret_ok, read_body

__all__ = ["WEBHOOK_PREFIX", "AmsAuth"]

log = logging.getLogger("meetbot.access")

WEBHOOK_PREFIX = "/ams/auth/"
MAX_WEBHOOK_BODY = 64 * 1024  # AMS's JSON is a few hundred bytes
#: How each answer to AMS is counted (``meetbot_auth_webhook_seconds{outcome}``).
_OUTCOMES = {"200": "allowed", "403": "refused", "503": "error"}


class AmsAuth:
    """Answers AMS's questions "may this token publish this stream?" and "... play this room?"."""

    def __init__(
        self,
        settings: Settings,
        access: Access,
        *,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``observe(outcome, seconds)`` hears how long each answer took (metrics):
        AMS's joins waited that long."""
        self.settings = settings
        self.access = access
        self.observe = observe

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        status: list[str] = []

        def record(line: str, headers: Any, *exc: Any) -> Any:
            status.append(line.split(" ", 1)[0])
            return start_response(line, headers, *exc)

        body = self._answer(environ, record)
        # A wrong path secret (404) is not AMS calling, so it is not observed.
        if self.observe is not None and status and status[0] != "404":
            self.observe(_OUTCOMES.get(status[0], "malformed"), time.perf_counter() - started)
        return body

    def _answer(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """``POST /ams/auth/<MEETBOT_WEBHOOK_SECRET>``: 200 lets it through, 403 refuses.

        404 for a wrong (or unconfigured) path secret, 405 for other methods, 400
        for a body that is not AMS's JSON (an object with a string ``streamId``).
        No token (AMS leaves out null fields) is a refusal. Anything unexpected
        refuses (503): AMS then keeps the person out, which is the safe side.
        """
        given = environ.get("PATH_INFO", "")[len(WEBHOOK_PREFIX) :]
        if not path_secret_ok(given, self.settings.webhook_secret):
            return json_response(start_response, "404 Not Found", {"error": "not found"})
        if environ.get("REQUEST_METHOD") != "POST":
            return json_response(start_response, "405 Method Not Allowed", {"error": "POST only"})
        raw = read_body(environ, MAX_WEBHOOK_BODY)
        if raw is None:
            return json_response(start_response, "400 Bad Request", {"error": "bad body length"})
        body = _parse(raw)
        stream_id = body.get("streamId") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(stream_id, str) or not stream_id:
            return json_response(
                start_response, "400 Bad Request", {"error": "expected AMS's JSON"}
            )
        token = body.get("token")
        kind = PLAY if body.get("mode") == "play" else PUBLISH
        try:
            decision = self.access.check(kind, stream_id, token if isinstance(token, str) else "")
        except Exception as e:  # database down, no current secret: refuse, say why in the log
            log.error("AMS %s check could not decide: %s", kind, type(e).__name__)
            return json_response(start_response, "503 Service Unavailable", {"allowed": False})
        if decision.allowed:
            log.debug("AMS %s check: %s (stream %r)", kind, decision.reason, stream_id)
            return json_response(start_response, "200 OK", {"allowed": True})
        log.info("AMS %s check refused stream %r: %s", kind, stream_id, decision.reason)
        return json_response(start_response, "403 Forbidden", {"allowed": False})


def _parse(raw: bytes) -> Any:
    """AMS's JSON: UTF-8, or ISO-8859-1 (the publish check's ``new StringEntity(String)``)."""
    for encoding in ("utf-8", "latin-1"):
        try:
            return json.loads(raw.decode(encoding))
        except UnicodeDecodeError:
            continue
        except (ValueError, RecursionError):
            return None
    return None
