"""Small readers over what the doubles and the database saw, shared by scenario tests."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble
from bot.store import Outbox, OutboxState

CREATE = r"^/Conference/rest/v2/broadcasts/create$"

#: What a browser sends when a person clicks a link (Chrome's navigation headers).
BROWSER = {
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36"
    ),
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Site": "none",
    "Sec-Fetch-User": "?1",
}


def pending_row(channel: str, kind: str = "dm_link", **kw: Any) -> Outbox:
    """An outbox row owed to ``channel`` and not yet written, as ``bot.rooms`` makes them."""
    return Outbox(
        team_id="T0001",
        kind=kind,
        channel=channel,
        payload="{}",
        state=OutboxState.PENDING,
        attempts=0,
        not_before=0,
        created_at=int(time.time()),
        **kw,
    )


def links_in(message: dict) -> list[str]:
    """Join URLs in one message's URL buttons."""
    out = []
    for block in message.get("blocks") or []:
        for el in block.get("elements") or []:
            if el.get("type") == "button" and el.get("url"):
                out.append(el["url"])
    return out


def dm_links(slack: SlackDouble, user_id: str) -> list[str]:
    """Every join URL currently in the bot's DMs to ``user_id``."""
    return [link for msg in slack.dms_to(user_id) for link in links_in(msg)]


def token_of(link: str) -> str:
    return link.split("token=", 1)[1].split("&", 1)[0]


def rooms_on_ams(ams: AmsDouble) -> list[dict]:
    """Rooms (not participant tracks) that exist on the AMS double."""
    return [b for b in ams.broadcasts.values() if not b.get("mainTrackStreamId")]


def creates(ams: AmsDouble) -> int:
    return ams.count("POST", CREATE)


def db_rows(url: str, table: str) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.text(f"SELECT * FROM {table}"))]  # noqa: S608
    finally:
        engine.dispose()


def db_dump(url: str) -> str:
    """Every value of every meetbot table, as one string to grep for secrets."""
    return "\n".join(
        repr(row)
        for table in ("rooms", "grants", "audit", "outbox", "schedules", "occurrences", "jobs")
        for row in db_rows(url, table)
    )


def db_exec(url: str, sql: str, **params: object) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(sa.text(sql), params)
    finally:
        engine.dispose()


def response_texts(slack: SlackDouble, key: str) -> list[str]:
    return [r.get("text", "") for r in slack.responses.get(key, [])]


def owed(url: str) -> list[dict]:
    """Outbox rows not done: pending (due now), leased (being sent) or waiting
    (``not_before`` later: a paced post, a retry after a 429 or a 5xx)."""
    return [r for r in db_rows(url, "outbox") if r["state"] == "pending"]


def settled(bot: Any, timeout: float = 30.0) -> None:
    """Wait until the bot owes Slack nothing: no outbox row pending, leased or waiting.

    ``bot`` is a ``BotProcess`` or a database URL (replicas share one). Call it
    after the request's own outcome is visible (its reply, its row): work that
    has not reached the outbox yet is not seen here. Then "nothing else
    happened" is a count, not a guess about how long the bot needs.
    """
    from tests.conftest import wait_for

    url = bot if isinstance(bot, str) else bot.env["DATABASE_URL"]
    try:
        wait_for(lambda: not owed(url), timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"the outbox did not settle within {timeout}s: {owed(url)}") from None


_TICK_DONE = re.compile(
    r'Job "Scheduler\.tick [^\n]*" (?:executed successfully|raised an exception)'
)


def sweeps(bot: Any) -> int:
    """How many scheduler sweeps ``bot`` has finished (APScheduler logs each at INFO)."""
    return len(_TICK_DONE.findall(bot.log()))


def sweep_more(*bots: Any, n: int = 2, timeout: float = 30.0) -> None:
    """Wait until every one of ``bots`` has finished ``n`` more sweeps than it had."""
    from tests.conftest import wait_for

    target = {id(b): sweeps(b) + n for b in bots}
    wait_for(lambda: all(sweeps(b) >= target[id(b)] for b in bots), timeout=timeout)


@contextmanager
def write_transactions(store: Any) -> Iterator[list[bool]]:
    """Count the write transactions ``store`` begins inside the block (one entry each)."""
    writes: list[bool] = []

    def on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("meetbot_write"):
            writes.append(True)

    sa.event.listen(store.engine, "begin", on_begin)
    try:
        yield writes
    finally:
        sa.event.remove(store.engine, "begin", on_begin)
