"""Every message and view the bot builds, against Block Kit's models and Slack's limits.

Slack refuses a message or view that breaks a limit with ``invalid_blocks``:
the DM never arrives, the Home stays stale. So each builder is run with
generated topics and names (huge, unicode, mrkdwn- and markup-special) and
its output is parsed back with slack_sdk's models (``Block.parse``,
``validate_json``, ``to_dict``) and checked against the limits in
``shared/docs/slack.md``: section text ≤ 3,000, button text ≤ 75,
``action_id``/``block_id`` ≤ 255, ≤ 50 blocks per message, ≤ 100 per modal or
Home, and a top-level ``text`` fallback on every message.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot.config import Settings
from bot.home import view as home
from bot.schedules.rules import parse_when
from bot.schedules.service import describe
from bot.sim.slack import _check_blocks
from bot.slack import messages
from bot.store import Schedule
from handlers import grammar, views
from handlers.topics import clean_topic, topic_from_message

MESSAGE_BLOCKS = 50
SURFACE_BLOCKS = 100
MAX_TEXT = 40_000  # chat.postMessage `text`
TOPIC_MAX = 200  # rooms.topic column; Rooms._create cuts to it
NAME_MAX = 120  # schedules.name column

SPECIALS = [
    "<!channel>",
    "<!here|here>",
    "<!subteam^S123|@devs>",
    "<@U12345678>",
    "<#C123|general>",
    "<https://evil.example/?token=x|click>",
    "&amp;",
    "&lt;",
    "&",
    "<",
    ">",
    "*",
    "_",
    "~",
    "`",
    "```",
    ":tada:",
    "\n",
    "\u202e",
    "\u200f",
    "\x00",
    "👩‍👩‍👧",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "漢字",
    "é",
]
pieces = st.one_of(st.text(max_size=40), st.sampled_from(SPECIALS))
hostile = st.lists(pieces, max_size=30).map("".join)
topics = st.one_of(
    hostile.map(lambda s: s[:TOPIC_MAX]),
    st.sampled_from(["&" * TOPIC_MAX, "<" * TOPIC_MAX, "x" * TOPIC_MAX, ""]),
)
names = hostile.map(lambda s: s[:NAME_MAX] or "n")
user_ids = st.from_regex(r"[UW][A-Z0-9]{8,10}", fullmatch=True)
room_ids = st.from_regex(r"[A-Za-z0-9_-]{22}", fullmatch=True)
times = st.integers(min_value=0, max_value=2**33)
CONFIG = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the checks ------------------------------------------------------------------------------


def _elements(block: dict[str, Any]) -> list[dict[str, Any]]:
    out = list(block.get("elements") or [])
    for key in ("accessory", "element"):
        if isinstance(block.get(key), dict):
            out.append(block[key])
    return [el for el in out if isinstance(el, dict)]


def check_blocks(blocks: list[dict[str, Any]], limit: int) -> None:
    """Parse each block back with slack_sdk and check Slack's limits on it."""
    assert isinstance(blocks, list) and 0 < len(blocks) <= limit
    block_ids: set[str] = set()
    for raw in blocks:
        parsed = Block.parse(raw)
        assert parsed is not None, f"slack_sdk does not know block type {raw.get('type')}"
        parsed.validate_json()
        assert parsed.to_dict() == raw, "a field was lost or changed in the round trip"
        block_id = raw.get("block_id")
        if block_id is not None:
            assert 0 < len(block_id) <= 255
            assert block_id not in block_ids, f"duplicate block_id {block_id}"
            block_ids.add(block_id)
        if raw["type"] == "section":
            assert "text" in raw or raw.get("fields")
            if "text" in raw:
                assert 0 < len(raw["text"]["text"]) <= 3000
        if raw["type"] == "context":
            assert 0 < len(raw["elements"]) <= 10
            assert all(len(el.get("text", "")) <= 3000 for el in raw["elements"])
        if raw["type"] == "header":
            assert 0 < len(raw["text"]["text"]) <= 150
        action_ids: set[str] = set()
        for el in _elements(raw):
            action_id = el.get("action_id")
            if action_id is not None:
                assert 0 < len(action_id) <= 255
                assert action_id not in action_ids, f"duplicate action_id {action_id}"
                action_ids.add(action_id)
            if el.get("type") == "button":
                assert 0 < len(el["text"]["text"]) <= 75
                assert len(el.get("value", "")) <= 2000
                assert len(el.get("url", "")) <= 3000
    # A second opinion: the Slack double's own invalid_blocks check.
    code, problems = _check_blocks(blocks, limit)
    assert code is None, problems


def check_message(text: str, blocks: list[dict[str, Any]]) -> None:
    """A chat.postMessage payload: fallback text, ≤ 50 valid blocks."""
    assert isinstance(text, str) and text.strip(), "every message needs a text fallback"
    assert len(text) <= MAX_TEXT
    check_blocks(blocks, MESSAGE_BLOCKS)


