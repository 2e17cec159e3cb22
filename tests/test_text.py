"""handlers/text.py: the /meet grammar, table-tested and fuzzed."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from bot.durations import MAX_DURATION, format_duration, parse_duration
from handlers.grammar import (
    HELP_TEXT,
    MAX_INVITEES,
    SUBCOMMANDS,
    USAGE,
    End,
    Extend,
    Help,
    Kick,
    ListRooms,
    Open,
    Schedule,
    ScheduleModal,
    Schedules,
    Unschedule,
    UsageError,
    parse_meet,
    parse_user_ref,
)

ME = "U0REQUEST"
MAX_TTL = 86400


def meet(text: str, **kw) -> object:
    return parse_meet(text, requester=ME, max_ttl=kw.pop("max_ttl", MAX_TTL), **kw)


def error(text: str, **kw) -> str:
    with pytest.raises(UsageError) as e:
        meet(text, **kw)
    return e.value.message


# --- valid forms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Open("", (), None)),
        ("   ", Open("", (), None)),
        ("standup", Open("standup", (), None)),
        ("standup <@U111|alice> <@U222> for 30m", Open("standup", ("U111", "U222"), 1800)),
        ("standup for 30m <@U111>", Open("standup", ("U111",), 1800)),
        ("<@U111>", Open("", ("U111",), None)),
        ("for 2h", Open("", (), 7200)),
        (
            "Design   review\n\tQ3 <@W0ENT|eve> FOR 1H30M",
            Open("Design review Q3", ("W0ENT",), 5400),
        ),
        ("standup <@U111> <@U111|a> <@U222>", Open("standup", ("U111", "U222"), None)),
        ("<@U333>, <@U111> and <@U222>", Open("", ("U333", "U111", "U222"), None)),
        (
            "sync with <@U111|bob> about budget",
            Open("sync with @bob about budget", ("U111",), None),
        ),
        ("sync with <@U111> about budget", Open("sync with about budget", ("U111",), None)),
        ("news in <#C123|general>", Open("news in #general", (), None)),
        ("see <https://example.com/x|the doc> now", Open("see the doc now", (), None)),
        ("see <https://example.com/x>", Open("see https://example.com/x", (), None)),
        ("Q&amp;A &lt;b&gt;", Open("Q&A ‹b›", (), None)),
        ("at <!date^1392734382^{date}|Feb 18> ok", Open("at Feb 18 ok", (), None)),
        ('"lunch for everyone"', Open("lunch for everyone", (), None)),
        ('"prep for 1:1" <@U111>', Open("prep for 1:1", ("U111",), None)),
        ("plan for 30m more", Open("plan for 30m more", (), None)),  # not the last tokens
        ('"help desk" sync', Open("help desk sync", (), None)),
        ('"list of bugs" <@U111> for 1h', Open("list of bugs", ("U111",), 3600)),
        ('review "Project X" now', Open('review "Project X" now', (), None)),
        ("“end” of quarter", Open("end of quarter", (), None)),
        ("helpdesk", Open("helpdesk", (), None)),
        ("café ☕ 会议 🎉", Open("café ☕ 会议 🎉", (), None)),
        ("a\x00b\x07c\u202e d\u2028e", Open("abc d e", (), None)),
        ("help", Help()),
        ("HELP", Help()),
        ("help me please", Help()),
        ("?", Help()),
        ("list", ListRooms()),
        ("List", ListRooms()),
        ("end abc-123_X.y", End("abc-123_X.y")),
        ("END `abc`", End("abc")),
        ("extend abc for 1h", Extend("abc", 3600)),
        ("extend abc FOR 24h", Extend("abc", 86400)),
        ("kick abc <@U111|alice>", Kick("abc", "U111")),
        ("schedule", ScheduleModal()),
        ("Schedule", ScheduleModal()),
        (
            "schedule standup every weekday at 09:30 for 15m <@U111> <@U222>",
            Schedule("standup", "every weekday at 09:30", 900, ("U111", "U222")),
        ),
        (
            "schedule standup <@U111> every weekday at 09:30",
            Schedule("standup", "every weekday at 09:30", None, ("U111",)),
        ),
        (
            'schedule "team sync" at 2026-12-01 10:00',
            Schedule("team sync", "at 2026-12-01 10:00", None, ()),
        ),
        (
            "schedule “team sync” cron “30 9 * * 1-5” for 1h",
            Schedule("team sync", 'cron "30 9 * * 1-5"', 3600, ()),
        ),
        ("schedule retro at 16:00", Schedule("retro", "at 16:00", None, ())),
        ("schedules", Schedules()),
        ("unschedule 42", Unschedule("42")),
    ],
)
def test_valid(text: str, expected: object) -> None:
    assert meet(text) == expected


def test_topic_is_truncated_with_ellipsis() -> None:
    cmd = meet("word " * 100, max_topic=20)
    assert isinstance(cmd, Open)
    assert len(cmd.topic) == 20 and cmd.topic.endswith("…")
    assert cmd.topic == "word word word word…"
    assert meet("x" * 150).topic == "x" * 150  # type: ignore[union-attr]
    assert meet("x" * 151).topic == "x" * 149 + "…"  # type: ignore[union-attr]


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        # durations
        ("standup for 0", ["longer than 0", USAGE["open"]]),
        ("standup for 0m", ["longer than", USAGE["open"]]),
        ("standup for -5m", ["negative", USAGE["open"]]),
        ("standup for 99d", ['"99d" is too long', "at most 1d"]),
        ("standup for 99999999d", ["too long", "at most 1d"]),
        ("standup for 1.5h", ["whole numbers"]),
        ("standup for 30", ['"30" needs a unit', "30m", "quotes"]),
        ("standup for 30 minutes", ["one word", "for 30m"]),
        ("standup for 1h 30m", ["one word", "1h30m"]),
        ("standup for banana", ['"banana" is not a duration', "goes in quotes", USAGE["open"]]),
        ("standup for 0", ["longer than 0", USAGE["open"]]),
        ("standup for -5m", [USAGE["open"]]),
        ("standup for 99d", ["at most 1d", USAGE["open"]]),
        ("extend abc for banana", ['"banana" is not a duration', USAGE["extend"]]),
        ("extend abc for 0", ["longer than 0"]),
        ("extend abc for 2d", ["at most 1d"]),
        ("extend abc 1h", ['Say "for"', "/meet extend abc for 1h"]),
        ("extend abc", ["How much more time", USAGE["extend"]]),
        ("extend abc for", ["How much more time"]),
        ("extend", ["Which room", USAGE["extend"]]),
        ("schedule x at 10:00 for banana", ['"banana" is not a duration', USAGE["schedule"]]),
        ("schedule x at 10:00 for", ["For how long", USAGE["schedule"]]),
        ("schedule x at 10:00 for 2d", ["at most 1d"]),
        # people
        (
            "standup <@U0REQUEST>",
            ["You are always invited to your own room; mention only the others."],
        ),
        ("standup <@U0REQUEST|me> <@U111>", ["always invited to your own room"]),
        ("schedule x at 10:00 <@U0REQUEST>", ["always invited", USAGE["schedule"]]),
        ("standup @alice", ['"@alice"', "turns blue"]),
        ("standup <@B0BOT|robot>", ['"robot" is not one']),
        ("standup <@U1>", ['"U1" is not one']),  # too short to be a user id
        ("hi <!here>", ["@here", "mention each person"]),
        ("hi <!channel>", ["@here, @channel"]),
        ("hi <!everyone|everyone>", ["@everyone"]),
        ("hi <!subteam^S123|@eng>", ["user groups"]),
        ("kick abc <!here>", ["@here", USAGE["kick"]]),
        # subcommands with bad arguments
        ("list of bugs", ["takes nothing after it", 'quote it: `/meet "list …"`', USAGE["list"]]),
        ("schedules now", ["takes nothing", USAGE["schedules"]]),
        ("end", ["Which room", "/meet list", USAGE["end"]]),
        ("end of quarter review", ["takes one room id", 'quote it: `/meet "end …"`']),
        ("end abc!", ['"abc!" is not a room id', USAGE["end"]]),
        ("end " + "a" * 65, ["is not a room id"]),
        ("end <@U111>", ["is not a room id"]),
        ("unschedule", ["Which schedule", "/meet schedules", USAGE["unschedule"]]),
        ("unschedule a b", ["takes one schedule id"]),
        ("unschedule x/y", ['"x/y" is not a schedule id']),
        ("kick", ["Which room", USAGE["kick"]]),
        ("kick abc", ["Mention the one person", USAGE["kick"]]),
        ("kick abc @bob", ['"@bob"', "turns blue"]),
        ("kick abc <@U111> <@U222>", ["Mention the one person"]),
        ("kick abc <@U0REQUEST>", ["can't kick yourself", "/meet end abc"]),
        ("schedule standup", ['When should "standup" happen', USAGE["schedule"]]),
        ("schedule team sync every day at 9:00", ["is not a time", '"team sync"']),
        ("schedule every day at 9:00", ["Start with the team room's name"]),
        ("schedule <@U111> at 9:00", ["Start with the team room's name"]),
        ('schedule "" at 9:00', ["needs a name"]),
        ('schedule "' + "n" * 81 + '" at 9:00', ["81 characters", "keep it to 80"]),
        ("schedule x at 9:00 <#C1|general>", ['"#general" is not part of a time']),
        # size
        ("x" * 5000, ["too long"]),
    ],
)
def test_errors(text: str, fragments: list[str]) -> None:
    message = error(text)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_usage_line_closes_every_error() -> None:
    message = error("end")
    assert message.endswith("Usage: " + USAGE["end"])
    assert str(UsageError(message)) == message


def test_invitee_limit() -> None:
    mentions = " ".join(f"<@U{i:05d}>" for i in range(MAX_INVITEES))
    assert len(meet(f"big {mentions}").invitees) == MAX_INVITEES  # type: ignore[union-attr]
    message = error(f"big {mentions} <@U99999>")
    assert message.startswith(f"At most {MAX_INVITEES} people per room")
    # duplicates don't count twice
    assert len(meet(f"big {mentions} <@U00000>").invitees) == MAX_INVITEES  # type: ignore[union-attr]


def test_duration_limit_follows_max_ttl() -> None:
    assert meet("x for 2h", max_ttl=7200).duration == 7200  # type: ignore[union-attr]
    assert "at most 2h" in error("x for 2h1s", max_ttl=7200)


# --- help and usage ------------------------------------------------------------------


def test_help_lists_every_form() -> None:
    for usage in USAGE.values():
        assert usage in HELP_TEXT
    for word in ("at 14:30", "every", "cron", "for &lt;duration&gt;", "quote"):
        assert word in HELP_TEXT
    # Slack reads a bare <...> as a link or mention: placeholders must be escaped.
    import re

    for text in (HELP_TEXT, *USAGE.values()):
        assert not re.search(r"<[a-z][a-z-]*>", text), text
    assert SUBCOMMANDS == {
        "help",
        "list",
        "end",
        "extend",
        "kick",
        "schedule",
        "schedules",
        "unschedule",
    }


# --- parse_user_ref ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "user"),
    [
        ("<@U123ABC|alice>", "U123ABC"),
        ("<@U123ABC>", "U123ABC"),
        (" <@W0ENT> ", "W0ENT"),
        ("<@B123>", None),
        ("<@U1>", None),
        ("U123ABC", None),
        ("@alice", None),
        ("<#C123|general>", None),
        ("<@U123ABC|a> extra", None),
        ("", None),
    ],
)
def test_parse_user_ref(ref: str, user: str | None) -> None:
    assert parse_user_ref(ref) == user


# --- properties ----------------------------------------------------------------------

SLACKISH = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.one_of(
            st.sampled_from(
                sorted(SUBCOMMANDS)
                + [
                    "for",
                    "at",
                    "every",
                    "cron",
                    '"',
                    "“",
                    "”",
                    "<",
                    ">",
                    "&amp;",
                    "&lt;",
                    "@",
                    "|",
                    "\n",
                ]
            ),
            st.from_regex(r"<@[UWB][A-Z0-9]{0,4}(\|[a-z]{0,4})?>", fullmatch=True),
            st.from_regex(r"<[#!][a-z^0-9]{0,6}(\|[a-z@ ]{0,4})?>", fullmatch=True),
            st.from_regex(r"-?[0-9]{1,4}[dhms.]?[0-9]{0,2}[a-z]?", fullmatch=True),
            st.text(max_size=8),
        ),
        max_size=15,
    ).map(" ".join),
)


@settings(max_examples=400, deadline=None)
@given(SLACKISH, st.integers(1, 10**6), st.integers(0, 200))
@example("<@U0REQUEST>", 3600, 150)
@example('schedule "', 3600, 150)
@example("end \ud800", 3600, 150)
def test_never_crashes(text: str, max_ttl: int, max_topic: int) -> None:
    try:
        cmd = parse_meet(text, requester=ME, max_ttl=max_ttl, max_topic=max_topic)
    except UsageError as e:
        assert e.message and isinstance(e.message, str)
        return
    if isinstance(cmd, Open):
        assert len(cmd.topic) <= max_topic
        assert "<" not in cmd.topic and ">" not in cmd.topic
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in cmd.topic)
        assert cmd.topic == cmd.topic.strip()
        assert ME not in cmd.invitees and len(set(cmd.invitees)) == len(cmd.invitees)
        assert cmd.duration is None or 0 < cmd.duration <= max_ttl
    if isinstance(cmd, Schedule):
        assert 0 < len(cmd.name) <= 80 and "<" not in cmd.name
        assert cmd.when.split()[0].lower() in ("at", "every", "cron")


WORD = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Cf"),
        blacklist_characters='<>&"“”„@',
    ),
    min_size=1,
    max_size=10,
).filter(lambda w: w.strip() == w and w.split() == [w])
USER = st.from_regex(r"[UW][A-Z0-9]{2,10}", fullmatch=True).filter(lambda u: u != ME)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(WORD, max_size=6),
    st.lists(USER, max_size=8),
    st.one_of(st.none(), st.integers(1, MAX_TTL)),
    st.booleans(),
)
def test_open_round_trip(
    words: list[str], users: list[str], duration: int | None, with_names: bool
) -> None:
    # a first word that is a subcommand would (rightly) not be an Open
    assume(not words or words[0].lower() not in SUBCOMMANDS | {"?", "-h", "--help"})
    # "for X" at the end of the topic is the duration clause, by design
    assume(not (len(words) >= 2 and words[-2].lower() == "for"))
    # "... for 5 min" is refused with a hint to write "for 5m"
    assume(not (len(words) >= 3 and words[-3].lower() == "for" and duration is None))
    mentions = [f"<@{u}|n{i}>" if with_names else f"<@{u}>" for i, u in enumerate(users)]
    parts = [*words, *mentions]
    if duration is not None:
        parts += ["for", format_duration(duration)]
    cmd = meet(" ".join(parts))
    assert isinstance(cmd, Open)
    assert cmd.invitees == tuple(dict.fromkeys(users))
    assert cmd.duration == duration


@given(st.integers(0, MAX_DURATION))
def test_duration_round_trip(n: int) -> None:
    assert parse_duration(format_duration(n)) == n
