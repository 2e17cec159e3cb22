"""Click-time join links: ``{MEETBOT_PUBLIC_URL}/join/<id>`` instead of a token in the DM.

Why: a Circle link carries a JWT that works for anyone who holds it until its
``exp``. A DM, its push notification, an email digest or a forwarded message
would keep that token around. With ``MEETBOT_PUBLIC_URL`` set, the DM holds an
opaque id instead, and the token is minted only when the person clicks, with
the *current* stream secret, for a grant that is still valid at that moment.

The id must be renderable again (DMs are rendered at send time and re-rendered
on every edit) yet never stored in clear, so it is *derived*:
``base64url(HMAC-SHA256(key, room \\n user \\n jti))`` (256 bits, 43 characters),
where ``key`` comes from ``MEETBOT_SECRET_KEY`` or, without it,
``SLACK_SIGNING_SECRET``. Neither changes when the AMS stream secret rotates, so
links survive a rotation without editing a single DM. The database keeps only
``grants.link_hash = sha256(id)`` (indexed) to find the grant; a database dump
therefore yields no working link. Changing the key (setting
``MEETBOT_SECRET_KEY`` later, or regenerating Slack's signing secret) changes
every id: old DMs then show the "unknown link" page until they are re-rendered
or the person presses "Get my link".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Callable, Iterable
from html import escape
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from bot.config import Settings
from bot.store import Grant, Room, RoomState, Store

if TYPE_CHECKING:
    from bot.rooms import Rooms

__all__ = [
    "JOIN_PREFIX",
    "derive_key",
    "handle_join",
    "join_id",
    "link_hash",
    "lookup",
    "public_link",
]

log = logging.getLogger("meetbot.joinlinks")

JOIN_PREFIX = "/join/"
_KEY_LABEL = b"meetbot/join-link/v1"
# base64url of a 32-byte HMAC, without padding: exactly 43 characters.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)
_warned_no_key = threading.Event()


# -- ids ----------------------------------------------------------------------
def derive_key(settings: Settings) -> bytes | None:
    """The HMAC key for link ids, or None when no stable secret is configured.

    Derived (not used raw) so the same operator secret is never used for two
    purposes with the same key: ``HMAC(secret, label)``. Deliberately *not*
    the AMS stream secret, which rotates.
    """
    base = settings.secret_key or settings.slack_signing_secret
    if not base:
        return None
    return hmac.new(base.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def join_id(key: bytes, grant: Grant) -> str:
    """The opaque id of one grant's link: 256 bits, bound to its room, user and jti."""
    msg = f"{grant.room_id}\n{grant.user_id}\n{grant.jti}".encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def link_hash(link_id: str) -> str:
    """What the database keeps to find a link: SHA-256 of the id, hex (64 characters)."""
    return hashlib.sha256(link_id.encode("ascii")).hexdigest()


def public_link(rooms: Rooms, room: Room, grant: Grant) -> str | None:
    """``{MEETBOT_PUBLIC_URL}/join/<id>`` for a grant, recording its hash if needed.

    Returns None when click-time links are off (no public URL) or no key can be
    derived (Socket Mode without ``MEETBOT_SECRET_KEY``); the caller then sends
    the direct Circle link as before. The hash is written the first time a
    grant's link is rendered (and again if the key changed): a link exists only
    once rendered, so there is nothing to look up before that.
    """
    settings = rooms.settings
    if not settings.public_url:
        return None
    key = derive_key(settings)
    if key is None:
        if not _warned_no_key.is_set():
            _warned_no_key.set()
            log.warning(
                "MEETBOT_PUBLIC_URL is set but neither MEETBOT_SECRET_KEY nor "
                "SLACK_SIGNING_SECRET is: sending direct Circle links instead of /join links"
            )
        return None
    link_id = join_id(key, grant)
    digest = link_hash(link_id)
    if grant.link_hash != digest:
        with rooms.store.write() as tx:
            tx.execute(update(Grant).where(Grant.id == grant.id).values(link_hash=digest))
        grant.link_hash = digest
    return f"{settings.public_url.rstrip('/')}{JOIN_PREFIX}{link_id}"


def lookup(store: Store, key: bytes, link_id: str) -> tuple[Grant, Room] | None:
    """The grant and room behind a link id, or None for an unknown or malformed one.

    One indexed query on ``grants.link_hash``. The id is then recomputed with
    the current key and compared in constant time, so only ids made with the
    key in use now are honoured (a stale hash from before a key change is not).
    """
    if not _ID_RE.fullmatch(link_id):
        return None
    with store.read() as s:
        row = s.execute(
            select(Grant, Room)
            .join(Room, Room.id == Grant.room_id)
            .where(Grant.link_hash == link_hash(link_id))
        ).first()
    if row is None:
        return None
    grant, room = row
    if not hmac.compare_digest(join_id(key, grant), link_id):
        return None
    return grant, room


# -- pages --------------------------------------------------------------------
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


_COMMON_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
]


def _page(start_response: Callable[..., Any], name: str, href: str = "") -> list[bytes]:
    status, data = render_page(name, href)
    start_response(
        status,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Content-Security-Policy", _PAGE_CSP),
            ("X-Frame-Options", "DENY"),
            *_COMMON_HEADERS,
        ],
    )
    return [data]