def check_view(view: dict[str, Any], kind: str) -> None:
    """A views.open / views.publish payload: ≤ 100 valid blocks, the view itself valid."""
    assert view["type"] == kind
    parsed = View(**view)
    parsed.validate_json()
    assert parsed.to_dict() == view
    check_blocks(view["blocks"], SURFACE_BLOCKS)
    if kind == "modal":
        assert 0 < len(view["title"]["text"]) <= 24
        assert len(view.get("private_metadata", "")) <= 3000
        assert len(view.get("callback_id", "")) <= 255


PINGS = re.compile(r"<!(?:channel|here|everyone|subteam)")


def inert(text: str) -> None:
    """User text must never turn into a ping or a link in what the bot posts."""
    assert not PINGS.search(text), text
    assert "evil.example" not in text or "<https://evil" not in text, text


# -- messages --------------------------------------------------------------------------------


@CONFIG
@given(topic=topics, room_id=room_ids, owner=user_ids, end=times)
def test_room_card_active_and_ended(topic: str, room_id: str, owner: str, end: int) -> None:
    for ended in (False, True):
        text, blocks = messages.room_card(
            room_id=room_id, topic=topic, owner_id=owner, expires_at=end, ended=ended
        )
        check_message(text, blocks)
        inert(json.dumps(blocks))
        inert(text)


@CONFIG
@given(topic=topics, room_id=room_ids, owner=user_ids, end=times, is_owner=st.booleans())
def test_invite_dm(topic: str, room_id: str, owner: str, end: int, is_owner: bool) -> None:
    link = f"https://ams.example.com:5443/Conference/{room_id}?token=" + "a" * 400
    text, blocks = messages.invite_dm(
        room_id=room_id, topic=topic, owner_id=owner, expires_at=end, link=link, is_owner=is_owner
    )
    check_message(text, blocks)
    assert link not in text, "the fallback surfaces in notifications: never a link"
    assert ("Extend 30 min" in json.dumps(blocks)) is is_owner
    inert(json.dumps(blocks))
    inert(text)


@CONFIG
@given(topic=topics, room_id=room_ids, reason=st.one_of(st.none(), hostile), owner=user_ids)
def test_ended_and_kicked_dms(topic: str, room_id: str, reason: str | None, owner: str) -> None:
    text, blocks = messages.ended_dm(room_id=room_id, topic=topic, reason=reason)
    check_message(text, blocks)
    inert(json.dumps(blocks))
    inert(text)
    text, blocks = messages.kicked_dm(room_id=room_id, topic=topic, owner_id=owner)
    check_message(text, blocks)
    inert(json.dumps(blocks))
    inert(text)


@CONFIG
@given(
    rooms=st.lists(
        st.builds(
            SimpleNamespace,
            id=room_ids,
            topic=topics,
            expires_at=times,
            channel_id=st.sampled_from(["C1", "GPRIV", "DUALICE01"]),
        ),
        max_size=25,
    )
)
def test_list_and_help_texts(rooms: list[SimpleNamespace]) -> None:
    listing = messages.room_list(rooms)
    assert listing.strip() and len(listing) <= MAX_TEXT
    inert(listing)
    assert grammar.HELP_TEXT.strip() and len(grammar.HELP_TEXT) <= 3000


# -- the Home and the modals -----------------------------------------------------------------


def _room(room_id: str, topic: str, owner: str, end: int, state: str = "active") -> Any:
    return SimpleNamespace(
        id=room_id,
        topic=topic,
        owner_id=owner,
        channel_id="C1",
        state=state,
        created_at=max(0, end - 1800),
        expires_at=end,
    )


def _schedule_line(i: int, name: str, creator: str, invitees: list[str]) -> home.ScheduleLine:
    rec = parse_when(
        "every weekday at 09:30", now_utc=datetime(2026, 1, 5, tzinfo=UTC), tz="Europe/Berlin"
    )
    row = Schedule(
        id=i,
        team_id="T1",
        channel_id="C1",
        creator_id=creator,
        name=name,
        kind=rec.kind,
        spec=rec.spec,
        tz="Europe/Berlin",
        duration=900,
        invitees=json.dumps(invitees),
        next_run_at=1_800_000_000,
        active=True,
        created_at=0,
        cancelled_at=None,
    )
    return home.ScheduleLine(id=i, name=name, line=describe(row))


