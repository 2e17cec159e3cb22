"""Slack Calls: a room shows up in its channel as a Call that people can join.

Why a module of its own: a Call changes three things at once and each needs a
different guarantee.

* **Registration.** ``calls.add`` (Tier 2, 20+/min) runs after AMS created the
  room and before the room is activated, on the thread that opens the room,
  never on the ack path. Its id is stored on the room first, so the channel
  card, rendered later by the outbox, carries the ``{"type": "call"}`` block. A
  Calls failure is logged and the room opens with the plain card: Calls are a
  convenience, the room is the product.
* **Joining.** A Call has *one* ``join_url`` for everybody:
  ``{MEETBOT_PUBLIC_URL}/join/room/<id>``, where ``bot/web/call_join.py`` signs
  the person in with Slack and sends them to their own link.
* **Who is in the call.** AMS's ``listenerHookURL`` (``bot/web/ams_hook.py``)
  says who started or stopped publishing. Hooks come in no particular order,
  so the event itself only says *whom* to look at: when its turn comes on the
  Calls thread (off the request thread: AMS gives up on a hook after 2 s), the
  person is shown in the Call if any of their streams is live as the database
  holds it now (``is_live``, kept in AMS's timestamp order by
  ``bot.rooms.streams``), and Slack is told only what changed.
* **Ending.** When a room is revoked its Call is ended after the revoke's
  transaction; the sweep retries a ``calls.end`` that did not happen (Slack
  down, process killed) for an hour, so a Call does not stay "live" in Slack
  forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select, update

from bot.config import Settings
from bot.slack import messages
from bot.slack.gateway import SlackGateway, SlackSendError, acting_for
from bot.store import Grant, Room, RoomState, Store

__all__ = ["CALL_JOIN_PREFIX", "SlackCalls", "join_url"]

log = logging.getLogger("meetbot.calls")

CALL_JOIN_PREFIX = "/join/room/"
END_RETRY_WINDOW_S = 3600  # the sweep retries a calls.end for this long
END_RETRY_AFTER_S = 30  # ... leaving the immediate attempt this much time first
MAX_INLINE_RETRY_AFTER_S = 5  # a 429 asking for longer than this is not waited out
# calls.end answers after which trying again cannot help: Slack does not know the
# Call (invalid_call_id), or the request is wrong. An ended Call answers ok: true
# with "inactive_call", which is success (slack_sdk raises nothing).
_END_FINAL = frozenset({"invalid_call_id", "not_found", "invalid_arguments", "already_ended"})


def join_url(settings: Settings, room_id: str) -> str:
    """The Call's one shared ``join_url``: no token, only the room."""
    assert settings.public_url
    return f"{settings.public_url.rstrip('/')}{CALL_JOIN_PREFIX}{room_id}"


