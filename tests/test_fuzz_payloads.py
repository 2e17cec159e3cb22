"""Hypothesis fuzzing of every Slack request meetbot accepts, through the real stack.

Each example is one HTTP request handed to ``wsgi_app`` in-process (no socket,
for speed): ``Services`` on a temporary SQLite, the Bolt app with the real
listeners, the AMS and Slack doubles on loopback. Requests are signed exactly
as Slack signs them unless the test is about signatures.

The property, for every request:

* the bot answers below 500 (2xx with a message, or 4xx) and never raises;
* no work it handed to ``Services.submit`` failed;
* a request that must not change anything (malformed, refused, read-only,
  unsigned, oversize) changes nothing: no AMS write, no chat.postMessage or
  chat.update, no new row in any table.

"Must not change anything" is decided by an oracle in this file, written from
the handlers' contracts (who may do what), never by asking the bot. Requests
the oracle cannot rule out ("may act": a valid click, a valid /meet) go to a
second, identical stack, where only the first two points are checked, so a
valid request's DMs can never be mistaken for a malformed one's.

Both stacks hold the same room (``ROOM``, owned by ALICE, BOB invited), so a
malformed click or command that slipped through would have something to act on.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.signature import SignatureVerifier

from bot.config import Settings
from bot.rooms.service import OpenRequest
from bot.services import Services
from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble
from bot.web.app import MAX_BODY_BYTES
from handlers import grammar
from tests.conftest import (
    ALICE,
    BOB,
    BOT_TOKEN,
    CAROL,
    GUEST,
    SIGNING_SECRET,
    SOMEBOT,
    STREAM_SECRET,
    TEAM,
    wait_for,
)

ROOM = "fuzzroom-0123456789abcdef"
UNKNOWN = "UNOBODY01"
GET_LINK, EXTEND, JOIN = "meet_get_link", "meet_extend", "meet_join"
SCHEDULE_MODAL, SCHEDULE_SHORTCUT = "meet_schedule_modal", "meet_schedule_shortcut"
NEW_ROOM_MODAL, ABOUT_SHORTCUT = "home_new_room_modal", "meet_about_message"
MEMBERS = (ALICE, BOB, CAROL)
PEOPLE = (ALICE, BOB, CAROL, GUEST, SOMEBOT)
TABLES = ("rooms", "grants", "outbox", "audit", "schedules", "occurrences")
# Replies to the requester (response_url, ephemerals, their Home) are answers, not effects.
SLACK_WRITES = ("chat.postMessage", "chat.update", "chat.delete", "calls.add")
VERIFIER = SignatureVerifier(SIGNING_SECRET)
MAX_TTL = Settings(ams_url="http://ams").max_room_ttl
# Replies go nowhere, at once (port 9 refuses): no DNS, no network, no waiting.
RESPONSE_URL = "http://127.0.0.1:9/response/fuzz"
ANSWERS = (200, 400, 404, 413)  # what a request may get: the property allows nothing else


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- the count in the terminal summary ------------------------------------------------------
CASES: Counter[str] = Counter()


class _FuzzReport:
    """Prints how many requests the fuzz tests sent, at the end of the run."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not CASES:
            return
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(CASES.items()))
        terminalreporter.write_sep("-", "Slack payload fuzzing")
        terminalreporter.write_line(f"{sum(CASES.values())} generated requests ({kinds})")


@pytest.fixture(scope="module", autouse=True)
def _report_case_counts(request: pytest.FixtureRequest) -> None:
    plugins = request.config.pluginmanager
    if not plugins.has_plugin("meetbot-fuzz-report"):
        plugins.register(_FuzzReport(), "meetbot-fuzz-report")


# -- the stack ---------------------------------------------------------------------------------
def sign(timestamp: str, body: bytes) -> str:
    """Slack's v0 signature (bytes that are not UTF-8 are signed as bytes, as Slack would)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        mac = hmac.new(SIGNING_SECRET.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
        return "v0=" + mac.hexdigest()
    return VERIFIER.generate_signature(timestamp=timestamp, body=body)


class Stack:
    """meetbot in-process: Services, Bolt and wsgi_app over the doubles and a temp SQLite."""

    def __init__(self, directory: Path) -> None:
        self.ams = AmsDouble(stream_secret=STREAM_SECRET).start()
        self.slack = SlackDouble(bot_token=BOT_TOKEN, team_id=TEAM).start()
        for uid, name in ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")):
            self.slack.add_user(uid, name)
        self.slack.add_user(GUEST, "guest", is_restricted=True)
        self.slack.add_user(SOMEBOT, "somebot", is_bot=True)
        self.db_url = f"sqlite:///{directory / 'meetbot.db'}"
        self.services = Services(
            Settings(
                ams_url=self.ams.url,
                slack_bot_token=BOT_TOKEN,
                slack_signing_secret=SIGNING_SECRET,
                slack_api_url=self.slack.api_url,
                ams_jwt_secret=STREAM_SECRET,
                database_url=self.db_url,
                ams_timeout=1.0,
            )
        )
        self.services.store.migrate()
        self.app = self.services.wsgi_app(self.services.bolt_app())
        self.futures: list[Future[Any]] = []
        submit = self.services.submit

        def tracked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
            future = submit(fn, *args, **kwargs)
            self.futures.append(future)
            return future

        self.services.submit = tracked  # type: ignore[method-assign]
        self.services.outbox.start()
        room = self.services.rooms.open_room(
            OpenRequest(
                team_id=TEAM,
                user_id=ALICE,
                channel_id="C1",
                topic="fuzz",
                invitees=(BOB,),
                room_id=ROOM,
            )
        )
        assert room is not None and room.id == ROOM
        wait_for(lambda: self.slack.dms_to(ALICE) and self.slack.dms_to(BOB), timeout=10)
        wait_for(lambda: self.services.store.pending_outbox_count() == 0, timeout=10)
        self.engine = sa.create_engine(self.db_url)

    def close(self) -> None:
        self.engine.dispose()
        self.services.stop()
        self.ams.stop()
        self.slack.stop()

    # -- one request ---------------------------------------------------------------------
    def call(
        self,
        body: bytes,
        content_type: str = "application/x-www-form-urlencoded",
        *,
        signed: bool = True,
        headers: dict[str, str] | None = None,
        content_length: str | None = None,
        stream: Any = None,
        path: str = "/slack/events",
        method: str = "POST",
    ) -> tuple[int, bytes]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
            "wsgi.input": stream if stream is not None else io.BytesIO(body),
        }
        if signed:
            ts = str(int(time.time()))
            environ["HTTP_X_SLACK_REQUEST_TIMESTAMP"] = ts
            environ["HTTP_X_SLACK_SIGNATURE"] = sign(ts, body)
        environ.update(headers or {})
        setup_testing_defaults(environ)
        seen: list[str] = []

        def start_response(status: str, _headers: list[Any], _exc: Any = None) -> None:
            seen.append(status)

        data = b"".join(self.app(environ, start_response))
        assert len(seen) == 1, seen
        return int(seen[0].split()[0]), data

    # -- what happened -----------------------------------------------------------------------
    def settle(self, timeout: float = 10.0) -> None:
        """Wait for the work handed to ``Services.submit``; fail if any of it raised."""
        pending, self.futures = self.futures, []
        done, not_done = wait(pending, timeout=timeout)
        assert not not_done, f"{len(not_done)} background tasks still running after {timeout}s"
        for future in done:
            error = future.exception()
            assert error is None, f"background work failed: {error!r}"

    def effects(self) -> dict[str, int]:
        """Counts of everything a request could change."""
        with self.engine.connect() as c:
            counts = {
                t: c.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in TABLES
            }
        # What stays on AMS, not every write: a /meet is judged while AMS creates its
        # room (the link comes sooner), so a refused one may make a room and delete
        # it again before it answers (Rooms._withdraw).
        counts["ams_rooms"] = len(self.ams.broadcasts)
        counts["ams_writes"] = sum(
            1 for r in self.ams.requests if r.method != "GET" and not _withdrawn(r, self.ams)
        )
        for method in SLACK_WRITES:
            counts[method] = len(self.slack.calls_to(method))
        return counts


def _withdrawn(request: Any, ams: AmsDouble) -> bool:
    """A room create, or its delete, for a room that is not on AMS (any more)."""
    path = request.path
    if request.method == "POST" and path.endswith("/broadcasts/create"):
        room = request.json.get("streamId") if isinstance(request.json, dict) else None
        return isinstance(room, str) and room not in ams.broadcasts
    if request.method == "DELETE" and "/broadcasts/" in path:
        return path.rsplit("/", 1)[-1] not in ams.broadcasts
    return False


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """(quiet, busy): ``quiet`` only ever gets requests that must change nothing."""
    quiet = Stack(tmp_path_factory.mktemp("quiet"))
    busy = Stack(tmp_path_factory.mktemp("busy"))
    yield quiet, busy
    quiet.close()
    busy.close()


def send(
    stacks: tuple[Stack, Stack], kind: str, may_act: bool, body: bytes, content_type: str, **kw: Any
) -> tuple[int, bytes]:
    """Send one signed request and check the property; returns (status, body)."""
    CASES[kind] += 1
    stack = stacks[1] if may_act else stacks[0]
    before = stack.effects() if not may_act else None
    status, data = stack.call(body, content_type, **kw)
    assert status < 500, (status, data[:300])
    assert (status == 413) == (len(body) > MAX_BODY_BYTES), status  # percent-encoding grows it
    stack.settle()
    if before is not None:
        after = stack.effects()
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not changed, f"a request that must change nothing changed {changed}"
    return status, data


def form(fields: list[tuple[str, str]] | dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def interactive(payload: Any) -> bytes:
    return form({"payload": json.dumps(payload)})


# -- strategies: strings -------------------------------------------------------------------------
NASTY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\x1b[31mred",
        "\r\n",
        "\u202ebidi",
        "\ufeff",
        "☕ 日本語 ünïcødé",
        "🙂" * 40,
        "<!here>",
        "<!channel>",
        "<@U>",
        "&amp;&lt;&gt;",
        "%00%ff",
        "payload=",
        "{",
        '"',
        "\\",
        "v0=",
        ROOM,
        ROOM + "x",
        "../../etc/passwd",
        "http://127.0.0.1:9/x?token=eyJhbGciOiJIUzI1NiJ9.e30.sig",
    ]
)
HUGE = st.builds(
    lambda chunk, n: (chunk * (n // max(1, len(chunk)) + 1))[:n],
    st.text(min_size=1, max_size=8),
    st.integers(4_000, 200_000),
)
SHORT = st.text(max_size=40)
STRINGS = st.one_of(SHORT, NASTY, SHORT, NASTY, HUGE)  # huge ones a fifth of the time
WRONG_TYPES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return out
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with up to four mutations anywhere: a key deleted, a value of the wrong
    type (number, list, object, null...), or a string replaced by a nasty or huge one."""
    payload = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 4))):
        paths = _paths(payload)
        if not paths:
            break
        *parent_path, key = draw(st.sampled_from(paths))
        parent: Any = payload
        for step in parent_path:
            parent = parent[step]
        op = draw(st.sampled_from(["delete", "wrong_type", "string"]))
        if op == "delete":
            del parent[key]
        elif op == "wrong_type":
            parent[key] = draw(WRONG_TYPES)
        else:
            parent[key] = draw(STRINGS)
    return payload


# -- strategies: /meet -----------------------------------------------------------------------------
MENTION = st.sampled_from([*PEOPLE, UNKNOWN, "W0123ABCD"]).flatmap(
    lambda uid: st.sampled_from([f"<@{uid}>", f"<@{uid}|{uid.lower()}>"])
)
TOKENS = st.one_of(
    st.sampled_from(
        [
            "help",
            "list",
            "end",
            "extend",
            "kick",
            "schedule",
            "schedules",
            "unschedule",
            "for",
            "30m",
            "1h30m",
            "0",
            "-5m",
            "99d",
            "45mins",
            "banana",
            "and",
            "at",
            "every",
            "weekday",
            "mon,wed",
            "09:30",
            "2026-12-01",
            "cron",
            '"30 9 * * 1-5"',
            '"quoted topic"',
            "“curly”",
            "?",
            "--help",
            "@alice",
            "<#C1|general>",
            "<!subteam^S1|team>",
            "<https://example.com|link>",
            ROOM,
            "not/a/room",
        ]
    ),
    MENTION,
    NASTY,
    st.text(max_size=12),
)
MEET_TEXT = st.one_of(
    st.lists(TOKENS, max_size=14).map(" ".join),
    st.integers(45, 60).map(
        lambda n: "crowd " + " ".join(f"<@U{i:08d}>" for i in range(n)) + " for 30m"
    ),
    st.text(max_size=300),
    HUGE,
)


def meet_may_act(text: str, user: str) -> bool:
    """Whether ``/meet <text>`` from ``user`` may change anything (the oracle)."""
    try:
        cmd = grammar.parse_meet(text, requester=user, max_ttl=MAX_TTL)
    except grammar.UsageError:
        return False
    match cmd:
        case grammar.Help() | grammar.ListRooms() | grammar.Schedules() | grammar.ScheduleModal():
            return False
        case grammar.Open(invitees=invitees):
            # Only members may open; everyone invited must be a person Slack knows.
            return user in MEMBERS and all(u in (*MEMBERS, GUEST) for u in invitees)
        case grammar.End(room_id=room) | grammar.Extend(room_id=room) | grammar.Kick(room_id=room):
            return room == ROOM and user == ALICE  # the one room there is, by its owner
        case _:
            return True


