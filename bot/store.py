"""The database: SQLAlchemy models and every query the bot makes.

Times are stored as integer unix seconds. That keeps SQLite and PostgreSQL
identical (SQLite has no time zones), and every time the bot compares against
(JWT ``exp``, AMS ``plannedEndDate``) is a unix second already.

Tokens are never stored: a grant keeps the ``jti``, the user, the room and the
``exp``, which is everything needed to mint the same token again.

Concurrency: on SQLite, write transactions start with ``BEGIN IMMEDIATE`` so a
read-then-write (a claim) cannot interleave with another writer; on PostgreSQL
claims use ``SELECT ... FOR UPDATE SKIP LOCKED`` so replicas take disjoint
work. The same query code runs on both.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    case,
    create_engine,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression

#: The newest Alembic revision (bot/migrations/versions): ``Store.migrate`` loads
#: Alembic only when the database is behind it, so a restart on a current schema
#: never imports Alembic (and its templates) into the running bot.
#: tests/test_migrations.py checks that it names the real head.
SCHEMA_HEAD = "0011"
SQLITE_BUSY_TIMEOUT_S = 15
DEPLOYMENT_KEY = "deployment"  # Meta row holding this deployment's identity
SQLITE_ANALYSIS_LIMIT = 1000  # rows ANALYZE samples per index: quick at any size


class Base(DeclarativeBase):
    pass


class RoomState:
    """Room lifecycle: creating → active → revoking → revoked, or creating → failed."""

    CREATING = "creating"
    ACTIVE = "active"
    REVOKED = "revoked"
    FAILED = "failed"
    OPEN = (CREATING, ACTIVE)


class Room(Base):
    __tablename__ = "rooms"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32), index=True)
    enterprise_id: Mapped[str | None] = mapped_column(String(32))
    owner_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    topic: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    ended_at: Mapped[int | None] = mapped_column(BigInteger)
    end_reason: Mapped[str | None] = mapped_column(String(200))
    channel_ts: Mapped[str | None] = mapped_column(String(32))
    schedule_id: Mapped[int | None] = mapped_column(Integer)
    # Claim bookkeeping for the revoke sweep (see Store.claim_due_rooms).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger, default=0)
    # Slack Calls (bot/slack/calls.py): the Call registered for the room, and when it was ended.
    slack_call_id: Mapped[str | None] = mapped_column(String(32))
    slack_call_ended_at: Mapped[int | None] = mapped_column(BigInteger)
    # Reconciliation (bot/ams/reconcile.py): when GET /broadcasts/{id} first answered
    # 404. One 404 is no proof (AMS answers 404 when its datastore read fails), so
    # a room is called vanished only when a later pass confirms it.
    ams_missing_since: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_rooms_state_expires", "state", "expires_at"),
        Index("ix_rooms_team_owner_state", "team_id", "owner_id", "state"),
    )


class Grant(Base):
    """One person's right to join one room. The token itself is never kept."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(String(32))
    enterprise_id: Mapped[str | None] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    display_name: Mapped[str | None] = mapped_column(String(120))
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    exp: Mapped[int] = mapped_column(BigInteger)
    # The stream-secret version the DM's link was last minted with (at first, the one
    # current when the grant was made): a rotation renews the DMs where it is stale.
    secret_version: Mapped[int | None] = mapped_column(Integer)
    dm_channel: Mapped[str | None] = mapped_column(String(32))
    dm_ts: Mapped[str | None] = mapped_column(String(32))
    link_sent_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # SHA-256 (hex) of the grant's click-time link id (bot/rooms/links.py); never the id.
    link_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("room_id", "user_id", name="uq_grants_room_user"),
        Index("ix_grants_team_user", "team_id", "user_id"),
        Index("ix_grants_link_hash", "link_hash", unique=True),
    )


class AmsStream(Base):
    """A stream AMS let publish in one of our rooms, and whose it is.

    Written by the publish webhook (``bot/rooms/access.py``), which is the one
    moment AMS names a participant's own stream id together with their token:
    that is how the bot knows which streams to stop when it removes a person or
    ends a room. ``event_ts``/``live`` come from AMS's listener hooks, which
    arrive in no particular order: only an event newer than ``event_ts``
    (AMS's milliseconds) is applied, here in the database so replicas agree.
    ``live`` is None until a hook says.
    """

    __tablename__ = "ams_streams"

    stream_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(String(32))
    grant_id: Mapped[int | None] = mapped_column(
        ForeignKey("grants.id", ondelete="CASCADE"), index=True
    )
    published_at: Mapped[int | None] = mapped_column(BigInteger)
    event_ts: Mapped[int | None] = mapped_column(BigInteger)
    live: Mapped[bool | None] = mapped_column()


