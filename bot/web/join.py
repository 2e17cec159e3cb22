"""``GET /join/<id>``: a click on a click-time link mints the person's token and sends them on.

The id is looked up in ``bot.rooms.links`` (one indexed query on its hash);
the token is minted here, in memory, with the current stream secret, for a
grant that is still valid at this moment. It is never logged, stored or
audited: the 302's ``Location`` is the only place it goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from bot.config import Settings
from bot.rooms.links import JOIN_PREFIX, Links, derive_key, lookup
from bot.store import RoomState, Store
from bot.web.pages import page
from bot.web.responses import PRIVATE_HEADERS, method_not_allowed

__all__ = ["JOIN_PREFIX", "PREVIEW_AGENTS", "JoinLinks", "not_a_click"]

log = logging.getLogger("meetbot.join")


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


class JoinLinks:
    """The route behind every click-time link."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        links: Links,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.links = links
        self.clock = clock

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """302 to a freshly minted Circle link, or a page saying why not.

        Active room and unrevoked grant → 302 with ``Cache-Control: no-store`` and
        ``Referrer-Policy: no-referrer`` (the Location carries the token: no cache
        or Referer may keep it). Ended room → 410, withdrawn grant → 410, anything
        else → 404. The click is audited. ``HEAD``, and a GET that
        :func:`not_a_click` says is no person's click, mint nothing and audit
        nothing: they get the "open" page (200, no ``Location``).
        """
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return method_not_allowed(start_response, "GET, HEAD")
        link_id = environ.get("PATH_INFO", "")[len(JOIN_PREFIX) :]
        key = derive_key(self.settings)
        found = lookup(self.store, key, link_id) if key is not None else None
        if found is None:
            return page(start_response, "unknown")
        grant, room = found
        if room.state != RoomState.ACTIVE or grant.exp <= int(self.clock()):
            return page(start_response, "ended")
        if grant.revoked_at is not None:
            return page(start_response, "removed")
        why_not = "HEAD" if method == "HEAD" else not_a_click(environ)
        if why_not is not None:
            log.info(
                "join link for room %s not followed (%s; %r)",
                room.id,
                why_not,
                str(environ.get("HTTP_USER_AGENT") or "")[:200],
            )
            return page(start_response, "open", link_id)  # relative: .../join/<id>
        location = self.links.link_for(room, grant, direct=True)
        with self.store.write() as tx:
            self.store.audit(
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
            [("Location", location), ("Content-Length", "0"), *PRIVATE_HEADERS],
        )
        return [b""]
