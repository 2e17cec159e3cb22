"""Reconciliation: make AMS and the database agree about meetbot's rooms.

Rooms the bot makes carry a marker in the broadcast's ``metaData``
(``bot.ams.marker``). Periodically one replica lists AMS's broadcasts:
a marked room the database does not know, or knows as ended, is stopped and
deleted (a crash between the AMS create and the database, a slow create that
landed after the bot gave up, a row removed by hand); an active room that AMS
no longer has is ended here and its messages edited. Unmarked broadcasts are
never touched: they are someone else's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from bot import leases
from bot.ams.client import AmsClient, AmsError
from bot.ams.marker import is_ours
from bot.store import Job, Room, RoomState, Store

log = logging.getLogger("meetbot.reconcile")

JOB = "reconcile_ams"
# A room younger than this may still be between its AMS create and its row's
# activation: never call it vanished.
MIN_AGE_S = 120


@dataclass
class Outcome:
    deleted: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    seen: int = 0

    def __str__(self) -> str:
        return (
            f"{self.seen} bot rooms on AMS, {len(self.deleted)} removed, "
            f"{len(self.vanished)} vanished"
        )

    def __bool__(self) -> bool:
        return bool(self.deleted or self.vanished)


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


def reconcile(
    store: Store,
    ams: AmsClient,
    vanished: Callable[[str], bool],
    *,
    now: int,
    progress: Callable[[Iterable[dict[str, Any]]], Iterable[dict[str, Any]]] | None = None,
) -> Outcome:
    """One full pass. AMS errors end the pass early; the next turn tries again.

    ``vanished(room_id)`` ends a room here that AMS no longer has (``Rooms.mark_vanished``);
    ``progress`` wraps the list of the bot's rooms on AMS (the CLI's progress bar).
    """
    out = Outcome()
    on_ams: set[str] = set()
    ours = [b for b in ams.iter_rooms() if is_ours(b)]
    for broadcast in progress(ours) if progress else ours:
        room_id = str(broadcast.get("streamId") or "")
        if not room_id:
            continue
        out.seen += 1
        on_ams.add(room_id)
        with store.read() as s:
            row = s.get(Room, room_id)
        if row is not None and row.state in RoomState.OPEN:
            continue
        try:
            ams.stop_room(room_id)
            ams.delete_room(room_id)
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
                known=row is not None,
                state=row.state if row else None,
            )
    with store.read() as s:
        active = list(
            s.scalars(
                select(Room.id).where(
                    Room.state == RoomState.ACTIVE, Room.created_at <= now - MIN_AGE_S
                )
            )
        )
    for room_id in active:
        if room_id not in on_ams and vanished(room_id):
            out.vanished.append(room_id)
    if out:
        log.warning("reconciliation: %s", out)
    return out


def run_if_due(
    store: Store,
    ams: AmsClient,
    vanished: Callable[[str], bool],
    *,
    owner: str,
    now: int,
    interval: int,
) -> Outcome | None:
    """The sweep's reconciliation step: at most one replica per interval."""
    if not claim(store, owner, now, interval):
        return None
    try:
        return reconcile(store, ams, vanished, now=now)
    except AmsError as e:
        log.warning("reconciliation skipped: AMS did not answer (%s)", e)
        return None
    finally:
        leases.release(store, JOB, owner, last_run_at=now)