@CONFIG
@given(
    own=st.integers(0, 60),
    invited=st.integers(0, 300),
    scheduled=st.integers(0, 120),
    topic=topics,
    name=names,
    owner=user_ids,
    # Notices are the bot's own mrkdwn (mentions, dates): huge, never user markup.
    notice=st.one_of(
        st.none(), st.text(min_size=1, max_size=4000).map(lambda s: s.replace("<", ""))
    ),
    people=st.lists(user_ids, max_size=50),
)
def test_home_view_stays_within_100_blocks(
    own: int,
    invited: int,
    scheduled: int,
    topic: str,
    name: str,
    owner: str,
    notice: str | None,
    people: list[str],
) -> None:
    own_rooms = [
        _room(
            f"own{i:019d}", topic, owner, 1_800_000_000 + i, "creating" if i % 7 == 6 else "active"
        )
        for i in range(own)
    ]
    invitations = [_room(f"inv{i:019d}", topic, "UOTHER001", 1_800_000_000) for i in range(invited)]
    lines = [_schedule_line(i + 1, name, owner, people) for i in range(min(scheduled, 3))]
    lines += [
        home.ScheduleLine(id=i + 1, name=name, line=lines[0].line) for i in range(3, scheduled)
    ]
    view = home.home_view(
        own=own_rooms, invited=invitations, schedules=lines, notice=notice, max_ttl=86400
    )
    check_view(view, "home")
    ids = [b.get("block_id", "") for b in view["blocks"]]
    shown = (
        sum(i.startswith("home:own:") for i in ids),
        sum(i.startswith("home:inv:") for i in ids),
        sum(i.startswith("home:sch:") for i in ids),
    )
    rendered = json.dumps(view, ensure_ascii=False)
    more = [int(n) for n in re.findall(r"…and (\d+) more", rendered)]
    # What is not shown is counted in an "…and N more" line, section by section.
    assert sum(shown) + sum(more) == own + invited + scheduled
    assert len(more) == sum(n < total for n, total in zip(shown, (own, invited, scheduled)))
    if own:
        assert shown[0] >= 1, "invitations must not push the person's own rooms off"
    inert(json.dumps(view))


def test_home_view_shows_the_right_buttons() -> None:
    room = _room("R" * 22, "standup", "UALICE001", 1_800_000_000)
    view = home.home_view(own=[room], invited=[room], schedules=[], max_ttl=3600)
    own_actions = next(
        b for b in view["blocks"] if b.get("block_id") == f"home:own-actions:{room.id}"
    )
    assert [el["action_id"] for el in own_actions["elements"]] == [
        home.ACTION_GET_LINK,
        home.ACTION_END,
        home.ACTION_EXTEND,
    ]
    extend = own_actions["elements"][2]["value"]
    assert home.parse_extend_value(extend) == (room.id, room.expires_at)
    assert home.parse_extend_value(room.id) == (room.id, None)
    # No "Extend" when 30 more minutes would pass the longest a room may last.
    view = home.home_view(own=[room], invited=[], schedules=[], max_ttl=1800)
    assert home.ACTION_EXTEND not in json.dumps(view)


@CONFIG
@given(
    room_ttl=st.integers(60, 7 * 86400),
    max_ttl=st.integers(60, 7 * 86400),
    channel=st.one_of(st.none(), st.sampled_from(["C1", "G1", "D1", "UALICE01"])),
)
def test_modals(room_ttl: int, max_ttl: int, channel: str | None) -> None:
    durations = home.duration_choices(room_ttl, max_ttl)
    assert durations and max(durations) <= max_ttl
    check_view(home.new_room_modal(durations=durations, default=min(room_ttl, max_ttl)), "modal")
    s = Settings(ams_url="http://ams", room_ttl=min(room_ttl, max_ttl), max_room_ttl=max_ttl)
    check_view(views.schedule_modal(channel_id=channel, settings=s), "modal")


# -- topics from people's text ---------------------------------------------------------------


@CONFIG
@given(text=hostile, limit=st.integers(1, 200))
def test_topics_from_text_are_plain_single_line_and_bounded(text: str, limit: int) -> None:
    for topic in (clean_topic(text, limit), topic_from_message(text, min(limit, 80))):
        assert len(topic) <= limit
        assert "<" not in topic and ">" not in topic
        assert "\n" not in topic and "\u202e" not in topic and "\x00" not in topic
        assert topic == topic.strip()
        topic.encode("utf-8")  # no lone surrogates
        text_, blocks = messages.room_card(
            room_id="R" * 22, topic=topic, owner_id="UALICE001", expires_at=0
        )
        check_message(text_, blocks)


def test_topic_from_message_reads_slack_markup() -> None:
    assert topic_from_message("<!channel> lunch &amp; learn <@U1234567|bob>?") == (
        "lunch & learn @bob?"
    )
    assert topic_from_message("see <https://x.example/a|the doc> &lt;now&gt;") == (
        "see the doc ‹now›"
    )
    assert topic_from_message("<!subteam^S1|@devs> <#C1|ops> <!date^1^{date}|Monday>") == (
        "#ops Monday"
    )
    long = topic_from_message("word " * 40)
    assert len(long) <= 80 and long.endswith("…") and not long.endswith(" …")
