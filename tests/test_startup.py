"""A healthy `meetbot serve` starts and stops without a WARNING.

An operator reads a WARNING at start as "something is wrong with my set-up".
So every configuration that `meetbot doctor` calls healthy must start (and
stop) with nothing at WARNING or above, in either process, and nothing on
stderr that is not a log line (a Python warning, a traceback). JSON logs make
the level of every line certain; DEBUG makes sure no line is filtered away.
"""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

from bot.sim.ams import DEFAULT_ADMIN_EMAIL, DEFAULT_ADMIN_PASSWORD, AmsDouble
from tests.conftest import STREAM_SECRET, wait_for

WEBHOOK_SECRET = "hook-secret-0123456789abcdef"
PUBLIC_URL = "https://meetbot.example.com"
CLIENT_ID, CLIENT_SECRET = "1111.2222", "client-secret-0123456789abcdef"


@pytest.fixture
def ams() -> AmsDouble:
    """AMS as `meetbot doctor` wants it: rooms locked, the join webhook pointing at the bot."""
    settings = {
        "acceptOnlyRoomsInDataStore": True,
        "webhookAuthenticateURL": f"{PUBLIC_URL}/ams/auth/{WEBHOOK_SECRET}",
    }
    with AmsDouble(stream_secret=STREAM_SECRET, settings=settings) as double:
        yield double


def full() -> dict[str, str]:
    """Every optional feature on: rotation, management login, click-time links, webhook."""
    return {
        "MEETBOT_SECRET_KEY": Fernet.generate_key().decode(),
        "MEETBOT_SECRET_MAX_AGE": "30d",
        "AMS_ADMIN_EMAIL": DEFAULT_ADMIN_EMAIL,
        "AMS_ADMIN_PASSWORD": DEFAULT_ADMIN_PASSWORD,
        "MEETBOT_PUBLIC_URL": PUBLIC_URL,
        "MEETBOT_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }


def lines(log: str) -> list[dict]:
    out = []
    for raw in log.splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            pytest.fail(f"not a log line (a warning or traceback on stderr?): {raw!r}\n{log}")
    return out


def first_sweep_done(bot) -> bool:
    """The scheduler ran once: the start-up catch-up (reconcile, rotation check) is over."""
    return any(
        x["logger"].startswith("apscheduler") and "executed successfully" in x["msg"]
        for x in lines(bot.log())
    )


def assert_quiet(bot) -> None:
    wait_for(lambda: first_sweep_done(bot))
    assert bot.terminate() == 0, bot.log()[-3000:]
    logged = lines(bot.log())
    assert any(x["msg"].startswith("listening on") for x in logged)
    assert any(x["msg"] == "stopped" for x in logged)
    loud = [x for x in logged if x["level"] not in ("DEBUG", "INFO")]
    assert loud == [], "\n".join(json.dumps(x) for x in loud)


QUIET = {"MEETBOT_LOG_FORMAT": "json", "MEETBOT_LOG_LEVEL": "DEBUG"}


def test_single_workspace_with_every_feature(start_bot):
    assert_quiet(start_bot(**QUIET, **full()))


def test_single_workspace_on_postgresql(start_bot, postgres_url):
    assert_quiet(start_bot(postgres_url, **QUIET, **full()))


def test_plain_minimum(start_bot):
    """Only the required variables (the demo's and the README's first configuration)."""
    assert_quiet(start_bot(**QUIET))


def test_multi_workspace_oauth(start_bot, slack):
    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    # As an operator's .env has it: the bot token left empty, which counts as unset.
    bot = start_bot(
        **QUIET,
        SLACK_BOT_TOKEN="",
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET=CLIENT_SECRET,
        MEETBOT_SECRET_KEY=Fernet.generate_key().decode(),
    )
    assert_quiet(bot)


def test_slack_calls(start_bot, slack):
    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    bot = start_bot(
        **QUIET,
        **full(),
        MEETBOT_SLACK_CALLS="1",
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET=CLIENT_SECRET,
    )
    assert_quiet(bot)
