"""CPU priority of the doubles' handler threads, for benchmarks on one machine.

A real AMS and a real Slack run on other machines: their CPU never competes
with the bot's. The doubles run beside the bot, and when the bot's worker keeps
them busy they take CPU the bot's request threads want, which a deployment
would not see. A benchmark can lower their priority (``niceness`` > 0) so what
it measures is the bot. Tests leave it at 0.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any


class NiceThreads:
    """Mixin for a ``ThreadingHTTPServer``: each handler thread at ``niceness``."""

    niceness = 0

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.niceness:
            with contextlib.suppress(OSError, AttributeError):  # not Linux: as is
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.niceness)
        super().process_request_thread(request, client_address)  # type: ignore[misc]