class Meta(Base):
    """Facts about this deployment that outlive a process: its identity, what AMS asked.

    ``deployment`` is made once per database (``Store.deployment_id``) and goes into
    the marker of every room this deployment creates on AMS, so a staging and a
    production bot that share one AMS application never take each other's rooms
    for their own.
    """

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[int] = mapped_column(BigInteger)


class Audit(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    team_id: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    room_id: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")


class OutboxState:
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class Outbox(Base):
    """A Slack side effect owed to someone, written with the change that causes it.

    ``payload`` never holds a token: a DM row points at its grant and the
    sender mints the link when it sends.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(String(32))
    # Enterprise Grid: an org-wide install's token is found by the enterprise.
    enterprise_id: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    room_id: Mapped[str | None] = mapped_column(String(64), index=True)
    grant_id: Mapped[int | None] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text, default="{}")
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # How many of ``attempts`` (claims) ended with a known outcome: Slack answered,
    # or nothing was sent. When ``attempts`` runs ahead of it by more than the claim
    # in hand, an earlier attempt may have posted without being recorded (a timeout,
    # a dropped connection, a crash): only then is the DM's history checked.
    settled_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    not_before: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[int | None] = mapped_column(BigInteger)
    result_channel: Mapped[str | None] = mapped_column(String(32))
    result_ts: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)
    done_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_outbox_state_not_before", "state", "not_before"),)


class StreamSecret(Base):
    """A version of the AMS stream secret, encrypted with MEETBOT_SECRET_KEY.

    ``pending`` is written before AMS is told, so a crash in between can be
    settled on start by asking AMS which one it holds.
    """

    __tablename__ = "stream_secrets"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ciphertext: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending|current|retired
    created_at: Mapped[int] = mapped_column(BigInteger)
    activated_at: Mapped[int | None] = mapped_column(BigInteger)


class Job(Base):
    """A singleton unit of work (e.g. the rotation) that replicas take turns to claim."""

    __tablename__ = "jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[int | None] = mapped_column(BigInteger)
    next_run_at: Mapped[int] = mapped_column(BigInteger, default=0)
    last_run_at: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(String(300))


class Schedule(Base):
    """A recurring (or one-off) team room. A row, not an APScheduler job."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(String(32))
    enterprise_id: Mapped[str | None] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    creator_id: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[str] = mapped_column(String(120))
    tz: Mapped[str] = mapped_column(String(64))
    duration: Mapped[int] = mapped_column(Integer)
    invitees: Mapped[str] = mapped_column(Text, default="[]")
    next_run_at: Mapped[int | None] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_schedules_due", "active", "next_run_at"),
        Index("ix_schedules_team_channel", "team_id", "channel_id"),
    )


class Occurrence(Base):
    """One firing of a schedule. Unique per (schedule, time): fired at most once.

    ``room_id`` is chosen when the occurrence is claimed, so a firing that is
    retried after a crash creates (or finds) the very same AMS room.
    """

    __tablename__ = "occurrences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    run_at: Mapped[int] = mapped_column(BigInteger)
    room_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # pending|fired|skipped|failed
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("schedule_id", "run_at", name="uq_occurrence_schedule_run"),
        Index("ix_occurrences_state", "state"),
    )


class SlackPace(Base):
    """One line of Slack's posting budget, the same for every replica (``bot.slack.pacing``).

    ``key`` names what it paces:

    * ``c:<team>:<channel>``, a channel: ``next_at`` is the first start not yet
      reserved, ``floor_at`` the earliest any post may start (after the last one
      ended, or a 429's Retry-After);
    * ``w:<team>``, a workspace: ``seq`` counts the posts reserved so far and
      ``floor_at`` holds a pause after a 429;
    * ``w:<team>:<i>``, slot ``i`` of the workspace's ring of its last N starts
      (``next_at``): post ``k`` may start only a window after post ``k - N`` did,
      and not before ``floor_at`` (a window after post ``k - N`` ended).

    Unix seconds as floats: paces are a second apart.
    """

    __tablename__ = "slack_pace"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    next_at: Mapped[float] = mapped_column(Double, default=0.0)
    floor_at: Mapped[float] = mapped_column(Double, default=0.0)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class HomeViewer(Base):
    """Someone who has opened the bot's App Home: only their Home is kept current.

    Slack shows the last view published to a person when they open the tab,
    and ``app_home_opened`` draws it afresh anyway; refreshing the Home of
    everyone a room concerns would spend ``views.publish`` (Tier 4) and CPU on
    people who never look (half of a mass expiry's CPU, measured).
    """

    __tablename__ = "home_viewers"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    opened_at: Mapped[int] = mapped_column(BigInteger)


