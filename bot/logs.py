"""Logging setup, with a filter that keeps tokens and secrets out of every line.

The filter sits on the root handler, so it sees records from every library
(Bolt logs whole request bodies when a signature fails). It rewrites the
message after formatting arguments in, which is where a token would appear.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}")
TOKEN_PARAM_RE = re.compile(r"(token=)[^&\s\"'<>]+", re.IGNORECASE)
SLACK_TOKEN_RE = re.compile(r"xox[abposr]-[A-Za-z0-9-]{6,}|xapp-[A-Za-z0-9-]{6,}")
REDACTED = "[redacted]"
NOISY = ("slack_bolt", "slack_sdk", "urllib3", "waitress", "apscheduler")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    text = JWT_RE.sub(REDACTED, text)
    text = TOKEN_PARAM_RE.sub(r"\1" + REDACTED, text)
    text = SLACK_TOKEN_RE.sub(REDACTED, text)
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

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
        data = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once: redaction on, noisy libraries quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