COMMAND_FIELDS = ("team_id", "channel_id", "user_id", "command", "text", "response_url")


@st.composite
def slash_commands(draw: st.DrawFn) -> tuple[list[tuple[str, str]], bool]:
    """Form fields of a slash command, some missing, empty, repeated or odd; and the oracle."""
    user = draw(st.sampled_from([*PEOPLE, UNKNOWN]))
    fields = {
        "token": "verification-token",
        "team_id": TEAM,
        "team_domain": "meetbot-test",
        "channel_id": draw(st.sampled_from(["C1", "D" + user, "CNOTTHERE", ""])),
        "channel_name": "general",
        "user_id": user,
        "user_name": user.lower(),
        "command": "/meet",
        "text": draw(MEET_TEXT),
        "api_app_id": "A0001",
        "is_enterprise_install": "false",
        "response_url": RESPONSE_URL,
        "trigger_id": "1.2.3",
    }
    for name in draw(st.lists(st.sampled_from(COMMAND_FIELDS), max_size=2, unique=True)):
        action = draw(st.sampled_from(["drop", "empty", "nasty"]))
        if action == "drop":
            del fields[name]
        else:
            fields[name] = "" if action == "empty" else draw(NASTY)
    items = list(fields.items())
    if draw(st.booleans()):
        items.append((draw(st.sampled_from(COMMAND_FIELDS)), draw(STRINGS)))  # a repeated field
    seen = dict(items)  # what Bolt and the handler see: the last value of a repeated field
    may_act = (
        seen.get("command") == "/meet"
        and bool(seen.get("team_id"))
        and bool(seen.get("user_id"))
        and meet_may_act(seen.get("text") or "", seen["user_id"])
    )
    return items, may_act


# -- strategies: interactivity and events -------------------------------------------------------
def block_actions_base(action_id: str, value: str, user: str) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0001",
        "token": "verification-token",
        "container": {"type": "message", "message_ts": "1.000001", "channel_id": "C1"},
        "trigger_id": "1.2.3",
        "team": {"id": TEAM, "domain": "meetbot-test"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": "C1", "name": "general"},
        "message": {"type": "message", "ts": "1.000001", "text": ""},
        "state": {"values": {}},
        "response_url": RESPONSE_URL,
        "actions": [
            {
                "action_id": action_id,
                "block_id": "b1",
                "text": {"type": "plain_text", "text": "Button"},
                "type": "button",
                "value": value,
                "action_ts": "1.000002",
            }
        ],
    }


def _text_at(node: Any, *keys: Any) -> str | None:
    for key in keys:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            return None
    return node if isinstance(node, str) else None


def action_may_act(p: Any) -> bool:
    """Whether a block_actions payload may change anything (the oracle)."""
    if not isinstance(p, dict) or p.get("type") != "block_actions":
        return False
    actions = p.get("actions")
    if not (isinstance(actions, list) and actions and isinstance(actions[0], dict)):
        return False
    if len(actions) > 1:
        return True  # which listener runs is Bolt's business: no claim
    user = _text_at(p, "user", "id")
    team = _text_at(p, "team", "id") or _text_at(p, "user", "team_id")
    if not user or team != TEAM:
        return False  # nobody to act for
    kind = ROOM_BUTTONS.get(_text_at(actions[0], "action_id") or "")
    value = _text_at(actions[0], "value") or ""
    if kind is None or ROOM not in value:
        return False  # a modal or an ack at most, a schedule that does not exist, no room
    if kind == "link":
        return user != GUEST  # a guest who was not invited is refused
    return user == ALICE  # only the owner may extend or end (nobody here is an admin)


#: The buttons that act on a room, and who may press them; every other one opens a
#: modal at most (join, new room, schedule) or names a schedule (none exists where
#: the oracle sends "must change nothing").
ROOM_BUTTONS = {
    GET_LINK: "link",
    "home_get_link": "link",
    EXTEND: "owner",
    "home_extend": "owner",
    "home_end": "owner",
}
BUTTONS = (*ROOM_BUTTONS, JOIN, "home_new_room", "home_schedule", "home_cancel_schedule", "x")


@st.composite
def block_actions(draw: st.DrawFn) -> tuple[Any, bool]:
    base = block_actions_base(
        draw(st.sampled_from(BUTTONS)),
        draw(st.sampled_from([ROOM, ROOM, f"{ROOM}:{2**31}", "nosuchroom", "", "1"])),
        draw(st.sampled_from(PEOPLE)),
    )
    payload = draw(mutated(base))
    return payload, action_may_act(payload)