def normalise_url(url: str) -> str:
    """Map the URLs people paste to the driver meetbot ships (psycopg 3)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """An engine with the SQLite settings one process needs to stay unblocked."""
    url = normalise_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN so we can make it IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if ":memory:" not in url and url != "sqlite://":
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("meetbot_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def now() -> int:
    return int(time.time())


# Statements run for every message sent, built once. Building a statement (and
# the key SQLAlchemy finds its compiled form by) costs more than running it: a
# send's record took 1.9 ms of CPU built each time, 0.7 ms built once.
_RECORD_OUTCOME = (
    update(Outbox)
    .where(Outbox.id == bindparam("row_id"), Outbox.lease_owner == bindparam("owner"))
    .where(Outbox.lease_until == bindparam("lease"))
    .values(
        lease_owner=None,
        lease_until=None,
        state=bindparam("new_state"),
        result_channel=bindparam("new_channel"),
        result_ts=bindparam("new_ts"),
        error=bindparam("new_error"),
        done_at=bindparam("new_done_at"),
    )
    .returning(
        Outbox.kind,
        Outbox.room_id,
        Outbox.grant_id,
        Outbox.team_id,
        Outbox.enterprise_id,
        Outbox.channel,
    )
)
_DM_LANDED = (
    update(Grant)
    .where(Grant.id == bindparam("grant_id"))
    .values(dm_channel=bindparam("new_channel"), dm_ts=bindparam("new_ts"))
)
_CARD_LANDED = (
    update(Room).where(Room.id == bindparam("room_id")).values(channel_ts=bindparam("new_ts"))
)
_ROOM_STATE = select(Room.state).where(Room.id == bindparam("room_id"))
# A reconciliation pass's look at the rooms AMS lists, in chunks of this many ids.
STATES_CHUNK = 500
_ROOM_STATES = select(Room.id, Room.state).where(Room.id.in_(bindparam("ids", expanding=True)))
_ROOMS_PENDING = (
    select(Outbox.room_id)
    .where(Outbox.room_id.in_(bindparam("rooms", expanding=True)))
    .where(Outbox.state == OutboxState.PENDING, Outbox.kind.in_(bindparam("kinds", expanding=True)))
    .distinct()
)
# Run for every /meet.
_OPEN_ROOMS_OF = select(func.count()).where(
    Room.team_id == bindparam("team_id"),
    Room.owner_id == bindparam("user_id"),
    Room.state.in_(RoomState.OPEN),
)
_ROOM_OUTBOX = select(Outbox).where(Outbox.room_id == bindparam("room_id")).order_by(Outbox.id)


class Store:
    """Sessions and queries. ``write()`` for anything that changes rows."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = normalise_url(url)
        self.engine = engine or make_engine(self.url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(meetbot_write=True), expire_on_commit=False
        )
        self._deployment: str | None = None
        # SQLite lets one writer in at a time; the others retry on its busy handler,
        # which sleeps longer after each try (up to 100 ms): in a burst of rooms a
        # writer that waited a while kept losing to fresh ones and waited seconds
        # (measured: up to 4.5 s, while the lock was held for 3 to 20 ms at a time),
        # its sending thread with it. This process's writers queue here instead and
        # each goes in as soon as the last one commits. Reentrant: a write inside a
        # write fails on SQLite's lock either way, as before. Other processes (a CLI
        # command) still meet the busy handler.
        self._write_turn = threading.RLock() if self.is_sqlite else None

    # -- sessions -------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction; on SQLite it holds the write lock from its start."""
        if self._write_turn is None:
            with self._write() as s, s.begin():
                yield s
            return
        with self._write_turn, self._write() as s, s.begin():
            yield s

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (Alembic loads only if behind)."""
        if self.schema_revision() == SCHEMA_HEAD:
            return
        from alembic import command

        command.upgrade(alembic_config(self.engine), "head")
        self.deployment_id()  # made here, once, so every process of it finds the same
        if self.is_sqlite:
            self.optimize()

    def schema_revision(self) -> str | None:
        """The database's Alembic revision, or None before the first migration."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def optimize(self) -> None:
        """SQLite only: give the query planner table statistics (PostgreSQL keeps its own).

        SQLite has none until ANALYZE runs, and without them it may plan a join
        from the wrong table. ``PRAGMA optimize`` (bounded by ``analysis_limit``)
        analyzes what is missing or stale; before SQLite 3.46 it only looks at
        tables this connection has queried, so a database that holds rooms but
        no statistics for them is analyzed here outright.
        """
        if not self.is_sqlite:
            return
        with self.engine.connect() as c:
            c.exec_driver_sql(f"PRAGMA analysis_limit={SQLITE_ANALYSIS_LIMIT}")
            analyzed = (
                c.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").first()
                and c.exec_driver_sql(
                    "SELECT 1 FROM sqlite_stat1 WHERE tbl IN ('rooms', 'grants') LIMIT 1"
                ).first()
            )
            if not analyzed and c.exec_driver_sql("SELECT 1 FROM grants LIMIT 1").first():
                c.exec_driver_sql("ANALYZE")
            c.exec_driver_sql("PRAGMA optimize=0x10002")
            c.commit()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- dialect helpers ------------------------------------------------
    def insert(self, table: Any) -> Any:
        """This database's own INSERT, which has ``on_conflict_do_*`` (SQLite and PostgreSQL)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # -- this deployment ------------------------------------------------
    def deployment_id(self, *, create: bool = True) -> str | None:
        """This deployment's identity: made once per database and never changed.

        Every replica (and every operator command) on the same database gets the
        same value; replicas that start together race on one ``INSERT … ON
        CONFLICT DO NOTHING`` and all read the winner's. ``create=False`` only
        reads (``meetbot doctor`` changes nothing).
        """
        if self._deployment is not None:
            return self._deployment
        with self.read() as s:
            row = s.get(Meta, DEPLOYMENT_KEY)
            value = row.value if row is not None else None
        if value is None and create:
            with self.write() as s:
                s.execute(
                    self.insert(Meta)
                    .values(key=DEPLOYMENT_KEY, value=secrets.token_hex(8), updated_at=now())
                    .on_conflict_do_nothing()
                )
            with self.read() as s:
                row = s.get(Meta, DEPLOYMENT_KEY)
                value = row.value if row is not None else None
        self._deployment = value
        return value

    def meta(self, key: str) -> str | None:
        with self.read() as s:
            row = s.get(Meta, key)
            return row.value if row is not None else None

    def set_meta(self, key: str, value: str) -> None:
        """Write one ``meta`` row, made if missing (the last writer wins)."""
        stmt = self.insert(Meta).values(key=key, value=value, updated_at=now())
        stmt = stmt.on_conflict_do_update(
            index_elements=[Meta.key],
            set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        )
        with self.write() as s:
            s.execute(stmt)

    # -- rooms ----------------------------------------------------------
    def room(self, room_id: str, team_id: str | None = None) -> Room | None:
        with self.read() as s:
            room = s.get(Room, room_id)
            if room is None or (team_id is not None and room.team_id != team_id):
                return None
            return room

    def home_opened(self, team_id: str, user_id: str) -> None:
        """Remember that this person has looked at their App Home."""
        from sqlalchemy.exc import IntegrityError

        try:
            with self.write() as s:
                if s.get(HomeViewer, (team_id, user_id)) is None:
                    s.add(HomeViewer(team_id=team_id, user_id=user_id, opened_at=now()))
        except IntegrityError:  # two opens at once on PostgreSQL: the other one wrote it
            pass

    def home_viewers(self, team_id: str, user_ids: Sequence[str]) -> set[str]:
        """Which of these people have ever opened their App Home."""
        if not user_ids:
            return set()
        with self.read() as s:
            q = select(HomeViewer.user_id).where(
                HomeViewer.team_id == team_id, HomeViewer.user_id.in_(list(user_ids))
            )
            return set(s.scalars(q))

    def open_rooms_of(self, team_id: str, user_id: str) -> list[Room]:
        with self.read() as s:
            q = (
                select(Room)
                .where(Room.team_id == team_id, Room.owner_id == user_id)
                .where(Room.state.in_(RoomState.OPEN))
                .order_by(Room.expires_at)
            )
            return list(s.scalars(q))

    def rooms_invited(self, team_id: str, user_id: str) -> list[Room]:
        """Active rooms where the user holds an unrevoked grant (owner's included).

        Driven from the person's grants (``ix_grants_team_user``), each room then
        looked up by its key: the cost follows the person's grants, not the
        database. SQLite without statistics would rather walk every active room
        of every workspace through ``ix_rooms_state_expires``; ``+rooms.state``
        (SQLite's documented way to keep a term off an index) rules that out.
        """
        state: Any = Room.state
        if self.is_sqlite:
            state = UnaryExpression(Room.state, operator=operators.custom_op("+"), type_=String())
        with self.read() as s:
            q = (
                select(Room)
                .join(Grant, Grant.room_id == Room.id)
                .where(Grant.team_id == team_id, Grant.user_id == user_id)
                .where(Grant.revoked_at.is_(None), state == RoomState.ACTIVE)
                .order_by(Room.expires_at)
            )
            return list(s.scalars(q))

    def lock_person(self, s: Session, team_id: str, user_id: str) -> None:
        """Hold one person's room opens one at a time until ``s`` commits.

        The open-room limit is a count, then an insert: under PostgreSQL's READ
        COMMITTED two ``/meet``s from one person (on one replica's threads or on
        two replicas) could both count 4 of 5 and both insert. A transaction-
        scoped advisory lock per person makes the second wait for the first's
        commit, so its count sees the first room. SQLite needs nothing: its write
        transactions (``BEGIN IMMEDIATE``) already run one at a time.
        """
        if self.is_sqlite:
            return
        digest = hashlib.blake2b(
            f"meetbot:open-rooms:{team_id}:{user_id}".encode(), digest_size=8
        ).digest()
        s.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True))))

    def count_open_rooms(self, s: Session, team_id: str, user_id: str) -> int:
        return int(s.scalar(_OPEN_ROOMS_OF, {"team_id": team_id, "user_id": user_id}) or 0)

    def grants_of(self, room_id: str, *, include_revoked: bool = False) -> list[Grant]:
        with self.read() as s:
            q = select(Grant).where(Grant.room_id == room_id).order_by(Grant.id)
            if not include_revoked:
                q = q.where(Grant.revoked_at.is_(None))
            return list(s.scalars(q))

    def claim_due_rooms(self, owner: str, *, at: int, lease: int, limit: int) -> list[Room]:
        """Take up to ``limit`` active rooms past their end for ``owner``.

        A room is claimable when nobody holds a live lease on it; a worker that
        died leaves a lease that runs out, and the next sweep takes the room.
        Rooms that end in the same second are taken owner by owner, so one
        person's rooms end together and what they are told (their App Home)
        is redrawn once, not once per room.
        """
        with self.write() as s:
            q = (
                select(Room)
                .where(Room.state == RoomState.ACTIVE, Room.expires_at <= at)
                .where(Room.next_attempt_at <= at)
                .where(or_(Room.lease_until.is_(None), Room.lease_until < at))
                .order_by(Room.expires_at, Room.team_id, Room.owner_id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            rooms = list(s.scalars(q))
            for r in rooms:
                r.lease_owner = owner
                r.lease_until = at + lease
            return rooms

    # -- outbox ---------------------------------------------------------
    def claim_outbox(
        self, owner: str, *, at: int, lease: int, limit: int, room_id: str | None = None
    ) -> list[Outbox]:
        """Take pending rows whose time has come and whose lease (if any) ran out."""
        with self.write() as s:
            q = (
                select(Outbox)
                .where(Outbox.state == OutboxState.PENDING, Outbox.not_before <= at)
                .where(or_(Outbox.lease_until.is_(None), Outbox.lease_until < at))
                .order_by(Outbox.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            if room_id is not None:
                q = q.where(Outbox.room_id == room_id)
            rows = list(s.scalars(q))
            for r in rows:
                r.lease_owner = owner
                r.lease_until = at + lease
                r.attempts += 1
            return rows

    def renew_outbox_lease(self, row_id: int, owner: str, *, was: int | None, until: int) -> bool:
        """Extend ``owner``'s lease on a row to ``until`` if it still holds the lease it
        had (``was``); False when the lease ran out and the row was claimed again
        meanwhile (by another replica, or by this process's own loop).
        """
        with self.write() as s:
            return bool(
                s.execute(
                    update(Outbox)
                    .where(Outbox.id == row_id, Outbox.state == OutboxState.PENDING)
                    .where(Outbox.lease_owner == owner, Outbox.lease_until == was)
                    .values(lease_until=until)
                ).rowcount
            )

    def release_outbox(self, owner: str, *, unsure: Sequence[int] = ()) -> int:
        """Give back every pending row ``owner`` holds (a clean shutdown).

        Their attempt sent nothing, so it counts as settled, except for the rows
        in ``unsure`` (a send began and did not finish cleanly): their outcome is
        unknown and the next attempt looks for an earlier post first.
        """
        with self.write() as s:
            mine = [Outbox.lease_owner == owner, Outbox.state == OutboxState.PENDING]
            released = 0
            if unsure:
                released += s.execute(
                    update(Outbox)
                    .where(*mine, Outbox.id.in_(list(unsure)))
                    .values(lease_owner=None, lease_until=None)
                ).rowcount
            released += s.execute(
                update(Outbox)
                .where(*mine)
                .values(
                    lease_owner=None,
                    lease_until=None,
                    settled_attempts=Outbox.settled_attempts + 1,
                )
            ).rowcount
            return released

    def release_rooms(self, owner: str) -> int:
        """Give back every room ``owner`` claimed for revoking but did not finish."""
        with self.write() as s:
            return s.execute(
                update(Room)
                .where(Room.lease_owner == owner, Room.state == RoomState.ACTIVE)
                .values(lease_owner=None, lease_until=None)
            ).rowcount

    def outbox_rows(self, room_id: str) -> list[Outbox]:
        with self.read() as s:
            return list(s.scalars(_ROOM_OUTBOX, {"room_id": room_id}))

    def room_states(self, room_ids: Sequence[str]) -> dict[str, str]:
        """The state of each of ``room_ids`` that has a row here, in one read of a few
        queries (``STATES_CHUNK`` ids each): a reconciliation pass checks every room
        AMS lists, and one read per room cost most of its CPU at 5,000 rooms."""
        out: dict[str, str] = {}
        ids = list(room_ids)
        with self.read() as s:
            for i in range(0, len(ids), STATES_CHUNK):
                for room_id, state in s.execute(_ROOM_STATES, {"ids": ids[i : i + STATES_CHUNK]}):
                    out[room_id] = state
        return out

    def rooms_with_pending(self, room_ids: Sequence[str], kinds: Sequence[str]) -> set[str]:
        """Those of ``room_ids`` with a row of these kinds still to be sent (one query)."""
        if not room_ids:
            return set()
        with self.read() as s:
            found = s.scalars(_ROOMS_PENDING, {"rooms": list(room_ids), "kinds": list(kinds)})
            return {r for r in found if r is not None}

    def pending_outbox_count(self) -> int:
        with self.read() as s:
            q = select(func.count()).where(Outbox.state == OutboxState.PENDING)
            return int(s.scalar(q) or 0)

    def finish_outbox(
        self,
        row_id: int,
        owner: str,
        *,
        state: str,
        lease: int,
        channel: str | None = None,
        ts: str | None = None,
        error: str | None = None,
        also: Callable[[Session], None] | None = None,
        on_owed: Callable[[], None] | None = None,
    ) -> bool:
        """Record how a send ended (``state``: done or failed); False when the lease
        the send held (``lease``, the row's ``lease_until``) was lost meanwhile: a
        row claimed again since, even by the same owner, is not this send's to record.

        ``also(session)`` runs first in the same transaction, whatever the row's fate
        (the Slack pacing floors the post moved: the post happened either way).
        ``on_owed()`` runs once committed if recording it owed a new row (the
        "ended" edit of a message that landed as its room ended): the outbox
        looks for that row then, not at its next poll.
        """
        owed = False
        with self.write() as s:
            if also is not None:
                also(s)
            c = s.connection()
            row = c.execute(
                _RECORD_OUTCOME,
                {
                    "row_id": row_id,
                    "owner": owner,
                    "lease": lease,
                    "new_state": state,
                    "new_channel": channel,
                    "new_ts": ts,
                    "new_error": error[:200] if error else None,
                    "new_done_at": now(),
                },
            ).first()
            if row is None:
                return False
            # Remember where the message landed, in the same transaction, so a
            # later edit (room ended, link re-issued) can find it.
            done = state == OutboxState.DONE
            if done and row.kind == "dm_link" and row.grant_id is not None:
                c.execute(
                    _DM_LANDED, {"grant_id": row.grant_id, "new_channel": channel, "new_ts": ts}
                )
                owed = self._edit_if_ended(s, row, "dm_update", channel or row.channel)
            elif done and row.kind == "room_card" and row.room_id:
                c.execute(_CARD_LANDED, {"room_id": row.room_id, "new_ts": ts})
                owed = self._edit_if_ended(s, row, "card_update", row.channel)
        if owed and on_owed is not None:
            on_owed()
        return True

    def retry_outbox(
        self,
        row_id: int,
        owner: str,
        *,
        at: int,
        lease: int,
        error: str,
        settled: int | None = None,
        tried: bool = True,
    ) -> bool:
        """Put a row back, due again at unix second ``at``; False when the lease the
        send held (``lease``) was lost meanwhile.

        ``settled``: how many attempts now have a known outcome (``Outbox.settled_attempts``).
        ``tried=False``: the claim sent nothing (a post put off until its paced
        slot), so it is not counted as an attempt.
        """
        values: dict[str, Any] = {
            "lease_owner": None,
            "lease_until": None,
            "error": error[:200],
            "not_before": at,
        }
        if settled is not None:
            values["settled_attempts"] = settled
        if not tried:
            values["attempts"] = case((Outbox.attempts > 0, Outbox.attempts - 1), else_=0)
        with self.write() as s:
            return bool(
                s.execute(
                    update(Outbox)
                    .where(Outbox.id == row_id, Outbox.lease_owner == owner)
                    .where(Outbox.lease_until == lease)
                    .values(**values)
                ).rowcount
            )

    @staticmethod
    def _edit_if_ended(s: Session, row: Any, kind: str, channel: str) -> bool:
        """A message that landed just as its room ended missed the revoke's edits
        (its ts was not known yet): owe it the "ended" edit now (True: owed).

        ``row``: the sent row's ``kind``, ``room_id``, ``grant_id``, ``team_id``,
        ``enterprise_id`` and ``channel``."""
        if not row.room_id:
            return False
        state = s.connection().scalar(_ROOM_STATE, {"room_id": row.room_id})
        if state != RoomState.REVOKED:
            return False
        s.add(
            Outbox(
                team_id=row.team_id,
                enterprise_id=row.enterprise_id,
                kind=kind,
                room_id=row.room_id,
                grant_id=row.grant_id,
                channel=channel,
                payload=json.dumps({"mode": "ended"}),
                state=OutboxState.PENDING,
                attempts=0,
                not_before=0,
                created_at=now(),
            )
        )
        return True

    # -- audit ----------------------------------------------------------
    @staticmethod
    def audit(
        s: Session,
        action: str,
        *,
        actor: str,
        team_id: str | None = None,
        room_id: str | None = None,
        **detail: Any,
    ) -> None:
        s.add(
            Audit(
                at=now(),
                team_id=team_id,
                actor=actor,
                action=action,
                room_id=room_id,
                detail=json.dumps(detail, sort_keys=True, default=str),
            )
        )

    @staticmethod
    def audit_many(
        s: Session,
        action: str,
        *,
        actor: str,
        rooms: Sequence[tuple[str | None, str]],
        **detail: Any,
    ) -> None:
        """``audit`` for many rooms at once, ``(team_id, room_id)`` each: one INSERT."""
        if not rooms:
            return
        at = now()
        text = json.dumps(detail, sort_keys=True, default=str)
        s.execute(
            insert(Audit),
            [
                dict(
                    at=at, team_id=team_id, actor=actor, action=action, room_id=room_id, detail=text
                )
                for team_id, room_id in rooms
            ],
        )

    def audit_rows(self, room_id: str | None = None) -> Sequence[Audit]:
        with self.read() as s:
            q = select(Audit).order_by(Audit.id)
            if room_id is not None:
                q = q.where(Audit.room_id == room_id)
            return list(s.scalars(q))


def alembic_config(engine: Engine):  # noqa: ANN201 - alembic.config.Config
    """Alembic config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg
