"""The in-process ticker: every MEETBOT_SWEEP_INTERVAL, take whatever work is due.

APScheduler 3 only ticks here (memory job store, ``coalesce``, one instance
per job): the work itself lives in the database, and every unit of it is
claimed in a transaction before its side effects, so any number of replicas
can tick at once and each room is revoked once, each occurrence fired once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bot.logs import with_correlation

log = logging.getLogger("meetbot.scheduler")


class Scheduler:
    """Runs ``tasks`` (name → callable) one after another on every tick."""

    def __init__(self, interval: int, tasks: dict[str, Callable[[], object]]) -> None:
        self.interval = interval
        self.tasks = tasks
        self._aps = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": interval},
        )

    def start(self) -> None:
        self._aps.add_job(
            self.tick,
            IntervalTrigger(seconds=self.interval, timezone=UTC),
            id="sweep",
            next_run_time=datetime.now(UTC),  # first sweep at once: catch up after downtime
        )
        self._aps.start()

    def stop(self) -> None:
        """Stop ticking and wait for a tick in progress to finish its claimed work."""
        if self._aps.running:
            self._aps.shutdown(wait=True)

    def tick(self) -> None:
        for name, task in self.tasks.items():
            try:
                with with_correlation():  # one id per unit of work, as for requests
                    result = task()
                if result:
                    log.info("sweep %s: %s", name, result)
            except Exception:  # one failing task must not starve the others
                log.exception("sweep task %s failed", name)
