"""Small readers over what the doubles and the database saw, shared by scenario tests."""

from __future__ import annotations

import sqlalchemy as sa

from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble

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