def schedule_values(draw: st.DrawFn) -> dict[str, Any]:
    def el(kind: str, **state: Any) -> dict[str, Any]:
        return {"value": {"type": kind, **state}}

    repeat = draw(st.sampled_from(["once", "daily", "weekdays", "days"]))
    return {
        "name": el("plain_text_input", value=draw(st.sampled_from(["Standup", "x" * 81, ""]))),
        "channel": el("conversations_select", selected_conversation="C1"),
        "time": el("timepicker", selected_time=draw(st.sampled_from(["09:30", "25:99"]))),
        "repeat": el("static_select", selected_option={"value": repeat}),
        "days": el("checkboxes", selected_options=[{"value": "mon"}, {"value": "fri"}]),
        "date": el("datepicker", selected_date=draw(st.sampled_from([None, "2099-01-02"]))),
        "duration": el("static_select", selected_option={"value": "900"}),
        "invitees": el("multi_users_select", selected_users=[BOB]),
    }


def view_may_act(p: Any) -> bool:
    """Whether a view_submission may change anything (the oracle)."""
    if not isinstance(p, dict) or p.get("type") != "view_submission":
        return False
    callback = _text_at(p, "view", "callback_id")
    user = _text_at(p, "user", "id")
    if callback not in (SCHEDULE_MODAL, NEW_ROOM_MODAL) or not user:
        return False
    if not (_text_at(p, "team", "id") or _text_at(p, "user", "team_id")):
        return False
    state = p["view"].get("state") if isinstance(p["view"], dict) else None
    values = state.get("values") if isinstance(state, dict) else None
    required = ("name", "time", "duration") if callback == SCHEDULE_MODAL else ("duration",)
    for block in required:
        entry = values.get(block) if isinstance(values, dict) else None
        element = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(element, dict):
            return False  # a required field is missing: the form asks for it again
    if callback == NEW_ROOM_MODAL:
        return user in MEMBERS  # guests and bots cannot open rooms
    return True


def new_room_values(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "topic": {"value": {"type": "plain_text_input", "value": draw(STRINGS)}},
        "invitees": {"value": {"type": "multi_users_select", "selected_users": [BOB]}},
        "duration": {
            "value": {
                "type": "static_select",
                "selected_option": {"value": draw(st.sampled_from(["900", "0", "999999"]))},
            }
        },
    }


