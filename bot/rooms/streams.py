"""Who is live under which stream: the ``ams_streams`` table.

AMS never tells the bot which participant stream belongs to whom, except at
one moment: its publish webhook names the stream being published together
with the token it is published with (``bot/rooms/access.py``). Each stream
the webhook lets through is recorded here against its grant; that is what a
kick stops (that person's streams, nobody else's) and what an end stops
before it deletes the room.

AMS's listener hooks then say when a stream starts and ends, but they come
from a worker pool with no ordering: an ``ended`` can arrive before its
``started``. Each event carries AMS's ``timestamp`` (milliseconds), and only
an event newer than the newest one applied to that stream is applied, in one
conditional statement in the database, so several replicas agree on the
order whichever of them AMS happened to reach. Two events in the same
millisecond: the first to arrive wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from bot.store import AmsStream, Store

__all__ = ["MAX_STREAM_ID", "Streams"]

log = logging.getLogger("meetbot.streams")

MAX_STREAM_ID = 255  # the column; Circle's ids are a typed name plus 11 characters
CHUNK = 500  # rooms per IN (...) list

#: ``(stream id, room hint)`` → ``(room id, user id)`` for a stream the publish
#: webhook did not record (a Slack Call's participant stream id names its person).
Identify = Callable[[str, str | None], tuple[str, str] | None]


class Streams:
    """Records what AMS let publish, and applies its stream events in timestamp order."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- the publish webhook --------------------------------------------------------
    def record_publish(
        self, stream_id: str, *, room_id: str, user_id: str, grant_id: int, at: int
    ) -> bool:
        """Record that ``grant_id`` publishes ``stream_id``; False when the id is someone else's.

        One statement. A stream id stays with the person who first published it
        in that room: AMS refuses a second publisher of a live id anyway, and a
        participant who reuses another's id (they are visible in the room) must
        not make a kick miss the real owner's stream.
        """
        stmt = self.store.insert(AmsStream).values(
            stream_id=stream_id,
            room_id=room_id,
            user_id=user_id,
            grant_id=grant_id,
            published_at=at,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[AmsStream.stream_id],
            set_={"published_at": stmt.excluded.published_at, "grant_id": stmt.excluded.grant_id},
            where=and_(
                AmsStream.room_id == stmt.excluded.room_id,
                AmsStream.user_id == stmt.excluded.user_id,
            ),
        )
        # RETURNING, not rowcount: psycopg reports -1 for an ORM-run upsert.
        with self.store.write() as tx:
            return tx.execute(stmt.returning(AmsStream.stream_id)).first() is not None

    # -- listener hooks -------------------------------------------------------------
    def hook_event(
        self,
        stream_id: str,
        *,
        room_hint: str | None,
        timestamp: int | None,
        live: bool,
        identify: Identify | None = None,
    ) -> tuple[str, str] | None:
        """Apply one ``liveStreamStarted``/``liveStreamEnded``; ``(room, user)`` if applied.

        None when the event is older than one already applied to the stream
        (dropped), or the stream is not one of ours. A stream the publish
        webhook did not record is taken in only when ``identify`` names its
        room and person, and the room is ours (the foreign key says so).
        """
        if len(stream_id) > MAX_STREAM_ID:
            return None
        for _ in range(2):
            applied = self._apply(stream_id, timestamp, live)
            if applied is not None:
                return applied
            with self.store.read() as s:
                if s.get(AmsStream, stream_id) is not None:
                    log.debug("stale stream event dropped (%s at %s)", live, timestamp)
                    return None
            who = identify(stream_id, room_hint) if identify is not None else None
            if who is None:
                return None
            room_id, user_id = who
            try:
                with self.store.write() as tx:
                    inserted = tx.execute(
                        self.store.insert(AmsStream)
                        .values(
                            stream_id=stream_id,
                            room_id=room_id,
                            user_id=user_id,
                            event_ts=timestamp,
                            live=live,
                        )
                        .on_conflict_do_nothing()
                        .returning(AmsStream.stream_id)
                    ).first()
            except IntegrityError:  # the room is not one of ours (or no longer exists)
                return None
            if inserted is not None:
                return room_id, user_id
            # Another replica inserted it meanwhile: apply ours against theirs.
        return None

    def _apply(self, stream_id: str, timestamp: int | None, live: bool) -> tuple[str, str] | None:
        """The conditional update: newer than what the row holds, or no order to go by."""
        stmt = update(AmsStream).where(AmsStream.stream_id == stream_id)
        values: dict[str, object] = {"live": live}
        if timestamp is not None:
            stmt = stmt.where(or_(AmsStream.event_ts.is_(None), AmsStream.event_ts < timestamp))
            values["event_ts"] = timestamp
        stmt = stmt.values(**values).returning(AmsStream.room_id, AmsStream.user_id)
        with self.store.write() as tx:
            row = tx.execute(stmt).first()
        return (row[0], row[1]) if row is not None else None

    # -- reading --------------------------------------------------------------------
    def of_grant(self, grant_id: int) -> list[str]:
        """The grant's streams that may be live (not known to have ended)."""
        with self.store.read() as s:
            return list(
                s.scalars(
                    select(AmsStream.stream_id)
                    .where(AmsStream.grant_id == grant_id)
                    .where(or_(AmsStream.live.is_(None), AmsStream.live.is_(True)))
                    .order_by(AmsStream.stream_id)
                )
            )

    def of_rooms(self, room_ids: Sequence[str]) -> dict[str, list[str]]:
        """Each room's streams that may be live; rooms without any are left out."""
        out: dict[str, list[str]] = {}
        with self.store.read() as s:
            for i in range(0, len(room_ids), CHUNK):
                rows = s.execute(
                    select(AmsStream.room_id, AmsStream.stream_id)
                    .where(AmsStream.room_id.in_(list(room_ids[i : i + CHUNK])))
                    .where(or_(AmsStream.live.is_(None), AmsStream.live.is_(True)))
                    .order_by(AmsStream.stream_id)
                ).all()
                for room_id, stream_id in rows:
                    out.setdefault(room_id, []).append(stream_id)
        return out

    def is_live(self, room_id: str, user_id: str) -> bool:
        """Whether a hook said one of this person's streams in the room is live now."""
        with self.store.read() as s:
            return (
                s.scalar(
                    select(AmsStream.stream_id)
                    .where(AmsStream.room_id == room_id, AmsStream.user_id == user_id)
                    .where(AmsStream.live.is_(True))
                    .limit(1)
                )
                is not None
            )
