"""Logging setup, with a filter that keeps tokens and secrets out of every line.

The filter sits on the root handler, so it sees records from every library
(Bolt logs whole request bodies when a signature fails). It rewrites the
message after formatting arguments in, which is where a token would appear.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}")
# "=" as itself, or percent-encoded (a link inside another URL's query string).
TOKEN_PARAM_RE = re.compile(r"(token(?:=|%3D))[^&\s\"'<>\\]+", re.IGNORECASE)
# Bot, user, app-level and refresh (xoxe-) tokens; "xoxe.xoxb-…" is caught by its tail.
SLACK_TOKEN_RE = re.compile(r"xox[abposre]-[A-Za-z0-9-]{6,}|xapp-[A-Za-z0-9-]{6,}")
# A "/" as it reaches a log line: itself, JSON-escaped by Slack ("\/", with more
# backslashes after a repr()), as a JSON unicode escape, or percent-encoded.
_SLASH = r"(?:\\*/|\\+u002[fF]|%2[fF])"
# A click-time link id (bot/rooms/links.py) is as good as a token while its room is
# open. Ids are 43 base64url characters; any run of 16 or more after /join/ goes.
# "/join/room/<room id>" (the Slack Call's link) names a room, not a person: kept.
JOIN_LINK_RE = re.compile(rf"({_SLASH}join{_SLASH})(?!room{_SLASH})[A-Za-z0-9_-]{{16,}}")
# The one-time code of an OAuth or Sign in with Slack redirect (?code=…).
CODE_PARAM_RE = re.compile(r"((?:[?&]|\\+u0026|%3[fF]|%26)code(?:=|%3[dD]))[^&\s\"'<>\\]+")
REDACTED = "[redacted]"
NOISY = ("slack_bolt", "slack_sdk", "urllib3", "waitress", "apscheduler")

#: The id that ties together every log line of one Slack request or unit of work.
#: A ContextVar, not a thread-local, so it follows work handed to another thread
#: with ``contextvars.copy_context().run`` (see ``Services.submit``).
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)


def new_correlation_id() -> str:
    """A short random id: unique enough to grep for, short enough to read."""
    return uuid.uuid4().hex[:12]


@contextmanager
def with_correlation(cid: str | None = None) -> Iterator[str]:
    """Run the block under correlation id ``cid`` (a fresh one when None); yields it.

    The previous id comes back on exit, so units of work can nest.
    """
    value = cid or new_correlation_id()
    token = correlation_id.set(value)
    try:
        yield value
    finally:
        correlation_id.reset(token)


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks run in their submitter's context.

    Plain pools run tasks in an empty context, so the correlation id is lost
    at every hand-over; this one copies it (``map`` goes through ``submit``).
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class CorrelationFilter(logging.Filter):
    """Puts the current correlation id on every record as ``cid`` ("-" outside any).

    On the handler, not on loggers, so records of every library get it too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.cid = correlation_id.get() or "-"
        return True


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every token, link id and configured secret replaced by ``[redacted]``.

    Libraries log what they send and receive: slack_sdk at DEBUG logs Slack's
    JSON as it came, with every "/" escaped as "\\/", so each pattern accepts
    the escaped forms too. ``secrets`` should come through :func:`secret_forms`.
    """
    text = JWT_RE.sub(REDACTED, text)
    text = TOKEN_PARAM_RE.sub(r"\1" + REDACTED, text)
    text = SLACK_TOKEN_RE.sub(REDACTED, text)
    text = JOIN_LINK_RE.sub(r"\1" + REDACTED, text)
    text = CODE_PARAM_RE.sub(r"\1" + REDACTED, text)
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    return text


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as it may appear in a log line, longest first.

    Itself, JSON-escaped (a secret with a quote or backslash in it), with "/"
    escaped the way Slack's JSON does, and as ``repr()`` shows it.
    """
    forms: set[str] = set()
    for s in secrets:
        if not s:
            continue
        escaped = json.dumps(s, ensure_ascii=False)[1:-1]
        written = {s, escaped, escaped.replace("/", "\\/")}
        forms.update(written | {repr(f)[1:-1] for f in written})
    return sorted(forms, key=len, reverse=True)


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = secret_forms(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if clean != message:
            record.msg = clean
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        cid = getattr(record, "cid", "-")
        data = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "cid": None if cid == "-" else cid,
            # Replicas often write to one stream (a shared journal, kubectl logs -l).
            "pid": record.process,
        }
        if record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once: redaction on, noisy libraries quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    handler.addFilter(CorrelationFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(cid)s]: %(message)s")
        )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