@st.composite
def view_submissions(draw: st.DrawFn) -> tuple[Any, bool]:
    user = draw(st.sampled_from(PEOPLE))
    callback = draw(st.sampled_from([SCHEDULE_MODAL, NEW_ROOM_MODAL, "other"]))
    values = new_room_values(draw) if callback == NEW_ROOM_MODAL else schedule_values(draw)
    base = {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "meetbot-test"},
        "user": {"id": user, "username": user.lower(), "team_id": TEAM},
        "api_app_id": "A0001",
        "token": "verification-token",
        "trigger_id": "1.2.3",
        "view": {
            "id": "V0001",
            "team_id": TEAM,
            "type": "modal",
            "callback_id": callback,
            "private_metadata": json.dumps({"channel_id": "C1"}),
            "state": {"values": values},
            "hash": "1.abc",
            "app_id": "A0001",
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    payload = draw(mutated(base))
    return payload, view_may_act(payload)


def shortcut_may_act(p: Any) -> bool:
    """A global shortcut opens a modal at most; "Meet about this" opens a room (the oracle)."""
    if not isinstance(p, dict) or p.get("type") != "message_action":
        return False
    if p.get("callback_id") != ABOUT_SHORTCUT:
        return False
    team = _text_at(p, "team", "id") or _text_at(p, "user", "team_id")
    channel = _text_at(p, "channel", "id")
    user = _text_at(p, "user", "id")
    if not (team and channel and user and isinstance(p.get("message"), dict) and p["message"]):
        return False
    return user in MEMBERS  # guests and bots cannot open rooms


@st.composite
def shortcuts(draw: st.DrawFn, slack: SlackDouble) -> tuple[Any, bool]:
    """Global and message shortcuts, and the oracle."""
    user = draw(st.sampled_from(PEOPLE))
    kind = draw(st.sampled_from(["shortcut", "message_action"]))
    base: dict[str, Any] = {
        "type": kind,
        "token": "verification-token",
        "action_ts": "1.000001",
        "team": {"id": TEAM, "domain": "meetbot-test"},
        "user": {"id": user, "username": user.lower(), "team_id": TEAM},
        "is_enterprise_install": False,
        "enterprise": None,
        "callback_id": SCHEDULE_SHORTCUT if kind == "shortcut" else ABOUT_SHORTCUT,
        "trigger_id": slack.issue_trigger_id(user),
    }
    if kind == "message_action":
        base["channel"] = {"id": "C1", "name": "general"}
        base["message"] = {"type": "message", "user": BOB, "ts": "1.000001", "text": "hi"}
        base["response_url"] = RESPONSE_URL
    payload = draw(mutated(base))
    return payload, shortcut_may_act(payload)


@st.composite
def events(draw: st.DrawFn) -> tuple[Any, bool]:
    if draw(st.booleans()):
        base: dict[str, Any] = {
            "token": "verification-token",
            "challenge": draw(STRINGS),
            "type": "url_verification",
        }
        return draw(mutated(base)), False
    event_type = draw(
        st.sampled_from(["app_home_opened", "app_uninstalled", "tokens_revoked", "message"])
    )
    event: dict[str, Any] = {"type": event_type, "user": draw(st.sampled_from(PEOPLE))}
    if event_type == "app_home_opened":
        event["tab"] = draw(st.sampled_from(["home", "messages"]))
        event["channel"] = "D0001"
    if event_type == "tokens_revoked":
        event["tokens"] = {"bot": ["UMEETBOT"]}
    base = {
        "token": "verification-token",
        "team_id": TEAM,
        "api_app_id": "A0001",
        "event": event,
        "type": "event_callback",
        "event_id": "Ev0123456789",
        "event_time": 1,
        "authorizations": [{"team_id": TEAM, "user_id": "UMEETBOT", "is_bot": True}],
    }
    payload = draw(mutated(base))
    # A well-formed event may be one the bot acts on (uninstall, revoked tokens).
    valid = (
        isinstance(payload, dict)
        and payload.get("type") == "event_callback"
        and isinstance(payload.get("event"), dict)
    )
    return payload, valid


# -- the tests ---------------------------------------------------------------------------------
@fuzz(250)
@given(case=slash_commands())
def test_slash_commands(stacks: tuple[Stack, Stack], case: tuple[list[Any], bool]) -> None:
    items, may_act = case
    status, body = send(
        stacks, "slash_command", may_act, form(items), "application/x-www-form-urlencoded"
    )
    fields = dict(items)
    if status == 413:
        return  # percent-encoding made the body larger than 1 MiB: checked in send()
    if fields.get("command") != "/meet":
        assert status == 404
        return
    assert status == 200
    answer = body.decode()
    if not fields.get("user_id") or not fields.get("team_id"):
        assert "missing who sent it" in answer
        return
    try:
        cmd = grammar.parse_meet(
            fields.get("text") or "", requester=fields["user_id"], max_ttl=MAX_TTL
        )
    except grammar.UsageError as e:
        assert answer == str(e)  # the usage message, as the grammar wrote it
    else:
        if isinstance(cmd, grammar.Help):
            assert answer == grammar.HELP_TEXT


@fuzz(250)
@given(case=block_actions())
def test_block_actions(stacks: tuple[Stack, Stack], case: tuple[Any, bool]) -> None:
    payload, may_act = case
    status, _ = send(
        stacks, "block_actions", may_act, interactive(payload), "application/x-www-form-urlencoded"
    )
    assert status in ANSWERS


@fuzz(150)
@given(case=view_submissions())
def test_view_submissions(stacks: tuple[Stack, Stack], case: tuple[Any, bool]) -> None:
    payload, may_act = case
    status, _ = send(
        stacks,
        "view_submission",
        may_act,
        interactive(payload),
        "application/x-www-form-urlencoded",
    )
    assert status in ANSWERS


@fuzz(120)
@given(data=st.data())
def test_shortcuts(stacks: tuple[Stack, Stack], data: st.DataObject) -> None:
    payload, may_act = data.draw(shortcuts(stacks[0].slack))
    body = interactive(payload)
    status, _ = send(stacks, "shortcut", may_act, body, "application/x-www-form-urlencoded")
    assert status in ANSWERS


@fuzz(150)
@given(case=events())
def test_events(stacks: tuple[Stack, Stack], case: tuple[Any, bool]) -> None:
    payload, may_act = case
    body = json.dumps(payload).encode()
    status, answer = send(stacks, "event", may_act, body, "application/json")
    if isinstance(payload, dict) and payload.get("type") == "url_verification":
        challenge = payload.get("challenge")
        if status == 200 and isinstance(challenge, str):
            assert json.loads(answer) == {"challenge": challenge}
    assert status in ANSWERS


@fuzz(200)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        JSON.map(lambda v: json.dumps(v).encode()),
        JSON.map(lambda v: form({"payload": json.dumps(v)})),
        st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.sampled_from(
            [b"{", b"payload=%7B", b"payload=null", b"[1]", b"\xff\xfe{}", b"a=1&&&=&payload"]
            + [b"[" * 100_000, b'{"a":' * 50_000]  # nesting past Python's recursion limit
        ),
    ),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "text/plain",
            "",
            "multipart/form-data",
        ]
    ),
)
def test_garbage_bodies(stacks: tuple[Stack, Stack], body: bytes, content_type: str) -> None:
    """Anything at all, signed: never a 500, never an effect.

    Slack signs UTF-8 text; a body that is not UTF-8 cannot carry a signature
    slack_sdk's verifier accepts, so it is refused as unsigned (401).
    """
    status, _ = send(stacks, "garbage", False, body, content_type)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        assert status == 401
    else:
        assert status in ANSWERS


