"""Prometheus metrics: what happened (counted where it happens) and what is (read at scrape).

Why it looks like this:

* Its own ``CollectorRegistry``: tests (and ``meetbot demo``) build several
  ``Services`` in one process, and the global registry refuses a second metric
  of the same name. It also keeps the process/GC collectors of the default
  registry out unless asked for.
* Events (rooms created, DMs sent, AMS calls) are counted where they happen,
  through the hooks the other modules already expose: ``Rooms(on_event=...)``,
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
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import case, func, or_, select

from bot.store import Outbox, OutboxState, Room, RoomState, Store, StreamSecret

__all__ = ["Metrics"]

log = logging.getLogger("meetbot.metrics")

#: AMS calls last from milliseconds (version) to the read timeout (10 s default).
AMS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The auth webhook answers in milliseconds; AMS gives up on it after 5 s.
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
        out.append(
            GaugeMetricFamily(
                "meetbot_outbox_oldest_age_seconds",
                "Age of the oldest Slack message that is due and not sent yet; 0 when none.",
                value=max(0, now - oldest_outbox) if oldest_outbox is not None else 0,
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
        self.webhook_seconds = Histogram(
            "meetbot_auth_webhook_seconds",
            "Time to answer AMS's auth webhook (every join waits for it), by outcome "
            '("allowed", "refused", "error", "malformed").',
            ["outcome"],
            buckets=WEBHOOK_BUCKETS,
            registry=self.registry,
        )
        # Present from the first scrape, so rate() and alerts see a 0, not a gap.
        for event in ("created", "revoked", "failed"):
            self.room_events.labels(event)
        for outcome in ("sent", "failed", "ratelimited", "retry"):
            self.slack_sends.labels("dm_link", outcome)
        self.registry.register(_DatabaseCollector(store, clock))

    # -- hooks ------------------------------------------------------------
    def room_event(self, event: str) -> None:
        """``Rooms(on_event=...)``: a room was created, revoked or failed."""
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

    def observe_webhook(self, outcome: str, seconds: float) -> None:
        """``AmsAuth(observe=...)``: one answer to AMS's auth webhook."""
        try:
            self.webhook_seconds.labels(outcome).observe(seconds)
        except Exception:
            log.exception("metrics: observe_webhook failed")

    def observe_ams(self, op: str, outcome: str, seconds: float) -> None:
        """``AmsClient(observer=...)`` / ``AmsManagement(observer=...)``."""
        self.ams_calls.labels(op, outcome).inc()
        self.ams_seconds.labels(op).observe(seconds)

    # -- exposition -------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
