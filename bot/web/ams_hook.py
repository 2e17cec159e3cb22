"""``POST /ams/hook/<MEETBOT_WEBHOOK_SECRET>``: AMS's ``listenerHookURL`` (stream events).

A ``liveStreamStarted``/``liveStreamEnded`` of a participant stream says who is
live: the stream is one the publish webhook recorded against a grant
(``bot.rooms.streams``), or, with Slack Calls on, one whose id names the person
(``bot.rooms.links.participant_stream_id``). AMS sends hooks from a worker pool
without ordering, so each event is applied only if its ``timestamp`` is newer
than the stream's last applied one (in the database: replicas agree), and
then the room's Call is brought up to date. AMS gives up on a hook after 2 s
and retries one that did not get 200, so this answers at once and the Slack
side happens later, on the Calls thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from bot.config import Settings
from bot.rooms.links import parse_stream_id
from bot.rooms.streams import Streams
from bot.slack.calls import SlackCalls
from bot.web.responses import json_response, method_not_allowed, path_secret_ok, read_body

__all__ = ["HOOK_PREFIX", "AmsHook"]

log = logging.getLogger("meetbot.calls")

HOOK_PREFIX = "/ams/hook/"
MAX_HOOK_BODY = 64 * 1024  # AMS's hook is a few hundred bytes
_JOINED = {"liveStreamStarted": True, "liveStreamEnded": False}


class AmsHook:
    """Keeps who is live in each room, in AMS's order, and mirrors it into its Slack Call."""

    def __init__(self, settings: Settings, streams: Streams, calls: SlackCalls | None) -> None:
        self.settings = settings
        self.streams = streams
        self.calls = calls

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """404 for a wrong path secret (constant time), 405 for other methods, 400 for a
        body that is neither AMS's JSON nor its form encoding; else 200, ours or not
        (with Calls off too)."""
        given = environ.get("PATH_INFO", "")[len(HOOK_PREFIX) :]
        if not path_secret_ok(given, self.settings.webhook_secret):
            return json_response(start_response, "404 Not Found", {"error": "not found"})
        if environ.get("REQUEST_METHOD") != "POST":
            return method_not_allowed(start_response, "POST")
        raw = read_body(environ, MAX_HOOK_BODY)
        if raw is None:
            return json_response(start_response, "400 Bad Request", {"error": "bad body length"})
        body = _parse(raw, str(environ.get("CONTENT_TYPE") or ""))
        if not isinstance(body, dict):
            return json_response(
                start_response, "400 Bad Request", {"error": "expected AMS's hook body"}
            )
        ours = self._event(body)
        log.debug("AMS hook %r for a stream%s", body.get("action"), "" if ours else " (ignored)")
        return json_response(start_response, "200 OK", {"ok": True})

    def _event(self, body: dict[str, Any]) -> bool:
        """Apply one stream event and queue the Call update; False when it is not ours
        (or older than one already applied)."""
        action, stream_id = body.get("action"), body.get("id")
        room_hint = body.get("mainTrackId") or body.get("roomId")
        if not isinstance(stream_id, str) or not stream_id:
            return False
        if room_hint is not None and not isinstance(room_hint, str):
            return False
        joined = _JOINED.get(action) if isinstance(action, str) else None
        if joined is None:
            return False
        applied = self.streams.hook_event(
            stream_id,
            room_hint=room_hint,
            timestamp=_timestamp(body.get("timestamp")),
            live=joined,
            identify=self._identify if self.calls is not None else None,
        )
        if applied is None:
            return False
        if self.calls is not None:
            self.calls.participant(applied[0], applied[1], joined=joined)
        return True

    def _identify(self, stream_id: str, room_hint: str | None) -> tuple[str, str] | None:
        return parse_stream_id(self.settings, stream_id, room_hint)


def _timestamp(value: Any) -> int | None:
    """AMS's ``timestamp``: milliseconds as a string (a number in the form encoding too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 19:
        return int(value.strip())
    return None


def _parse(raw: bytes, content_type: str) -> Any:
    """AMS's JSON (the default ``webhookContentType``) or its form encoding; None if neither."""
    ctype = content_type.split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
        if ctype == "application/json" or text.lstrip().startswith("{"):
            return json.loads(text)
        return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
    except (ValueError, RecursionError):
        return None