@st.composite
def any_body(draw: st.DrawFn, slack: SlackDouble) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["command", "action", "view", "shortcut", "event", "bytes"]))
    if kind == "command":
        return form(draw(slash_commands())[0]), "application/x-www-form-urlencoded"
    if kind == "action":
        return interactive(draw(block_actions())[0]), "application/x-www-form-urlencoded"
    if kind == "view":
        return interactive(draw(view_submissions())[0]), "application/x-www-form-urlencoded"
    if kind == "shortcut":
        return interactive(draw(shortcuts(slack))[0]), "application/x-www-form-urlencoded"
    if kind == "event":
        return json.dumps(draw(events())[0]).encode(), "application/json"
    return draw(st.binary(max_size=200)), draw(st.sampled_from(["application/json", ""]))


def bad_signature_headers(draw: st.DrawFn, body: bytes) -> dict[str, str]:
    now = int(time.time())
    how = draw(
        st.sampled_from(
            [
                "none",
                "no_signature",
                "no_timestamp",
                "zeros",
                "other_secret",
                "other_body",
                "stale",
                "future",
                "garbage",
            ]
        )
    )
    if how == "none":
        return {}
    ts = str(now)
    # Outside Slack's 300 s window by a margin: a "future" 301 s becomes 300 s, and
    # valid, if the request is checked a second later (a loaded machine).
    if how == "stale":
        ts = str(now - draw(st.integers(330, 10**9)))
    elif how == "future":
        ts = str(now + draw(st.integers(330, 10**9)))
    elif how == "garbage":
        ts = draw(st.sampled_from(["", "abc", "-1", "1e9", " 1", "١٢٣", str(now) + ".5", "9" * 40]))
    good = sign(ts, body) if ts.isascii() and ts.isdigit() else "v0=" + "0" * 64
    if how == "zeros":
        signature = "v0=" + "0" * 64
    elif how == "other_secret":
        mac = hmac.new(b"not-the-secret", f"v0:{ts}:".encode() + body, hashlib.sha256)
        signature = "v0=" + mac.hexdigest()
    elif how == "other_body":
        signature = sign(ts, body + b" ")
    elif how == "garbage":
        signature = draw(st.sampled_from([good, "", "v0=", "v1=" + good[3:], "é" * 10]))
    else:
        signature = good  # stale / future: the right HMAC over an old or future time
    headers = {"HTTP_X_SLACK_REQUEST_TIMESTAMP": ts, "HTTP_X_SLACK_SIGNATURE": signature}
    if how == "no_signature":
        del headers["HTTP_X_SLACK_SIGNATURE"]
    if how == "no_timestamp":
        del headers["HTTP_X_SLACK_REQUEST_TIMESTAMP"]
    return headers


@fuzz(200)
@given(data=st.data())
def test_unsigned_or_badly_signed_is_401(stacks: tuple[Stack, Stack], data: st.DataObject) -> None:
    """Valid requests as well as garbage: without Slack's signature, 401 and nothing else."""
    quiet = stacks[0]
    body, content_type = data.draw(any_body(quiet.slack))
    headers = bad_signature_headers(data.draw, body)
    CASES["unsigned"] += 1
    before = quiet.effects()
    status, _ = quiet.call(body, content_type, signed=False, headers=headers)
    assert status == (413 if len(body) > MAX_BODY_BYTES else 401)
    quiet.settle()
    assert quiet.effects() == before


class Untouchable(io.RawIOBase):
    """A request body that must not be read."""

    def read(self, *_: Any) -> bytes:  # type: ignore[override]
        raise AssertionError("the body of an oversize request was read")

    readline = readlines = read  # type: ignore[assignment]


