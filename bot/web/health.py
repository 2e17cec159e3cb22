"""``GET /readyz``: can this replica do its job right now?

A load balancer or Kubernetes asks often; the answer must come quickly and
say nothing an outsider could use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from sqlalchemy import text

from bot.ams.client import AmsClient
from bot.config import Settings
from bot.store import Store

__all__ = ["READY_TIMEOUT_S", "Readiness"]

log = logging.getLogger("meetbot.health")

#: How long ``/readyz`` waits for the database and for AMS, each.
READY_TIMEOUT_S = 2.0


class Readiness:
    """``GET /readyz``: can this replica do its job right now?

    Ready = the database answers ``SELECT 1`` and AMS answers ``version`` within
    :data:`READY_TIMEOUT_S` each. Both probes run on a small pool with a
    deadline so a hung TCP connect cannot hold a load balancer's probe (or a
    waitress thread) for longer than that. AMS is probed with its own client:
    no retries, short timeouts, so a probe never waits out the real client's
    backoff.
    """

    def __init__(
        self,
        store: Store,
        ams_version: Callable[[], Any],
        *,
        timeout: float = READY_TIMEOUT_S,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.ams_version = ams_version
        self.timeout = timeout
        self._on_close = on_close
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")

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
        """``(ready, body)``; the body names what failed, never a secret."""
        db = self._pool.submit(self._db)
        ams = self._pool.submit(self.ams_version)
        reasons: dict[str, str] = {}
        for name, future in (("database", db), ("ams", ams)):
            try:
                future.result(timeout=self.timeout)
            except FutureTimeout:
                reasons[name] = f"no answer within {self.timeout:g}s"
            except Exception as e:
                # AmsError's str() is written for operators and holds no secret;
                # a database error can echo its URL, so only its type is shown.
                kind = getattr(e, "kind", None)
                reasons[name] = f"{kind}: {e}" if kind else type(e).__name__
        if reasons:
            return False, {"ready": False, "reasons": reasons}
        return True, {"ready": True}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._on_close is not None:
            self._on_close()
