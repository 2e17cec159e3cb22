"""Small WSGI helpers shared by the bot's own HTTP routes: JSON, redirects, bodies."""

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


#: Headers of every answer that may carry or lead to a personal link.
PRIVATE_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
]


def redirect(
    start_response: Callable[..., Any], location: str, cookie: str | None = None
) -> list[bytes]:
    """302 to ``location``, which no cache or Referer may keep (it can hold a token)."""
    headers = [("Location", location), ("Content-Length", "0"), *PRIVATE_HEADERS]
    if cookie is not None:
        headers.append(("Set-Cookie", cookie))
    start_response("302 Found", headers)
    return [b""]


def method_not_allowed(start_response: Callable[..., Any], allow: str) -> list[bytes]:
    data = b"method not allowed\n"
    start_response(
        "405 Method Not Allowed",
        [
            ("Allow", allow),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            *PRIVATE_HEADERS,
        ],
    )
    return [data]


def read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The request body, or None when its length is missing-shaped, negative or over ``limit``."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length < 0 or length > limit:
        return None
    return environ["wsgi.input"].read(length) if length else b""
