"""``GET /readyz``: can this replica do its job right now?

A load balancer or Kubernetes asks often; the answer must come quickly and
say nothing an outsider could use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from sqlalchemy import text

from bot.ams.client import AmsClient
from bot.config import Settings
from bot.store import Store

__all__ = ["READY_CACHE_S", "READY_TIMEOUT_S", "Readiness"]

log = logging.getLogger("meetbot.health")

#: How long ``/readyz`` waits for the database and for AMS, each.
READY_TIMEOUT_S = 2.0

#: How long one ``/readyz`` answer is reused. Load balancers probe every few
#: seconds; anyone else who can reach the port could otherwise make the bot
#: call AMS and the database as fast as they can send requests.
READY_CACHE_S = 1.0


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
