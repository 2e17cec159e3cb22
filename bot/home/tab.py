"""Keeps each person's App Home tab current: gathers their rooms, builds, publishes.

``Rooms`` calls :meth:`HomeTab.changed` (its ``on_change``) from whatever thread changed
a room (a worker after an ack, the expiry sweep, the outbox). Publishing there
would put ``views.publish`` calls, and their rate-limit sleeps, on those
threads; instead the people concerned are marked dirty and one flush, run on
the bot's background pool after a short pause, publishes each dirty Home
once. A burst (a room with 40 invitees opening, a sweep ending ten rooms)
therefore costs one ``views.publish`` per person, not one per change.

Flushes run one at a time, and within a flush each person is published by one
thread (a few people in parallel, for large rooms): a Home rendered earlier
can never be published after one rendered later, so the last view Slack holds
reflects the newest state. On shutdown (``close``) what is not yet published is
dropped: the next ``app_home_opened`` draws it anyway.

Only the Homes of people who have opened the tab at least once
(``Store.home_viewers``) are republished on a change: for the others there is
nothing on screen to keep current, and their first ``app_home_opened`` draws
the Home from scratch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from typing import Any

from bot.home import view
from bot.logs import ContextThreadPoolExecutor
from bot.schedules.service import describe
from bot.slack.gateway import SlackGateway, SlackSendError, acting_for
from bot.store import Schedule, Store

log = logging.getLogger("meetbot.home")

DEBOUNCE_S = 0.25  # long enough to gather a burst, short enough to feel immediate
NOTICE_TTL_S = 120  # how long the outcome of a click stays on the person's Home
PUBLISHERS = 4  # people published at once in a flush (views.publish is Tier 4)


class HomeTab:
    """Renders and publishes App Home views, coalescing bursts of changes."""

    def __init__(
        self,
        store: Store,
        slack: SlackGateway,
        submit: Callable[..., Future[Any]],
        schedules_of: Callable[[str], Iterable[Schedule]],
        *,
        max_ttl: int | None = None,
        debounce: float = DEBOUNCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.schedules_of = schedules_of
        self.slack = slack
        self._submit = submit
        self.max_ttl = max_ttl
        self.debounce = debounce
        self.clock = clock
        self._lock = threading.Lock()
        self._publishing = threading.Lock()
        self._dirty: set[tuple[str, str]] = set()
        self._scheduled = False
        self._closed = False
        self._notices: dict[tuple[str, str], tuple[float, str]] = {}
        # Enterprise Grid: the org of each workspace seen, so a Home of an org-wide
        # install is published with the org's token (found by the org, not the team).
        self._orgs: dict[str, str] = {}
        self._pool = ContextThreadPoolExecutor(max_workers=PUBLISHERS, thread_name_prefix="home")

    # -- what callers use ------------------------------------------------------------
    def changed(self, team_id: str, users: Iterable[str], enterprise_id: str | None = None) -> None:
        """Mark these people's Homes stale; they are republished shortly, once each.

        Never raises and never blocks on Slack: it is called from inside room
        operations that must not fail because a Home could not be refreshed.
        ``enterprise_id``: the workspace's Enterprise Grid org, if any.
        """
        self._remember_org(team_id, enterprise_id)
        with self._lock:
            if self._closed:
                return
            self._dirty.update((team_id, u) for u in users if u)
            if self._scheduled or not self._dirty:
                return
            self._scheduled = True
        try:
            self._submit(self._flush)
        except RuntimeError:  # the pool is shutting down: the next app_home_opened catches up
            with self._lock:
                self._scheduled = False

    def notice(
        self, team_id: str, user_id: str, text: str, enterprise_id: str | None = None
    ) -> None:
        """Show ``text`` at the top of the person's Home for a while, and republish it.

        Clicks on the Home and the New-room modal have no response_url, so
        the Home itself is where their outcome is told.
        """
        self._remember_org(team_id, enterprise_id)
        with self._lock:
            self._notices[(team_id, user_id)] = (self.clock(), text)
        self.changed(team_id, [user_id])

    def render(self, team_id: str, user_id: str) -> dict[str, Any]:
        """The person's Home view from the current state of the database."""
        own = self.store.open_rooms_of(team_id, user_id)
        invited = [r for r in self.store.rooms_invited(team_id, user_id) if r.owner_id != user_id]
        mine = [
            view.ScheduleLine(id=s.id, name=s.name, line=describe(s))
            for s in self.schedules_of(team_id)
            if s.creator_id == user_id
        ]
        return view.home_view(
            own=own,
            invited=invited,
            schedules=mine,
            notice=self._current_notice(team_id, user_id),
            max_ttl=self.max_ttl,
        )

    def opened(self, team_id: str, user_id: str, enterprise_id: str | None = None) -> bool:
        """``app_home_opened``: from now on keep this Home current; draw it now."""
        self._remember_org(team_id, enterprise_id)
        try:
            self.store.home_opened(team_id, user_id)
        except Exception:  # the database: still draw the Home
            log.exception("could not record that %s opened their Home", user_id)
        return self.publish(team_id, user_id)

    def publish(self, team_id: str, user_id: str) -> bool:
        """Render and ``views.publish`` one person's Home now; False if Slack refused."""
        try:
            view = self.render(team_id, user_id)
            with self._lock:
                org = self._orgs.get(team_id)
            with acting_for(team_id, org):
                self.slack.publish_home(user_id, view)
            return True
        except SlackSendError as e:
            log.warning("views.publish for %s failed: %s", user_id, e.error)
        except Exception:
            log.exception("could not publish the Home of %s", user_id)
        return False

    def close(self) -> None:
        """Stop publishing: drop what is pending, let a publish in flight finish."""
        with self._lock:
            self._closed = True
            self._dirty.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- internals -------------------------------------------------------------------
    def _remember_org(self, team_id: str, enterprise_id: str | None) -> None:
        if enterprise_id:
            with self._lock:
                self._orgs[team_id] = enterprise_id

    def _current_notice(self, team_id: str, user_id: str) -> str | None:
        with self._lock:
            entry = self._notices.get((team_id, user_id))
            if entry is None:
                return None
            if self.clock() - entry[0] > NOTICE_TTL_S:
                del self._notices[(team_id, user_id)]
                return None
            return entry[1]

    def _flush(self) -> int:
        """Publish every Home marked stale; runs on the background pool."""
        time.sleep(self.debounce)  # let the rest of a burst arrive
        with self._publishing:
            with self._lock:
                batch, self._dirty = self._dirty, set()
                self._scheduled = False
                if self._closed:
                    return 0
            batch = self._watched(batch)
            try:
                done = list(self._pool.map(self._publish_unless_closed, sorted(batch)))
            except (RuntimeError, CancelledError):  # closed meanwhile: the rest is dropped
                return 0
        return sum(done)

    def _watched(self, batch: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """The part of ``batch`` whose Home someone has seen (or has a notice waiting)."""
        teams: dict[str, list[str]] = {}
        for team, user in batch:
            teams.setdefault(team, []).append(user)
        keep: set[tuple[str, str]] = set()
        with self._lock:
            keep.update(key for key in batch if key in self._notices)
        for team, users in teams.items():
            try:
                viewers = self.store.home_viewers(team, users)
            except Exception:  # the database: refresh them all rather than none
                log.exception("could not read who has opened their Home")
                viewers = set(users)
            keep.update((team, u) for u in viewers)
        return keep

    def _publish_unless_closed(self, key: tuple[str, str]) -> bool:
        return not self._closed and self.publish(*key)
