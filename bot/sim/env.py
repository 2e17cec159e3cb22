"""The environment that points a real ``meetbot serve`` at the loopback doubles.

Shared by the scenario tests and the benchmarks, so one place knows which
variables a bot run needs and that none of the caller's own Slack, AMS or
meetbot settings leak into it.
"""

from __future__ import annotations

import os

from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble


def serve_env(
    ams: AmsDouble,
    slack: SlackDouble,
    database_url: str,
    *,
    port: int,
    bot_token: str,
    signing_secret: str,
    stream_secret: str,
    **overrides: str,
) -> dict[str, str]:
    """This process's environment minus every SLACK_/AMS_/MEETBOT_ variable, plus the
    settings of a bot wired to ``ams`` and ``slack``; ``overrides`` come last."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("SLACK_", "AMS_", "MEETBOT_")) or k in ("DATABASE_URL", "PORT"))
    }
    env.update(
        SLACK_BOT_TOKEN=bot_token,
        SLACK_SIGNING_SECRET=signing_secret,
        SLACK_API_URL=slack.api_url,
        AMS_URL=ams.url,
        AMS_JWT_SECRET=stream_secret,
        DATABASE_URL=database_url,
        PORT=str(port),
    )
    env.update(overrides)
    return env
