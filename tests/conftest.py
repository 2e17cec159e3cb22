"""Shared fixtures: the AMS and Slack doubles on loopback, databases, and a real bot.

Scenario tests run ``meetbot serve`` as a separate process, exactly as an
operator would, pointed at the doubles through its environment, and send it
Slack's signed requests over HTTP. They assert what AMS and Slack received.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.sim.ams import AmsDouble
from bot.sim.env import serve_env
from bot.sim.process import ServerProcess, meetbot_argv
from bot.sim.slack import SlackDouble, SlackSender

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-test-token"
STREAM_SECRET = "stream-secret-0123456789-0123456789-abcdef"
TEAM = "T0001"
# Realistic Slack user ids: the grammar only takes ids shaped like Slack's.
ALICE, BOB, CAROL, DAVE = "UALICE01", "UBOB0001", "UCAROL01", "UDAVE001"
ADMIN, SOMEBOT, GUEST = "UADMIN01", "USOMEBOT", "UGUEST01"
PG_URL = os.environ.get(
    "MEETBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with a clear message if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


# -- databases ---------------------------------------------------------------
@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'meetbot.db'}"


def _pg_admin() -> sa.Engine:
    return sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test. Fails (never skips) without a server."""
    name = f"meetbot_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as e:
        pytest.fail(f"PostgreSQL is required for this test and is not reachable at {PG_URL}: {e}")
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meetbot.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


# -- doubles -------------------------------------------------------------------
@pytest.fixture
def ams() -> Iterator[AmsDouble]:
    with AmsDouble(stream_secret=STREAM_SECRET) as double:
        yield double


@pytest.fixture
def slack() -> Iterator[SlackDouble]:
    with SlackDouble(bot_token=BOT_TOKEN, team_id=TEAM) as double:
        for uid, name in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol"), (DAVE, "dave")]:
            double.add_user(uid, name, tz="Europe/Berlin")
        double.add_user(ADMIN, "root", is_admin=True)
        double.add_user(SOMEBOT, "somebot", is_bot=True)
        double.add_user(GUEST, "guest", is_restricted=True)
        # #general: everyone above is in it (the guest, and a bot, too).
        general = [ALICE, BOB, CAROL, DAVE, ADMIN, SOMEBOT, GUEST]
        double.add_channel("C1", "general", members=general)
        yield double


# -- the bot as a process ------------------------------------------------------
class BotProcess(ServerProcess):
    """``meetbot serve`` in a child process, with its log captured to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(meetbot_argv(), env, int(env["PORT"]), log_path)

    def start(self, timeout: float = 20.0) -> BotProcess:
        super().start(timeout)
        return self

    def terminate(self, timeout: float = 15.0) -> int:
        return super().terminate(timeout)


def bot_env(ams: AmsDouble, slack: SlackDouble, database_url: str, **extra: str) -> dict[str, str]:
    """``meetbot serve`` on the doubles, logging at DEBUG (so leaks would show) with a
    short AMS timeout (so timeouts are quick to test)."""
    settings = {"AMS_TIMEOUT": "1", "MEETBOT_LOG_LEVEL": "DEBUG", **extra}
    return serve_env(
        ams,
        slack,
        database_url,
        port=free_port(),
        bot_token=BOT_TOKEN,
        signing_secret=SIGNING_SECRET,
        stream_secret=STREAM_SECRET,
        **settings,
    )


@pytest.fixture
def start_bot(
    ams: AmsDouble, slack: SlackDouble, tmp_path: Path
) -> Iterator[Callable[..., BotProcess]]:
    """Start ``meetbot serve`` processes; all are stopped after the test."""
    started: list[BotProcess] = []

    def start(database_url: str | None = None, **extra: str) -> BotProcess:
        url = database_url or f"sqlite:///{tmp_path / 'meetbot.db'}"
        bot = BotProcess(
            bot_env(ams, slack, url, **extra), tmp_path / f"bot{len(started)}.log"
        ).start()
        started.append(bot)
        return bot

    yield start
    for bot in started:
        bot.terminate()


@pytest.fixture
def bot(start_bot: Callable[..., BotProcess]) -> BotProcess:
    return start_bot()


def sender_for(bot: BotProcess, slack: SlackDouble) -> SlackSender:
    """A Slack that signs its requests and sends them to ``bot``."""
    return SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=TEAM, double=slack)


@pytest.fixture
def sender(bot: BotProcess, slack: SlackDouble) -> SlackSender:
    return sender_for(bot, slack)
