"""The pages a person sees when a link cannot take them into a room, and why.

Self-contained HTML (inline CSS under a hash-pinned CSP, no scripts, no
fetches): they are shown to whoever opens a personal link, so they load
nothing and leak no Referer.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from html import escape
from typing import Any

from bot.web.responses import PRIVATE_HEADERS

__all__ = ["PAGES", "page", "render_page"]

_CSS = """
:root{color-scheme:light dark}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
background:#f4f1ec;color:#1d1c1d}
main{max-width:32rem;margin:1.5rem;padding:2rem 2.25rem;background:#fff;border-radius:14px;
box-shadow:0 2px 12px rgba(0,0,0,.08);border-top:6px solid #e0a100}
main.gone{border-top-color:#c0392b}
.icon{font-size:2.5rem;line-height:1}
h1{font-size:1.45rem;margin:.6rem 0 .4rem}
p{margin:.6rem 0}
.how{background:#f7f7f9;border-radius:8px;padding:.8rem 1rem}
code{font:.95em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#ececf1;
padding:.1em .35em;border-radius:4px}
small{color:#616061}
@media (prefers-color-scheme:dark){body{background:#1a1d21;color:#e8e8e8}
main{background:#222529;box-shadow:none}.how{background:#2c2f33}code{background:#35383c}
small{color:#9b9b9b}}
""".strip()
_STYLE_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
_PAGE_CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_HOW_NEW = (
    "To get a new link, press <strong>Get my link</strong> on the room&#8217;s message in "
    "Slack, or ask the room&#8217;s owner to start a new room with <code>/meet</code>."
)
PAGES: dict[str, tuple[str, str, str, str, list[str]]] = {
    # name: (HTTP status, icon, title, css class, paragraphs of trusted HTML)
    "ended": (
        "410 Gone",
        "&#9898;",
        "This meeting has ended",
        "gone",
        [
            "The room this link was for is closed, so the link no longer works. "
            "Personal links stop working when their room ends.",
            "Need to meet again? Ask the room&#8217;s owner to start a new room with "
            "<code>/meet</code> in Slack; everyone gets a fresh link by DM.",
        ],
    ),
    "removed": (
        "410 Gone",
        "&#9940;",
        "This link was withdrawn",
        "gone",
        [
            "The room&#8217;s owner removed you from this meeting, so your personal link "
            "no longer lets you in.",
            "If you think that is a mistake, ask the room&#8217;s owner in Slack: they can "
            "start a new room with <code>/meet</code> and invite you.",
        ],
    ),
    "open": (
        "200 OK",
        "&#127909;",
        "Your meeting link",
        "",
        [
            "This is a personal link to a meeting. It opens the meeting when you click "
            "it in your browser; link previews and scanners are shown this page instead.",
            '<a href="{href}">Open the meeting</a>. If it brings you back here, '
            "open the link in Chrome, Firefox, Safari or Edge.",
        ],
    ),
    "unknown": (
        "404 Not Found",
        "&#128279;",
        "This link isn&#8217;t valid",
        "",
        [
            "I don&#8217;t know this meeting link. It may have been cut off when it was "
            "copied, or it was replaced by a newer one.",
            _HOW_NEW,
        ],
    ),
    # The Slack Calls sign-in (bot/web/call_join.py)
    "signin_failed": (
        "400 Bad Request",
        "&#128273;",
        "That sign-in didn&#8217;t work",
        "",
        [
            "Signing in with Slack took too long, was cancelled, or was opened in "
            "another browser, so I can&#8217;t tell who you are.",
            "Go back to Slack and press <strong>Join</strong> on the call again. "
            "You can also press <strong>Get my link</strong> on the room&#8217;s "
            "message to get your personal link by DM.",
        ],
    ),
    "wrong_workspace": (
        "403 Forbidden",
        "&#128274;",
        "This meeting is in another workspace",
        "gone",
        [
            "You signed in to a Slack workspace that this meeting doesn&#8217;t belong to.",
            "Press <strong>Join</strong> on the call again and sign in to the workspace "
            "where the meeting was started with <code>/meet</code>.",
        ],
    ),
    "guest": (
        "403 Forbidden",
        "&#128274;",
        "Guests need an invitation",
        "gone",
        [
            "Guest accounts can join only the rooms they were invited to.",
            "Ask the room&#8217;s owner to invite you: they can start a room with "
            "<code>/meet</code> and mention you.",
        ],
    ),
    "not_member": (
        "403 Forbidden",
        "&#128274;",
        "This meeting is for its invitees",
        "gone",
        [
            "Only the people the room&#8217;s owner invited, and the members of the "
            "channel where the meeting was started, can join it. You are neither.",
            "Ask the room&#8217;s owner to invite you: they can start a room with "
            "<code>/meet</code> and mention you.",
        ],
    ),
    "account": (
        "403 Forbidden",
        "&#128274;",
        "This account can&#8217;t join",
        "gone",
        [
            "Slack says this account is deactivated, is an app or bot, or isn&#8217;t "
            "a member of the workspace the meeting belongs to.",
            "Sign in with your own Slack account in that workspace, or ask the room&#8217;s "
            "owner to invite you.",
        ],
    ),
    "slack_down": (
        "503 Service Unavailable",
        "&#9203;",
        "Slack didn&#8217;t answer",
        "",
        [
            "I couldn&#8217;t confirm who you are with Slack just now.",
            "Wait a minute, then press <strong>Join</strong> on the call again, or press "
            "<strong>Get my link</strong> on the room&#8217;s message (<code>/meet</code>).",
        ],
    ),
}


def render_page(name: str, href: str = "") -> tuple[str, bytes]:
    """``(status, html)`` of one self-contained page: inline CSS, no scripts, no fetches."""
    status, icon, title, css_class, paragraphs = PAGES[name]
    paragraphs = [p.replace("{href}", escape(href)) for p in paragraphs]
    body = "\n".join(
        f'<p class="how">{p}</p>' if i == len(paragraphs) - 1 else f"<p>{p}</p>"
        for i, p in enumerate(paragraphs)
    )
    doc = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex,nofollow">
<link rel="icon" href="data:,">
<title>{title} &#183; meetbot</title>
<style>{_CSS}</style>
</head>
<body>
<main class="{escape(css_class)}">
<div class="icon" aria-hidden="true">{icon}</div>
<h1>{title}</h1>
{body}
<p><small>meetbot &#183; private video rooms from Slack</small></p>
</main>
</body>
</html>
"""
    return status, doc.encode("utf-8")


def page(start_response: Callable[..., Any], name: str, href: str = "") -> list[bytes]:
    status, data = render_page(name, href)
    start_response(
        status,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Content-Security-Policy", _PAGE_CSP),
            ("X-Frame-Options", "DENY"),
            *PRIVATE_HEADERS,
        ],
    )
    return [data]