@fuzz(40)
@given(
    size=st.integers(MAX_BODY_BYTES + 1, 50 * MAX_BODY_BYTES),
    path=st.sampled_from(["/slack/events", "/slack/other", "/healthz", "/join/x", "/nowhere"]),
    method=st.sampled_from(["POST", "GET", "PUT"]),
)
def test_oversize_is_413_before_reading(
    stacks: tuple[Stack, Stack], size: int, path: str, method: str
) -> None:
    quiet = stacks[0]
    CASES["oversize"] += 1
    before = quiet.effects()
    status, _ = quiet.call(
        b"", content_length=str(size), stream=Untouchable(), path=path, method=method
    )
    assert status == 413
    assert quiet.effects() == before


def test_oversize_real_body_is_413_and_exactly_1_mib_is_read(stacks: tuple[Stack, Stack]) -> None:
    """A real signed body one byte over the limit is refused; one at the limit is answered."""
    quiet = stacks[0]
    prefix = form([("team_id", TEAM), ("user_id", ALICE), ("command", "/meet"), ("text", "")])
    at_limit = prefix + b"x" * (MAX_BODY_BYTES - len(prefix))
    assert len(at_limit) == MAX_BODY_BYTES
    CASES["oversize"] += 2
    before = quiet.effects()
    status, body = quiet.call(at_limit + b"x")
    assert status == 413 and b"too large" in body
    status, body = quiet.call(at_limit)
    assert status == 200 and b"too long" in body
    quiet.settle()
    assert quiet.effects() == before


@fuzz(40)
@given(length=st.sampled_from(["abc", "-1", "-100", "1.5", "0x10", " ", "1e3", "12abc"]))
def test_bad_content_length_is_400(stacks: tuple[Stack, Stack], length: str) -> None:
    quiet = stacks[0]
    CASES["content_length"] += 1
    body = form([("team_id", TEAM), ("user_id", ALICE), ("command", "/meet"), ("text", "x")])
    status, _ = quiet.call(body, content_length=length)
    assert status == 400


def test_a_valid_command_through_the_fuzz_stack_does_act(stacks: tuple[Stack, Stack]) -> None:
    """The oracle's other half: a request it calls valid really does what it should."""
    busy = stacks[1]
    busy.slack.add_user("UVALID001", "valid")  # has opened nothing, whatever the fuzzing did
    CASES["slash_command"] += 1
    before = busy.effects()["ams_writes"]
    fields = {"team_id": TEAM, "user_id": "UVALID001", "command": "/meet", "text": f"x <@{BOB}>"}
    status, body = busy.call(form(fields))
    assert status == 200 and "Creating" in body.decode()
    busy.settle()
    assert busy.effects()["ams_writes"] == before + 1


@pytest.mark.parametrize(
    "fields, answer",
    [
        ({"text": "payload review"}, "Creating your room…"),
        ({"text": "help", "channel_name": "payload-team"}, grammar.HELP_TEXT),
        ({"text": "help", "user_name": "payloadqueen"}, grammar.HELP_TEXT),
    ],
    ids=["in-the-text", "in-the-channel-name", "in-the-user-name"],
)
def test_the_word_payload_anywhere_in_a_command_is_not_lost(
    stacks: tuple[Stack, Stack], fields: dict[str, str], answer: str
) -> None:
    """Bolt takes any form body that contains "payload" for an interactivity payload,
    finds no ``payload`` field and reads nothing (404): wsgi_app hands it the fields."""
    busy = stacks[1]
    CASES["slash_command"] += 1
    body = form({"team_id": TEAM, "user_id": BOB, "command": "/meet", **fields})
    status, data = busy.call(body)
    assert (status, data.decode()) == (200, answer)
    busy.settle()


def test_an_unsigned_ssl_check_is_answered_and_runs_nothing(stacks: tuple[Stack, Stack]) -> None:
    """Slack's certificate check (``ssl_check=1``) gets its 200 as Bolt gives it, signed or
    not; a command smuggled into one does not run."""
    quiet = stacks[0]
    CASES["unsigned"] += 1
    before = quiet.effects()
    smuggled = {"ssl_check": "1", "token": "x", "team_id": TEAM, "user_id": ALICE}
    smuggled |= {"command": "/meet", "text": f"end {ROOM}", "response_url": RESPONSE_URL}
    status, body = quiet.call(form(smuggled), signed=False)
    assert status == 200 and body == b""
    quiet.settle()
    assert quiet.effects() == before
