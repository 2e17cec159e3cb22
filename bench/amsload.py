"""AMS calls from their own process: ``python -m bench.amsload < spec.json``.

The sweep's limit is AMS's own pace at the bot's concurrency: how long the
double takes to answer a set of stop and delete calls from ``concurrency``
clients at once, each on its own keep-alive connection, with nothing else in
the way. It runs in its own process so that its clients do not compete with
the doubles (in the benchmark's process) for a GIL, as the bot's do not.

Spec: ``{"base": url, "concurrency": n, "calls": [[method, path], ...]}``.
Prints ``{"elapsed": seconds, "statuses": [...]}``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests


def main() -> None:
    spec = json.load(sys.stdin)
    local = threading.local()

    def call(item: list[str]) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        method, path = item
        return session.request(method, spec["base"] + path, timeout=30).status_code

    with ThreadPoolExecutor(int(spec["concurrency"])) as pool:
        list(pool.map(lambda _: call(["GET", "/Conference/rest/v2/version"]), range(64)))
        t = time.perf_counter()
        statuses = list(pool.map(call, spec["calls"]))
        elapsed = time.perf_counter() - t
    json.dump({"elapsed": elapsed, "statuses": statuses}, sys.stdout)


if __name__ == "__main__":
    main()
