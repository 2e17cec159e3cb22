"""Load generator, run as its own process: ``python -m bench.load < spec.json``.

It plays Slack towards a server: signs each prepared body at send time (as
Slack does) and POSTs it with ``concurrency`` closed-loop client threads, each
on its own keep-alive connection. It lives in a separate process so that the
doubles' work in the benchmark's main process never competes with the client
for a GIL, which would add to the bot's measured latency but not the floor's.

Spec: ``{"url", "concurrency", "warmup": [body, ...], "bodies": [body, ...]}``.
Prints ``{"results": [[seconds, status, text], ...], "wall": seconds}``.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.harness import SIGNING_SECRET
from bot.sim.slack import SlackSender

FORM = "application/x-www-form-urlencoded"


def main() -> None:
    spec = json.load(sys.stdin)
    sender = SlackSender(spec["url"], SIGNING_SECRET, timeout=10.0)

    def one(body: str) -> tuple[float, int, str]:
        data = body.encode()
        start = time.perf_counter()
        try:
            resp = sender.post(data, FORM)
        except Exception as e:  # noqa: BLE001 - a failed request is a result too
            return time.perf_counter() - start, 0, type(e).__name__
        return time.perf_counter() - start, resp.status_code, resp.text[:200]

    with ThreadPoolExecutor(max_workers=int(spec["concurrency"])) as pool:
        list(pool.map(one, spec["warmup"]))
        gc.collect()
        gc.disable()  # the client's own pauses are not the server's latency
        t0 = time.perf_counter()
        results = list(pool.map(one, spec["bodies"]))
        wall = time.perf_counter() - t0
        gc.enable()
    sender.close()
    json.dump({"results": results, "wall": wall}, sys.stdout)


if __name__ == "__main__":
    main()
