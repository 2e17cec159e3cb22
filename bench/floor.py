"""The ack-latency floor: a bare Bolt app on waitress whose only listener acks.

Same server and settings as ``meetbot serve`` (waitress, 16 threads, the same
body limit; Bolt with ``process_before_response=True``, signature checking on,
no token verification), so the difference between the two is what meetbot's
own code costs on the ack path.

Run as ``python -m bench.floor PORT`` with the bot's environment
(``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET``, ``SLACK_API_URL``: Bolt calls
``auth.test`` once, as the bot does); answers ``GET /healthz`` for start-up.
It imports nothing but Bolt, slack_sdk and waitress, so that its resident
memory is what a bare Bolt app on waitress needs (the footprint's floor).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

import waitress
from slack_bolt import Ack, App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient

THREADS = 16  # bot.server.serve's waitress threads
MAX_BODY_BYTES = 1024 * 1024  # bot.web.app.MAX_BODY_BYTES


def build() -> Callable[..., Iterable[bytes]]:
    # Like the bot's: pointed at the Slack double, where Bolt's one auth.test goes.
    token = os.environ["SLACK_BOT_TOKEN"]
    client = WebClient(token=token, base_url=os.environ["SLACK_API_URL"], timeout=10)
    app = App(
        token=token,
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        client=client,
        process_before_response=True,
        token_verification_enabled=False,
    )

    @app.command("/meet")
    def meet(ack: Ack) -> None:
        ack()

    handler = SlackRequestHandler(app)

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        return handler(environ, start_response)

    return application


def main(argv: list[str]) -> None:
    port = int(argv[1])
    server = waitress.create_server(
        build(),
        host="127.0.0.1",
        port=port,
        threads=THREADS,
        max_request_body_size=MAX_BODY_BYTES,
        ident="floor",
    )

    def stop(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    finally:
        server.close()


if __name__ == "__main__":
    main(sys.argv)
