"""Small WSGI helpers shared by the bot's own HTTP routes (health, webhooks, join links)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any


def json_response(
    start_response: Callable[..., Any], status: str, body: dict[str, Any]
) -> list[bytes]:
    """A small JSON answer that no cache keeps."""
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


def path_secret_ok(given: str, expected: str | None) -> bool:
    """Constant-time comparison of a secret carried in a URL path; False when none is set."""
    if not expected:
        return False
    # PATH_INFO is a latin-1 decoded str in WSGI: back to its bytes, never a TypeError.
    return hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode("utf-8"))
