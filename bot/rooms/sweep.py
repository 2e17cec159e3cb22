"""The sweep: rooms past their end are revoked in bulk, failed opens cleaned up on AMS.

Every replica runs it on each scheduler tick (``bot.schedules.ticker``); each
room is claimed with a lease first (``Store.claim_due_rooms``), so a room is
stopped and deleted once however many replicas sweep, and a room a dead
replica had claimed is taken over when its lease runs out.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from sqlalchemy import select, update

from bot.ams.client import AmsError
from bot.logs import ContextThreadPoolExecutor
from bot.rooms.service import CLEANUP_ATTEMPTS, STUCK_CREATING_S, Rooms
from bot.store import Room, RoomState

__all__ = ["Sweep"]

log = logging.getLogger("meetbot.rooms")

RECORD_WITHIN_S = 1.0  # the sweep records a revoke AMS confirmed within about this


class Sweep:
    """Revokes what is due, ``ams_concurrency`` AMS calls at a time."""

    def __init__(self, rooms: Rooms) -> None:
        self.rooms = rooms
        self.store = rooms.store
        self.settings = rooms.settings
        self._ams_executor: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Let in-flight revokes finish; free their threads."""
        if self._ams_executor is not None:
            self._ams_executor.shutdown(wait=True)

    def expired_rooms(self, *, max_batches: int = 200) -> int:
        """Revoke every room past its end that nobody else is revoking.

        Rooms are claimed in small batches (a lease each, see
        ``Store.claim_due_rooms``) and ended on AMS (``Rooms.end_on_ams``: their
        participants stopped, confirmed, the room deleted) ``ams_concurrency`` at
        a time. The next batch is claimed while a pool's
        worth of work is still queued, so AMS is never left idle waiting for a
        batch's slowest room. The AMS threads only call AMS; this thread records
        the rooms AMS confirmed gone in bulk (``Rooms.record_revoked``: one
        transaction and one App Home refresh per batch). A room AMS refuses to
        delete stays due, with a backoff, and is retried by a later sweep.
        At most ``max_batches × 4 × ams_concurrency`` rooms per call.
        """
        concurrency = self.settings.ams_concurrency
        # Small claims: what one replica claims, others cannot take, and a claimed
        # room waits behind at most three pools' worth of revokes (its lease).
        batch = concurrency * 2
        record = concurrency * 4  # rooms per bulk write (one transaction)
        budget = max_batches * concurrency * 4
        pool = self._ams_pool()
        running: dict[Future[None], str] = {}
        gone: list[str] = []
        failed: list[tuple[str, Exception]] = []
        since = 0.0  # when the oldest result not yet recorded came in
        done = 0
        more = True
        while True:
            if more and budget > 0 and len(running) <= concurrency:
                claimed = self.store.claim_due_rooms(
                    self.rooms.owner,
                    at=self.rooms.now(),
                    lease=self.rooms.lease_s(),
                    limit=min(batch, budget),
                )
                budget -= len(claimed)
                more = len(claimed) == batch
                # The streams the publish webhook recorded, for the whole batch in one query.
                recorded = self.rooms.streams.of_rooms([r.id for r in claimed]) if claimed else {}
                for room in claimed:
                    streams = recorded.get(room.id, ())
                    running[pool.submit(self.rooms.end_on_ams, room.id, streams)] = room.id
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            if not gone and not failed:
                since = time.monotonic()
            for future in finished:
                room_id = running.pop(future)
                try:
                    future.result()
                except Exception as e:
                    if not isinstance(e, AmsError):
                        log.error("revoking room %s failed", room_id, exc_info=e)
                    failed.append((room_id, e))
                else:
                    gone.append(room_id)
            # In bulk, but never long after AMS answered (a slow AMS answers rarely).
            if (
                len(gone) + len(failed) >= record
                or not running
                or time.monotonic() - since >= RECORD_WITHIN_S
            ):
                done += self._record_sweep(gone, failed)
                gone, failed = [], []
        return done

    def _record_sweep(self, gone: list[str], failed: list[tuple[str, Exception]]) -> int:
        """Record a sweep's batch: rooms AMS confirmed gone, and rooms it did not."""
        self.rooms.record_revoke_failed(failed)
        return len(self.rooms.record_revoked(gone, actor="scheduler", reason="time is up"))

    def _ams_pool(self) -> ThreadPoolExecutor:
        if self._ams_executor is None:
            self._ams_executor = ContextThreadPoolExecutor(
                max_workers=self.settings.ams_concurrency, thread_name_prefix="ams"
            )
        return self._ams_executor

    def failed_opens(self) -> int:
        """Delete, again, AMS rooms whose create failed unclearly (see ``Rooms.mark_failed``).

        A room stuck in ``creating`` (its worker died, or the database refused
        the activation) is failed first, so it is cleaned up the same way.
        """
        t = self.rooms.now()
        cleaned = 0
        with self.store.write() as tx:
            stuck = tx.execute(
                update(Room)
                .where(Room.state == RoomState.CREATING, Room.created_at < t - STUCK_CREATING_S)
                .values(
                    state=RoomState.FAILED,
                    end_reason="never finished opening",
                    ended_at=t,
                    attempts=0,
                    next_attempt_at=t,
                )
            ).rowcount
        for _ in range(stuck or 0):
            self.rooms.event("failed")
        with self.store.read() as s:
            ids = list(
                s.scalars(
                    select(Room.id)
                    .where(Room.state == RoomState.FAILED, Room.attempts < CLEANUP_ATTEMPTS)
                    .where(Room.next_attempt_at <= t)
                    .limit(200)
                )
            )
        for room_id in ids:
            with self.store.write() as tx:
                claimed = tx.execute(
                    update(Room)
                    .where(Room.id == room_id, Room.state == RoomState.FAILED)
                    .where(Room.attempts < CLEANUP_ATTEMPTS, Room.next_attempt_at <= t)
                    .values(
                        attempts=Room.attempts + 1,
                        next_attempt_at=t + self.rooms.cleanup_delay() * 4,
                    )
                ).rowcount
            if claimed:
                self.rooms.cleanup_on_ams(room_id)
                cleaned += 1
        return cleaned
