"""Prometheus metrics and the readiness probe.

Why it looks like this:

* Its own ``CollectorRegistry``: tests (and ``meetbot demo``) build several
  ``Services`` in one process, and the global registry refuses a second metric
  of the same name. It also keeps the process/GC collectors of the default
  registry out unless asked for.
* Events (rooms created, DMs sent, AMS calls) are counted where they happen,
  through the hooks the other modules already expose: ``Rooms.on_event``,
  ``OutboxWorker.on_result`` and ``AmsClient(observer=...)``. Counters are per
  replica; Prometheus sums them.
* State (open rooms, scheduler lag, last rotation) is read from the database
  at scrape time by a custom collector, so every replica reports the same,
  correct number, and nothing has to be kept in step by hand. The queries are
  small (indexed counts and minimums).
* A metrics bug must never break the bot: hooks swallow their own errors, and a
  database that does not answer turns into ``meetbot_database_up 0`` rather
  than a failed scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import case, func, or_, select, text

from bot.config import Settings
from bot.store import Outbox, OutboxState, Room, RoomState, Store, StreamSecret

__all__ = ["Metrics", "Readiness", "READY_CACHE_S", "READY_TIMEOUT_S"]

log = logging.getLogger("meetbot.metrics")

#: How long ``/readyz`` waits for the database and for AMS, each.
READY_TIMEOUT_S = 2.0

#: How long one ``/readyz`` answer is reused. Load balancers probe every few
#: seconds; anyone else who can reach the port could otherwise make the bot
#: call AMS and the database as fast as they can send requests.
READY_CACHE_S = 1.0

#: AMS calls last from milliseconds (version) to the read timeout (10 s default).
AMS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _DatabaseCollector(Collector):
    """Gauges computed from the database at scrape time."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def describe(self) -> list[Any]:
        # Returning nothing stops the registry from calling collect() at
        # registration time (which would query the database in __init__).
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "meetbot_database_up", "1 when the database answered this scrape's queries."
        )
        try:
            families = self._query(int(self.clock()))
        except Exception as e:  # scrape must not fail because the database does
            log.warning("metrics: database query failed: %s", type(e).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _query(self, now: int) -> list[GaugeMetricFamily]:
        with self.store.read() as s:
            by_state = dict(
                s.execute(
                    select(Room.state, func.count())
                    .where(Room.state.in_(RoomState.OPEN))
                    .group_by(Room.state)
                ).all()
            )
            pending = s.scalar(select(func.count()).where(Outbox.state == OutboxState.PENDING))
            # A row queued "for now" has not_before 0: it became due when written.
            outbox_due_at = case(
                (Outbox.not_before > Outbox.created_at, Outbox.not_before),
                else_=Outbox.created_at,
            )
            oldest_outbox = s.scalar(
                select(func.min(outbox_due_at)).where(
                    Outbox.state == OutboxState.PENDING, Outbox.not_before <= now
                )
            )
            # A room is due at its end, or at its retry time after AMS refused.
            room_due_at = case(
                (Room.next_attempt_at > Room.expires_at, Room.next_attempt_at),
                else_=Room.expires_at,
            )
            oldest_room = s.scalar(
                select(func.min(room_due_at))
                .where(Room.state == RoomState.ACTIVE, Room.expires_at <= now)
                .where(Room.next_attempt_at <= now)
                .where(or_(Room.lease_until.is_(None), Room.lease_until < now))
            )
            last_rotation = s.scalar(select(func.max(StreamSecret.activated_at)))

        open_rooms = GaugeMetricFamily(
            "meetbot_open_rooms", "Rooms not yet ended, by state.", labels=["state"]
        )
        for state in RoomState.OPEN:
            open_rooms.add_metric([state], int(by_state.get(state, 0)))
        out = [open_rooms]
        out.append(
            GaugeMetricFamily(
                "meetbot_outbox_pending",
                "Slack messages owed and not sent yet (due now or later).",
                value=int(pending or 0),
            )
        )
        due = [t for t in (oldest_outbox, oldest_room) if t is not None]
        lag = max(0, now - min(due)) if due else 0
        out.append(
            GaugeMetricFamily(
                "meetbot_scheduler_lag_seconds",
                "Age of the oldest unit of due work (an owed Slack message or a room past "
                "its end) that no worker has done yet; 0 when nothing is overdue.",
                value=lag,
            )
        )
        if last_rotation is not None:
            out.append(
                GaugeMetricFamily(
                    "meetbot_stream_secret_last_rotation_timestamp_seconds",
                    "When the current AMS stream secret was activated (unix seconds).",
                    value=int(last_rotation),
                )
            )
        return out


class Metrics:
    """The bot's metrics. Hook the methods into the modules that produce events."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self.room_events = Counter(
            "meetbot_room_events",
            'Room lifecycle events ("created", "revoked", ...) on this replica.',
            ["event"],
            registry=self.registry,
        )
        self.slack_sends = Counter(
            "meetbot_slack_sends",
            "Outbox sends to Slack by kind (dm_link, room_card, dm_update, card_update) "
            'and outcome ("sent", "failed", "ratelimited" = HTTP 429, "retry").',
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.ams_calls = Counter(
            "meetbot_ams_calls",
            'AMS API calls by operation and outcome ("ok" or the error kind).',
            ["op", "outcome"],
            registry=self.registry,
        )
        self.ams_seconds = Histogram(
            "meetbot_ams_call_seconds",
            "Duration of AMS API calls, retries included.",
            ["op"],
            buckets=AMS_BUCKETS,
            registry=self.registry,
        )
        self.held_calls = Counter(
            "meetbot_worker_held_calls",
            "Calls the worker process held back while the front was answering Slack "
            "(acks first; bot/worker.py FrontActivity).",
            registry=self.registry,
        )
        self.held_seconds = Counter(
            "meetbot_worker_held_seconds",
            "Seconds those calls waited, in all.",
            registry=self.registry,
        )
        # Present from the first scrape, so rate() and alerts see a 0, not a gap.
        for event in ("created", "revoked"):
            self.room_events.labels(event)
        for outcome in ("sent", "failed", "ratelimited", "retry"):
            self.slack_sends.labels("dm_link", outcome)
        self.registry.register(_DatabaseCollector(store, clock))

    # -- hooks ------------------------------------------------------------
    def room_event(self, event: str) -> None:
        """``Rooms.on_event``."""
        try:
            self.room_events.labels(event).inc()
        except Exception:  # never let metrics break a room operation
            log.exception("metrics: room_event failed")

    def outbox_result(self, kind: str, outcome: str) -> None:
        """``OutboxWorker.on_result``."""
        try:
            self.slack_sends.labels(kind, outcome).inc()
        except Exception:
            log.exception("metrics: outbox_result failed")

    def call_held(self, seconds: float) -> None:
        """The worker held a handed-over call ``seconds`` for a quiet front."""
        self.held_calls.inc()
        self.held_seconds.inc(seconds)

    def observe_ams(self, op: str, outcome: str, seconds: float) -> None:
        """``AmsClient(observer=...)`` / ``AmsManagement(observer=...)``."""
        self.ams_calls.labels(op, outcome).inc()
        self.ams_seconds.labels(op).observe(seconds)

    # -- exposition -------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Readiness:
    """``GET /readyz``: can this replica do its job right now?

    Ready = the database answers ``SELECT 1`` and AMS answers ``version`` within
    :data:`READY_TIMEOUT_S` each. Both probes run on a small pool with a
    deadline so a hung TCP connect cannot hold a load balancer's probe (or a
    waitress thread) for longer than that. AMS is probed with its own client:
    no retries, short timeouts, so a probe never waits out the real client's
    backoff.

    The endpoint is unauthenticated, so it must not be a lever on AMS or the
    database, nor a window onto the deployment: one check runs at a time, its
    answer is shared by every caller that came meanwhile and reused for
    :data:`READY_CACHE_S`, and the body names the failing components only
    ("timeout" or "error"). What went wrong (AMS's URL, the exception) goes to
    the log, once per check.
    """

    def __init__(
        self,
        store: Store,
        ams_version: Callable[[], Any],
        *,
        timeout: float = READY_TIMEOUT_S,
        cache_for: float = READY_CACHE_S,
        on_close: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ams_version = ams_version
        self.timeout = timeout
        self.cache_for = cache_for
        self._on_close = on_close
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")
        self._cond = threading.Condition()
        self._running = False
        self._answer: tuple[bool, dict[str, Any]] | None = None
        self._answered_at = 0.0

    @classmethod
    def for_settings(
        cls,
        store: Store,
        settings: Settings,
        *,
        observer: Callable[[str, str, float], None] | None = None,
    ) -> Readiness:
        """A probe with its own quick AMS client built from the bot's settings."""
        from bot.ams import AmsClient

        client = AmsClient(
            settings.ams_url,
            settings.ams_app,
            rest_jwt_secret=settings.ams_rest_jwt_secret,
            timeout=(min(1.0, READY_TIMEOUT_S), READY_TIMEOUT_S),
            retries=0,
            observer=observer,
        )
        return cls(store, client.version, on_close=client.close)

    def _db(self) -> None:
        with self.store.read() as s:
            s.execute(text("SELECT 1"))

    def check(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)``: the last answer while it is fresh, else a new check.

        Callers that arrive while a check runs wait for it (at most the
        probes' deadline) and share its answer.
        """
        with self._cond:
            while True:
                answer = self._answer
                if answer is not None and self._clock() - self._answered_at < self.cache_for:
                    return answer
                if not self._running:
                    self._running = True
                    break
                self._cond.wait(timeout=self.timeout + 1)
        answer = (False, {"ready": False, "reasons": {}})
        try:
            answer = self._probe()
        finally:
            with self._cond:
                self._answer = answer
                self._answered_at = self._clock()
                self._running = False
                self._cond.notify_all()
        return answer

    def _probe(self) -> tuple[bool, dict[str, Any]]:
        db = self._pool.submit(self._db)
        ams = self._pool.submit(self.ams_version)
        reasons: dict[str, str] = {}
        for name, future in (("database", db), ("ams", ams)):
            try:
                future.result(timeout=self.timeout)
            except FutureTimeout:
                reasons[name] = "timeout"
                log.warning("readyz: %s gave no answer within %gs", name, self.timeout)
            except Exception as e:
                reasons[name] = "error"
                # AmsError's str() is written for operators and holds no secret;
                # a database error can echo its URL, so only its type is logged.
                kind = getattr(e, "kind", None)
                why = f"{kind}: {e}" if kind else type(e).__name__
                log.warning("readyz: %s failed: %s", name, why)
        if reasons:
            return False, {"ready": False, "reasons": reasons}
        return True, {"ready": True}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._on_close is not None:
            self._on_close()
