"""Load generator, run as its own process: ``python -m bench.load < spec.json``.

It plays Slack towards a server: signs each prepared body at send time (as
Slack does) and POSTs it, each client thread on its own keep-alive
connection. It lives in a separate process so that the doubles' work in the
benchmark's main process never competes with the client for a GIL, which
would add to the bot's measured latency but not the floor's.

Spec: ``{"url", "concurrency", "warmup": [body, ...], "bodies": [body, ...],
"offsets": [seconds, ...] | null}``. Without offsets the clients send back to
back (closed loop); with them body i is due ``offsets[i]`` seconds after the
start (open loop: Slack sends when people type, not when the bot is ready)
and waits for a free client if all ``concurrency`` are busy. Prints
``{"results": [[due, started, latency, status, text], ...]}``: ``due`` and
``started`` on ``time.monotonic`` (one clock for every process on the
machine), ``latency`` from ``due`` to the answer.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

from bench.harness import SIGNING_SECRET
from bot.sim.slack import SlackSender

FORM = "application/x-www-form-urlencoded"


def main() -> None:
    spec = json.load(sys.stdin)
    sender = SlackSender(spec["url"], SIGNING_SECRET, timeout=10.0)

    def one(body: str, due: float | None = None) -> list:
        data = body.encode()
        started = time.monotonic()
        due = started if due is None else due
        try:
            resp = sender.post(data, FORM)
        except Exception as e:  # noqa: BLE001 - a failed request is a result too
            return [due, started, time.monotonic() - due, 0, type(e).__name__]
        return [due, started, time.monotonic() - due, resp.status_code, resp.text[:200]]

    offsets = spec.get("offsets")
    with ThreadPoolExecutor(max_workers=int(spec["concurrency"])) as pool:
        list(pool.map(one, spec["warmup"]))
        gc.collect()
        gc.disable()  # the client's own pauses are not the server's latency
        if offsets is None:
            results = list(pool.map(one, spec["bodies"]))
        else:
            start = time.monotonic() + 0.05
            futures: list[Future[list]] = []
            for body, offset in zip(spec["bodies"], offsets, strict=True):
                due = start + offset
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                futures.append(pool.submit(one, body, due))
            results = [f.result() for f in futures]
        gc.enable()
    sender.close()
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
