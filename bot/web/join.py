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

__all__ = ["JOIN_PREFIX", "JoinLinks"]

log = logging.getLogger("meetbot.join")


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
        else → 404.
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
        location = self.links.link_for(room, grant, direct=True)
        if method == "GET":
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