class SlackCalls:
    """Rooms as Slack Calls: register, let people in, mirror who is live, end."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        slack: SlackGateway,
        *,
        clock: Callable[[], float] = time.time,
        is_live: Callable[[str, str], bool] | None = None,
    ) -> None:
        """``is_live(room, user)``: whether one of the person's streams in the room is
        live now (``bot.rooms.streams.Streams.is_live``); without it, each event is
        taken as it comes."""
        self.settings = settings
        self.store = store
        self.slack = slack
        self.clock = clock
        self.is_live = is_live
        # One thread: the Call's participants change one at a time.
        self._events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calls")
        self._told: dict[tuple[str, str], bool] = {}  # (room, user) -> shown in the Call

    @classmethod
    def when_enabled(
        cls,
        settings: Settings,
        store: Store,
        slack: SlackGateway,
        *,
        clock: Callable[[], float] = time.time,
        is_live: Callable[[str, str], bool] | None = None,
    ) -> SlackCalls | None:
        """The Calls service when MEETBOT_SLACK_CALLS is on; None when it is off."""
        if not settings.slack_calls:
            return None
        if not settings.webhook_secret:
            log.warning(
                "MEETBOT_SLACK_CALLS is on without MEETBOT_WEBHOOK_SECRET: Calls will not "
                "show who is in them (AMS's listenerHookURL needs /ams/hook/<secret>)"
            )
        return cls(settings, store, slack, clock=clock, is_live=is_live)

    def close(self) -> None:
        """Finish the Slack call in flight; queued events are dropped (best effort)."""
        self._events.shutdown(wait=True, cancel_futures=True)

    def now(self) -> int:
        return int(self.clock())

    # -- registration ------------------------------------------------------------
    def register(self, room: Room) -> str | None:
        """``calls.add`` for a room AMS just created; store the call id on the room.

        Runs before the room is activated so the card the outbox renders
        afterwards carries the call block. Never raises: a room without a Call
        is still a room.
        """
        if not self.settings.public_url:
            return None
        with self.store.read() as s:
            existing = s.scalar(select(Room.slack_call_id).where(Room.id == room.id))
        if existing:  # an earlier try of a scheduled room got this far
            return existing
        try:
            with acting_for(room.team_id, room.enterprise_id):
                call_id = self._with_retry(
                    lambda: self.slack.call_add(
                        external_unique_id=room.id,
                        join_url=join_url(self.settings, room.id),
                        created_by=room.owner_id,
                        title=messages.topic_or_default(room.topic),
                        date_start=room.created_at,
                    )
                )
        except SlackSendError as e:
            log.warning("calls.add failed for room %s (%s): plain card instead", room.id, e.error)
            return None
        except Exception:
            log.exception("calls.add failed for room %s: plain card instead", room.id)
            return None
        with self.store.write() as tx:
            tx.execute(
                update(Room)
                .where(Room.id == room.id, Room.slack_call_id.is_(None))
                .values(slack_call_id=call_id)
            )
        log.info("room %s registered as Slack call %s", room.id, call_id)
        return call_id

    def _with_retry(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` once more after a short 429 (Tier 2): a 429 means nothing happened."""
        try:
            return fn()
        except SlackSendError as e:
            if e.retry_after is None or e.retry_after > MAX_INLINE_RETRY_AFTER_S:
                raise
            time.sleep(e.retry_after)
            return fn()

    # -- ending -------------------------------------------------------------------
    def room_ended(self, room: Room) -> None:
        """A room was revoked: end its Call, off the caller's thread."""
        if room.slack_call_id and room.slack_call_ended_at is None:
            self._events.submit(self._end_call, room.id)
            self._events.submit(self._forget, room.id)  # on the thread that owns ``_told``

    def sweep(self) -> int:
        """End Calls whose room ended but whose ``calls.end`` did not happen (yet).

        Also the Call of a room that failed after it was registered. Bounded
        to an hour after the room ended: Slack shows a forgotten Call as live.
        """
        t = self.now()
        with self.store.read() as s:
            ids = list(
                s.scalars(
                    select(Room.id)
                    .where(Room.state.in_((RoomState.REVOKED, RoomState.FAILED)))
                    .where(Room.slack_call_id.is_not(None), Room.slack_call_ended_at.is_(None))
                    .where(Room.ended_at >= t - END_RETRY_WINDOW_S)
                    .where(Room.ended_at <= t - END_RETRY_AFTER_S)
                    .limit(20)
                )
            )
        return sum(1 for room_id in ids if self._end_call(room_id))

    def _end_call(self, room_id: str) -> bool:
        room = self.store.room(room_id)
        if room is None or not room.slack_call_id or room.slack_call_ended_at is not None:
            return False
        duration = max(0, (room.ended_at or self.now()) - room.created_at)
        try:
            with acting_for(room.team_id, room.enterprise_id):
                self._with_retry(lambda: self.slack.call_end(room.slack_call_id, duration))
        except SlackSendError as e:
            if not (e.permanent or e.error in _END_FINAL):
                log.warning("calls.end for room %s failed (%s): will retry", room_id, e.error)
                return False
            log.warning("calls.end for room %s failed for good (%s)", room_id, e.error)
        except Exception:
            log.exception("calls.end for room %s failed: will retry", room_id)
            return False
        with self.store.write() as tx:
            tx.execute(
                update(Room).where(Room.id == room_id).values(slack_call_ended_at=self.now())
            )
        log.info("Slack call of room %s ended", room_id)
        return True

    # -- participants (AMS listenerHookURL) ------------------------------------------
    def participant(self, room_id: str, user_id: str, *, joined: bool) -> None:
        """One of the person's streams started (``joined``) or ended: bring the Call up
        to date with them, later, on the Calls thread."""
        self._events.submit(self._participant, room_id, user_id, joined)

    def _participant(self, room_id: str, user_id: str, joined: bool) -> None:
        room = self.store.room(room_id)
        if room is None or not room.slack_call_id or room.state != RoomState.ACTIVE:
            self._forget(room_id)
            return
        shown = self.is_live(room_id, user_id) if self.is_live is not None else joined
        if shown:
            with self.store.read() as s:
                grant = s.scalar(
                    select(Grant.id).where(
                        Grant.room_id == room_id,
                        Grant.user_id == user_id,
                        Grant.revoked_at.is_(None),
                    )
                )
            if grant is None:  # removed from the room meanwhile: not shown as in the Call
                shown = False
        if self._told.get((room_id, user_id)) == shown:
            return  # Slack already shows it so (a second device, a screen share)
        call_id = room.slack_call_id
        try:
            with acting_for(room.team_id, room.enterprise_id):
                self._with_retry(
                    lambda: self.slack.call_participants(call_id, [user_id], joined=shown)
                )
        except SlackSendError as e:
            log.warning(
                "calls.participants.%s for room %s failed: %s",
                "add" if shown else "remove",
                room_id,
                e.error,
            )
            return
        except Exception:
            log.exception("calls.participants update for room %s failed", room_id)
            return
        self._told[(room_id, user_id)] = shown

    def _forget(self, room_id: str) -> None:
        """Drop what Slack was told about a room's people (Calls thread only)."""
        for key in [k for k in self._told if k[0] == room_id]:
            del self._told[key]
