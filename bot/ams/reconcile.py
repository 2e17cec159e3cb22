"""Reconciliation: make AMS and the database agree about this deployment's rooms.

Rooms the bot makes carry a marker in the broadcast's ``metaData`` that names
this deployment (``bot.ams.marker``). Periodically one replica lists AMS's
broadcasts. Two directions, each held to what AMS can actually prove:

* **Strays.** A room marked as *this deployment's* that the database does not
  know, or knows as ended, is ended and deleted (a crash between the AMS create
  and the database, a slow create that landed after the bot gave up, a row
  removed by hand). A broadcast in the list is real, so this may act on it.
  Anything else is never touched: unmarked broadcasts, participants' streams
  (``mainTrackStreamId`` set), and rooms of another deployment sharing the AMS
  application (staging beside production). A room with a marker from before
  deployments had an identity is nobody's in particular: it is left alone and
  logged once.
* **Vanished rooms.** An active room missing from the list is *not* gone: AMS
  answers a failed datastore read with ``200 []``, and offset paging shifts
  while participants come and go. The list only says which rooms to ask
  about, by id: ``GET /broadcasts/{id}``. Even its 404 is no proof (the same
  datastore fault answers 404 for a room that exists), so the first 404 is
  noted on the room (``ams_missing_since``) and the room is ended here only
  when a later pass gets 404 again, at least ``confirm_after`` seconds later
  (``CONFIRM_AFTER_S``, or the reconciliation interval if that is shorter);
  any sight of the room in between (in the list, or a 200) clears the note.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from bot import leases
from bot.ams.client import AmsClient, AmsError, AmsNotFound
from bot.ams.marker import marker_of
from bot.store import Job, Room, RoomState, Store

log = logging.getLogger("meetbot.reconcile")

JOB = "reconcile_ams"
# A room younger than this may still be between its AMS create and its row's
# activation: never call it vanished.
MIN_AGE_S = 120
# A room's second 404 counts only this long after its first (at most one
# reconciliation interval): a datastore fault that answers every read wrongly for a
# moment, or `meetbot reconcile` run twice in a row, does not make two "passes".
CONFIRM_AFTER_S = 60
CHUNK = 500

_legacy_logged: set[str] = set()  # rooms with an identity-less marker, already logged
_legacy_lock = threading.Lock()


@dataclass
class Outcome:
    deleted: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    suspected: list[str] = field(default_factory=list)
    seen: int = 0

    def __str__(self) -> str:
        text = (
            f"{self.seen} bot rooms on AMS, {len(self.deleted)} removed, "
            f"{len(self.vanished)} vanished"
        )
        if self.suspected:
            text += f", {len(self.suspected)} answered 404 once (checked again next time)"
        return text

    def __bool__(self) -> bool:
        return bool(self.deleted or self.vanished or self.suspected)


def claim(store: Store, owner: str, now: int, interval: int) -> bool:
    """Take the reconciliation turn if it is due and nobody holds it."""
    return leases.claim(
        store,
        JOB,
        owner,
        now=now,
        lease=max(interval, 60),
        due=Job.next_run_at <= now,
        next_run_at=now + interval,
    )


def _stop_and_delete(ams: AmsClient) -> Callable[[str], None]:
    def remove(room_id: str) -> None:
        try:
            ams.stop_room(room_id)
        except AmsNotFound:
            pass
        ams.delete_room(room_id)

    return remove


def reconcile(
    store: Store,
    ams: AmsClient,
    vanished: Callable[[str], bool],
    *,
    now: int,
    remove: Callable[[str], None] | None = None,
    confirm_after: int = CONFIRM_AFTER_S,
    progress: Callable[[Iterable[dict[str, Any]]], Iterable[dict[str, Any]]] | None = None,
) -> Outcome:
    """One full pass. AMS errors while listing end the pass early; the next turn tries again.

    ``vanished(room_id)`` ends a room here that AMS confirmed gone (``Rooms.mark_vanished``);
    ``remove(room_id)`` ends and deletes a stray on AMS (``Rooms.end_on_ams``; a stop
    and a delete without it); ``progress`` wraps the list of the deployment's rooms on
    AMS (the CLI's progress bar).
    """
    deployment = store.deployment_id()
    remove = remove or _stop_and_delete(ams)
    out = Outcome()
    listed: set[str] = set()
    ours: list[str] = []
    legacy: list[str] = []
    for broadcast in ams.iter_rooms():
        room_id = broadcast.get("streamId")
        marker = marker_of(broadcast)
        if not isinstance(room_id, str) or not room_id or marker is None:
            continue
        listed.add(room_id)
        if marker.get("deployment") == deployment:
            ours.append(room_id)
        elif "deployment" not in marker:
            legacy.append(room_id)
    _log_legacy(legacy)
    # Read after the listing: a room's row is written before it is created on AMS,
    # so every room listed that is still being opened is found here, and open.
    states = store.room_states(ours)
    for room_id in progress(ours) if progress else ours:
        out.seen += 1
        state = states.get(room_id)
        if state in RoomState.OPEN:
            continue
        try:
            remove(room_id)
        except AmsError as e:
            log.warning("could not remove stray room %s: %s", room_id, e)
            continue
        out.deleted.append(room_id)
        with store.write() as tx:
            store.audit(
                tx,
                "reconcile_delete",
                actor="reconcile",
                room_id=room_id,
                known=state is not None,
                state=state,
            )
    _check_missing(store, ams, vanished, listed, now, max(1, confirm_after), out)
    if out:
        log.warning("reconciliation: %s", out)
    return out


def _check_missing(
    store: Store,
    ams: AmsClient,
    vanished: Callable[[str], bool],
    listed: set[str],
    now: int,
    confirm_after: int,
    out: Outcome,
) -> None:
    """Ask AMS, room by room, about the active rooms the list did not show."""
    with store.read() as s:
        active = s.execute(
            select(Room.id, Room.ams_missing_since).where(
                Room.state == RoomState.ACTIVE, Room.created_at <= now - MIN_AGE_S
            )
        ).all()
    seen_again = [room_id for room_id, since in active if since is not None and room_id in listed]
    _set_missing(store, seen_again, None)
    for room_id, since in active:
        if room_id in listed:
            continue
        try:
            ams.get_room(room_id)
        except AmsNotFound:
            if since is None:
                _set_missing(store, [room_id], now)
                out.suspected.append(room_id)
            elif now - since >= confirm_after:
                if vanished(room_id):
                    out.vanished.append(room_id)
            else:
                out.suspected.append(room_id)
            continue
        except AmsError as e:
            log.info("could not ask AMS about room %s: %s", room_id, e.kind)
            continue
        if since is not None:
            _set_missing(store, [room_id], None)


def _set_missing(store: Store, room_ids: list[str], value: int | None) -> None:
    if not room_ids:
        return
    with store.write() as tx:
        for i in range(0, len(room_ids), CHUNK):
            tx.execute(
                update(Room)
                .where(Room.id.in_(room_ids[i : i + CHUNK]))
                .values(ams_missing_since=value)
            )


def _log_legacy(room_ids: list[str]) -> None:
    with _legacy_lock:
        new = [r for r in room_ids if r not in _legacy_logged]
        _legacy_logged.update(new)
    if new:
        log.warning(
            "%d room(s) on AMS carry a meetbot marker without a deployment id (made by an "
            "older meetbot, or by another deployment before it was upgraded): left alone, "
            "delete them by hand if they are strays: %s",
            len(new),
            ", ".join(sorted(new)[:20]) + (" …" if len(new) > 20 else ""),
        )


def run_if_due(
    store: Store,
    ams: AmsClient,
    vanished: Callable[[str], bool],
    *,
    owner: str,
    now: int,
    interval: int,
    remove: Callable[[str], None] | None = None,
) -> Outcome | None:
    """The sweep's reconciliation step: at most one replica per interval."""
    if not claim(store, owner, now, interval):
        return None
    try:
        return reconcile(
            store,
            ams,
            vanished,
            now=now,
            remove=remove,
            confirm_after=min(CONFIRM_AFTER_S, interval),
        )
    except AmsError as e:
        log.warning("reconciliation skipped: AMS did not answer (%s)", e)
        return None
    finally:
        leases.release(store, JOB, owner, last_run_at=now)