# -- who is clicking -------------------------------------------------------------
#: User-Agent words of link previewers, unfurlers and crawlers (lower case). They
#: fetch a link to show a preview of it, often with a browser's Accept header.
PREVIEW_AGENTS = (
    "slackbot",  # Slackbot-LinkExpanding: Slack unfurling a pasted link
    "facebookexternalhit",  # Facebook, Messenger, WhatsApp, iMessage previews
    "facebot",
    "twitterbot",
    "linkedinbot",
    "discordbot",
    "telegrambot",
    "whatsapp",
    "skypeuripreview",  # Teams and Skype
    "microsoftpreview",
    "bingpreview",  # Outlook
    "googlebot",
    "google-pagerenderer",
    "bingbot",
    "applebot",
    "embedly",
    "iframely",
    "pinterest",
    "redditbot",
    "mattermost",
    "zoominfobot",
    "crawler",
    "spider",
    "preview",
)


def not_a_click(environ: dict[str, Any]) -> str | None:
    """Why this GET is not a person opening the link in a browser, or None if it is.

    A click-time link mints a token that works for anyone who holds it, so it
    is minted only for a browser navigating to it on someone's behalf; link
    previews (Slack, Teams, Facebook, iMessage...), mail scanners and crawlers
    get a page that says so instead (and write no audit row). The rule:

    * a speculative fetch is not a click: ``Sec-Purpose``/``Purpose`` naming
      prefetch or prerender, ``X-Moz: prefetch``, ``X-Purpose: preview``;
    * nor is a known previewer or crawler, by its User-Agent (:data:`PREVIEW_AGENTS`);
    * browsers say what a request is for (``Sec-Fetch-Mode``/``-Dest``; sent to
      HTTPS and localhost): anything but ``navigate`` to a ``document`` (an
      image, a script's fetch, a frame) is refused;
    * without those headers (older browsers), a navigation still asks for
      ``text/html`` in ``Accept``; scripts, scanners and most bots do not.

    A person whose browser is misjudged sees the page and its link, which is
    a navigation of its own.
    """
    purpose = " ".join(
        str(environ.get(h) or "").lower()
        for h in ("HTTP_SEC_PURPOSE", "HTTP_PURPOSE", "HTTP_X_MOZ", "HTTP_X_PURPOSE")
    )
    if any(word in purpose for word in ("prefetch", "prerender", "preview")):
        return "prefetch"
    agent = str(environ.get("HTTP_USER_AGENT") or "").lower()
    if any(word in agent for word in PREVIEW_AGENTS):
        return "previewer"
    mode = str(environ.get("HTTP_SEC_FETCH_MODE") or "").lower()
    dest = str(environ.get("HTTP_SEC_FETCH_DEST") or "").lower()
    if mode or dest:
        return None if (mode == "navigate" and dest in ("", "document")) else "not a navigation"
    if "text/html" not in str(environ.get("HTTP_ACCEPT") or "").lower():
        return "no browser"
    return None


# -- the route ------------------------------------------------------------------
def handle_join(
    rooms: Rooms, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``GET /join/<id>``: 302 to a freshly minted Circle link, or a page saying why not.

    Active room and unrevoked grant → 302 with ``Cache-Control: no-store`` and
    ``Referrer-Policy: no-referrer`` (the Location carries the token: no cache
    or Referer may keep it). Ended room → 410, withdrawn grant → 410, anything
    else → 404. The token is minted in memory, never logged or stored; the
    click is audited. ``HEAD``, and a GET that :func:`not_a_click` says is no
    person's click, mint nothing and audit nothing: they get the "open" page
    (200, no ``Location``).
    """
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        data = b"method not allowed\n"
        start_response(
            "405 Method Not Allowed",
            [
                ("Allow", "GET, HEAD"),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(data))),
                *_COMMON_HEADERS,
            ],
        )
        return [data]
    link_id = environ.get("PATH_INFO", "")[len(JOIN_PREFIX) :]
    key = derive_key(rooms.settings)
    found = lookup(rooms.store, key, link_id) if key is not None else None
    if found is None:
        return _page(start_response, "unknown")
    grant, room = found
    if room.state != RoomState.ACTIVE or grant.exp <= rooms.now():
        return _page(start_response, "ended")
    if grant.revoked_at is not None:
        return _page(start_response, "removed")
    why_not = "HEAD" if method == "HEAD" else not_a_click(environ)
    if why_not is not None:
        log.info(
            "join link for room %s not followed (%s; %r)",
            room.id,
            why_not,
            str(environ.get("HTTP_USER_AGENT") or "")[:200],
        )
        return _page(start_response, "open", link_id)  # relative: .../join/<id>
    location = rooms.link_for(room, grant, direct=True)
    with rooms.store.write() as tx:
        rooms.store.audit(
            tx,
            "join",
            actor=grant.user_id,
            team_id=grant.team_id,
            room_id=room.id,
            grant_id=grant.id,
            via="join_link",
        )
    log.info("join link used for room %s by %s", room.id, grant.user_id)
    start_response(
        "302 Found",
        [
            ("Location", location),
            ("Content-Length", "0"),
            *_COMMON_HEADERS,
        ],
    )
    return [b""]
