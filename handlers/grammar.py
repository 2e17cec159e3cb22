"""The ``/meet`` grammar: slash-command text → a command object (pure, fuzzed).

Kept apart from the Slack listeners so every rule can be table-tested and
fuzzed without Slack: ``parse_meet`` either returns a command or raises
:class:`UsageError` whose message can be shown to the person as is; no other
exception escapes it, whatever the input.

Text arrives as Slack sends it with ``should_escape: true``: people as
``<@U123|name>``, channels as ``<#C123|name>``, links as ``<https://…|label>``,
``&``, ``<``, ``>`` as ``&amp;``, ``&lt;``, ``&gt;``.

Topics and schedule names come back as *plain text* that cannot form Slack
markup: ``&lt;``/``&gt;`` are decoded and then ``<``/``>`` are replaced by
``‹``/``›``, so even a caller that forgets to escape them cannot make a topic
ping ``@here`` or forge a link. Escaping them for mrkdwn is still right.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bot.durations import DurationTooLongError, format_duration, parse_duration

__all__ = [
    "HELP_TEXT",
    "MAX_INVITEES",
    "MAX_NAME",
    "SUBCOMMANDS",
    "USAGE",
    "Command",
    "End",
    "Extend",
    "Help",
    "Kick",
    "ListRooms",
    "Open",
    "Schedule",
    "ScheduleModal",
    "Schedules",
    "Unschedule",
    "UsageError",
    "parse_meet",
    "parse_user_ref",
]

MAX_INVITEES = 50
MAX_NAME = 80
#: Longer input than any real command; refusing it early bounds the work per request.
MAX_TEXT = 4000


# --- commands ----------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """Open a room now. ``duration`` None = the configured default; ``topic`` "" = caller's pick."""

    topic: str
    invitees: tuple[str, ...]
    duration: int | None


@dataclass(frozen=True)
class Help:
    """Show :data:`HELP_TEXT`."""


@dataclass(frozen=True)
class ListRooms:
    """The requester's open rooms."""


@dataclass(frozen=True)
class End:
    """End a room (owner or workspace admin; the handler checks)."""

    room_id: str


@dataclass(frozen=True)
class Extend:
    """Give a room ``duration`` more seconds (owner; the handler caps the total)."""

    room_id: str
    duration: int


@dataclass(frozen=True)
class Kick:
    """Revoke one person's links to a room (owner)."""

    room_id: str
    user_id: str


@dataclass(frozen=True)
class Schedule:
    """A team room in this channel. ``when`` is the raw ``<when>`` text.

    It is parsed later by ``bot.schedules.rules.parse_when`` because that needs the
    requester's time zone, which only ``users.info`` knows.
    """

    name: str
    when: str
    duration: int | None
    invitees: tuple[str, ...]


@dataclass(frozen=True)
class ScheduleModal:
    """Bare ``/meet schedule``: open the scheduling form."""


@dataclass(frozen=True)
class Schedules:
    """This channel's team rooms."""


@dataclass(frozen=True)
class Unschedule:
    """Delete one team-room schedule."""

    schedule_id: str


Command = (
    Open
    | Help
    | ListRooms
    | End
    | Extend
    | Kick
    | Schedule
    | ScheduleModal
    | Schedules
    | Unschedule
)


class UsageError(ValueError):
    """Bad ``/meet`` input. ``message`` names what was wrong and shows the right usage."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- help ----------------------------------------------------------------------------

USAGE: dict[str, str] = {
    "open": "`/meet [topic] [@person ...] [for &lt;duration&gt;]`",
    "help": "`/meet help`",
    "list": "`/meet list`",
    "end": "`/meet end &lt;room-id&gt;`",
    "extend": "`/meet extend &lt;room-id&gt; for &lt;duration&gt;`",
    "kick": "`/meet kick &lt;room-id&gt; @person`",
    "schedule": "`/meet schedule &lt;name&gt; &lt;when&gt; [for &lt;duration&gt;] [@person ...]`",
    "schedules": "`/meet schedules`",
    "unschedule": "`/meet unschedule &lt;schedule-id&gt;`",
}
SUBCOMMANDS = frozenset(USAGE) - {"open"}

HELP_TEXT = f"""\
*/meet* opens a private video room and DMs each person their own link.

{USAGE["open"]} — open a room now
  e.g. `/meet design review @alice @bob for 45m`
{USAGE["list"]} — your open rooms
{USAGE["end"]} — end a room (its owner or a workspace admin)
{USAGE["extend"]} — give a room more time (its owner)
{USAGE["kick"]} — take one person's links away (its owner)
{USAGE["schedule"]} — a team room in this channel
  `&lt;name&gt;`: one word or "a quoted name"
  `&lt;when&gt;`: `at 14:30` (next time it is 14:30) · `at 2026-12-01 10:00` (once) ·
  `every day|weekday|mon,wed,fri at 09:30` · `cron "30 9 * * 1-5"`
  Times are in your Slack time zone. `/meet schedule` alone opens a form.
{USAGE["schedules"]} — this channel's team rooms
{USAGE["unschedule"]} — stop a team room
{USAGE["help"]} — this help

*Durations*: `90s`, `15m`, `2h`, `1h30m`, `7d`. Without `for`, rooms last the default time.
*People*: mention them with @ (pick them from the list so the name turns blue). \
You are always in your own room.
*Topics*: a topic that starts with one of the words above must be quoted: \
`/meet "list of bugs" @alice`.\
"""

# --- tokens --------------------------------------------------------------------------

_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}", re.ASCII)
_USER_REF = re.compile(r"<@([UW][A-Z0-9]{2,})(?:\|[^<>]*)?>", re.ASCII)
_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
_ENTITY_RE = re.compile(r"&(amp|lt|gt);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">"}
_OPEN_QUOTES = '"“”„'
_CLOSE_RE = re.compile('["“”]')
# Looks like an attempt at a duration ("30m", "-5m", "1.5h", "99d", "30"), as
# opposed to a topic word after "for" ("lunch for everyone", "prep for 1:1").
_DURATION_SHAPE = re.compile(r"[-+.]?[0-9][0-9a-z.,]*", re.ASCII | re.IGNORECASE)
_UNIT_WORDS = frozenset(
    "s sec secs second seconds m min mins minute minutes h hr hrs hour hours d day days".split()
)
_SEPARATORS = frozenset({",", ";", "&", "&amp;", "+", "and", "-", "–"})
_GROUP_PINGS = ("here", "channel", "everyone", "subteam")
# Invisible characters that can reorder or hide text (Trojan-source style spoofing).
_BIDI = dict.fromkeys(
    [0x200B, 0x200E, 0x200F, 0x2028, 0x2029, 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)


@dataclass(frozen=True)
class _Tok:
    """One token. ``text``: word as typed / quoted inner text / user id / display text."""

    kind: str  # word | quoted | mention | display | ping | notperson
    text: str
    label: str | None = None


def _unescape(s: str) -> str:
    """Undo Slack's three escapes in one pass (``&amp;lt;`` stays the text ``&lt;``)."""
    return _ENTITY_RE.sub(lambda m: _ENTITIES[m.group(1)], s)


def _clean(s: str) -> str:
    """Slack-escaped text → safe one-line plain text.

    Control and invisible bidi characters go, whitespace collapses, unicode
    (emoji, accents, CJK) stays, and ``<``/``>`` become ``‹``/``›``.
    """
    s = _unescape(s)
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            out.append(" " if ch in "\t\n\r\x0b\x0c\x85" else "")
        elif cat == "Cs" or ord(ch) in _BIDI:
            out.append(" " if ord(ch) in (0x2028, 0x2029) else "")
        else:
            out.append(ch)
    return " ".join("".join(out).split()).replace("<", "‹").replace(">", "›")


def _truncate(s: str, limit: int) -> str:
    if len(s) <= limit:
        return s
    if limit <= 1:
        return "…"[:limit]
    return s[: limit - 1].rstrip() + "…"


def _angle(inner: str) -> _Tok:
    """Classify one ``<...>`` construct; group pings and non-people are flagged, not acted on."""
    if inner.startswith("@"):
        uid, _, label = inner[1:].partition("|")
        if _USER_ID.fullmatch(uid):
            return _Tok("mention", uid, label or None)
        return _Tok("notperson", label or uid)
    if inner.startswith("#"):
        cid, _, label = inner[1:].partition("|")
        return _Tok("display", "#" + (label or cid))
    if inner.startswith("!"):
        name, _, label = inner[1:].partition("|")
        kind = re.split(r"[\^|]", name, maxsplit=1)[0].lower()
        if kind in _GROUP_PINGS:
            return _Tok("ping", kind)
        return _Tok("display", label if kind == "date" else "")
    target, _, label = inner.partition("|")
    return _Tok("display", label or target)


def _check_specials(toks: list[_Tok], cmd: str) -> None:
    """Refuse what we must not act on: group pings, mentions of non-people, unresolved @names."""
    for t in toks:
        if t.kind == "ping":
            raise UsageError(
                "@here, @channel, @everyone and user groups can't be invited: "
                f"mention each person.\n{_usage(cmd)}"
            )
        if t.kind == "notperson":
            raise UsageError(
                f'I can only invite people, and "{_clean(t.text)}" is not one.\n{_usage(cmd)}'
            )
        if t.kind == "word" and re.fullmatch(r"@[\w.\-]+", t.text):
            # Plain "@alice": Slack did not resolve it to a person. Say so, don't drop them.
            raise UsageError(
                f"I can't tell who \"{_clean(t.text)}\" is: pick the person from Slack's "
                f"list as you type so the name turns blue.\n{_usage(cmd)}"
            )


def _tokenize(text: str) -> list[_Tok]:
    """Split on whitespace, keeping ``<...>`` constructs and "quoted strings" whole."""
    toks: list[_Tok] = []
    i, n = 0, len(text)

    def angle_end(at: int) -> int:
        j = text.find(">", at + 1)
        if j == -1 or "<" in text[at + 1 : j]:
            return -1
        return j

    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "<":
            j = angle_end(i)
            if j != -1:
                toks.append(_angle(text[i + 1 : j]))
                i = j + 1
                continue
        if c in _OPEN_QUOTES:
            close = _CLOSE_RE.search(text, i + 1)
            if close:
                j = close.start()
                toks.append(_Tok("quoted", text[i + 1 : j]))
                i = j + 1
                continue
        j = i + 1
        while j < n and not text[j].isspace() and not (text[j] == "<" and angle_end(j) != -1):
            j += 1
        toks.append(_Tok("word", text[i:j]))
        i = j
    return toks


def _display(tok: _Tok) -> str:
    """How a token reads inside a topic, name or when (mentions handled by the caller)."""
    if tok.kind == "quoted":
        # Constructs inside quotes are shown, not acted on: no invitees, no pings.
        parts = []
        for sub in _tokenize(tok.text):
            if sub.kind == "mention":
                parts.append("@" + sub.label if sub.label else "")
            elif sub.kind == "ping":
                parts.append("")
            elif sub.kind == "quoted":
                parts.append(f'"{sub.text}"')
            else:
                parts.append(sub.text)
        return " ".join(parts)
    return tok.text


# --- arguments -----------------------------------------------------------------------


def _usage(cmd: str) -> str:
    return f"Usage: {USAGE[cmd]}"


def _duration(raw: str, max_ttl: int, cmd: str) -> int:
    """A positive duration no longer than ``max_ttl``, or UsageError saying what to type."""
    shown = _clean(raw)
    if raw.isascii() and raw.isdigit():
        if int(raw) == 0:
            raise UsageError(f"A room has to last longer than 0.\n{_usage(cmd)}")
        raise UsageError(
            f'"{shown}" needs a unit, e.g. {int(raw)}m or {int(raw)}h. To use it as topic text, '
            f"put the topic in quotes.\n{_usage(cmd)}"
        )
    try:
        seconds = parse_duration(raw)
    except DurationTooLongError:
        seconds = max_ttl + 1
    except ValueError as e:
        message = _clean(str(e))
        raise UsageError(f"{message[:1].upper()}{message[1:]}.\n{_usage(cmd)}") from None
    if seconds <= 0:
        raise UsageError(f"A room has to last longer than {shown}.\n{_usage(cmd)}")
    if seconds > max_ttl:
        raise UsageError(
            f'"{shown}" is too long: a room can last at most '
            f"{format_duration(max_ttl)}.\n{_usage(cmd)}"
        )
    return seconds


def _invitees(toks: list[_Tok], requester: str, cmd: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for t in toks:
        if t.kind == "mention":
            if t.text == requester:
                raise UsageError(
                    "You are always invited to your own room; mention only the others.\n"
                    + _usage(cmd)
                )
            seen.setdefault(t.text)
    if len(seen) > MAX_INVITEES:
        raise UsageError(
            f"At most {MAX_INVITEES} people per room (you mentioned {len(seen)}); "
            f"for a bigger group, post the room in a channel and let people click "
            f'"Get my link".\n{_usage(cmd)}'
        )
    return tuple(seen)


def _split_duration(toks: list[_Tok], max_ttl: int, cmd: str, *, strict: bool) -> int | None:
    """Remove a trailing ``for <duration>`` (mentions may follow it) and return its seconds.

    A trailing ``for <word>`` is always read as a duration, so a typo such as
    ``for 45mins`` or ``for banana`` is reported instead of silently opening a
    room with the default length and an odd topic. A topic that really ends in
    "for something" is written in quotes: ``/meet "lunch for everyone"``.
    ``strict`` (schedule) additionally refuses a dangling ``for``.
    """
    idx = [i for i, t in enumerate(toks) if t.kind != "mention"]
    words = [toks[i] for i in idx]

    def is_for(t: _Tok) -> bool:
        return t.kind == "word" and t.text.lower() == "for"

    if len(words) >= 3 and is_for(words[-3]) and words[-2].kind == "word":
        a, b = words[-2].text, words[-1].text
        if _DURATION_SHAPE.fullmatch(a) and (
            b.lower() in _UNIT_WORDS or _DURATION_SHAPE.fullmatch(b)
        ):
            raise UsageError(
                f'Write the duration as one word: "for 30m", "for 2h" or "for 1h30m", '
                f'not "for {_clean(a)} {_clean(b)}".\n{_usage(cmd)}'
            )
    if len(words) >= 2 and is_for(words[-2]) and words[-1].kind == "word":
        raw = words[-1].text
        if True:
            try:
                seconds = _duration(raw, max_ttl, cmd)
            except UsageError as e:
                if cmd != "open":
                    raise
                raise UsageError(
                    e.message.replace(
                        "\nUsage:",
                        '\n(A topic that ends in "for …" goes in quotes: '
                        '`/meet "lunch for everyone"`.)\nUsage:',
                        1,
                    )
                ) from None
            del toks[idx[-1]]
            del toks[idx[-2]]
            return seconds
    if strict and words and is_for(words[-1]):
        raise UsageError(f"For how long? e.g. for 45m.\n{_usage(cmd)}")
    return None


def _room_id(tok: _Tok, cmd: str, what: str = "room") -> str:
    raw = _unescape(tok.text).strip("`")
    if tok.kind not in ("word", "quoted") or not _ID_RE.fullmatch(raw):
        shown = _truncate(_clean(raw if tok.kind != "mention" else "@" + (tok.label or "")), 40)
        raise UsageError(
            f'"{shown}" is not a {what} id: ids use only letters, digits, -, _ and . '
            f"(see `/meet {'list' if what == 'room' else 'schedules'}`).\n{_usage(cmd)}"
        )
    return raw


def _quote_hint(first: str) -> str:
    return f' To open a room whose topic starts with "{first}", quote it: `/meet "{first} …"`.'


# --- subcommands ---------------------------------------------------------------------


def _parse_open(toks: list[_Tok], requester: str, max_ttl: int, max_topic: int) -> Open:
    _check_specials(toks, "open")
    duration = _split_duration(toks, max_ttl, "open", strict=False)
    invitees = _invitees(toks, requester, "open")
    # Mentions after the last real word are the invitee list; earlier ones are
    # part of the sentence ("sync with @bob about the budget") and read as @name.
    real = [
        i
        for i, t in enumerate(toks)
        if t.kind != "mention" and _display(t) and t.text.lower() not in _SEPARATORS
    ]
    last = real[-1] if real else -1
    parts: list[str] = []
    for i, t in enumerate(toks[: last + 1]):
        if t.kind == "mention":
            parts.append("@" + t.label if t.label else "")
        elif t.kind == "quoted" and i == 0:
            parts.append(_display(t))  # the quotes only protected a leading keyword
        elif t.kind == "quoted":
            parts.append(f'"{_display(t)}"')
        else:
            parts.append(t.text)
    topic = _truncate(_clean(" ".join(parts)), max(0, max_topic))
    return Open(topic=topic, invitees=invitees, duration=duration)


def _parse_schedule(args: list[_Tok], requester: str, max_ttl: int) -> Command:
    if not args:
        return ScheduleModal()
    _check_specials(args, "schedule")
    example = "e.g. `/meet schedule standup every weekday at 09:30 for 15m`"
    head, rest = args[0], list(args[1:])
    if head.kind == "quoted":
        name = _clean(_display(head))
    elif head.kind == "word" and head.text.lower() not in ("at", "every", "cron", "for"):
        name = _clean(head.text)
    else:
        raise UsageError(f"Start with the team room's name, {example}.\n{_usage('schedule')}")
    if not name:
        raise UsageError(f"The team room needs a name, {example}.\n{_usage('schedule')}")
    if len(name) > MAX_NAME:
        raise UsageError(
            f"That name is {len(name)} characters long; keep it to {MAX_NAME}.\n"
            + _usage("schedule")
        )
    duration = _split_duration(rest, max_ttl, "schedule", strict=True)
    invitees = _invitees(rest, requester, "schedule")
    when_parts: list[str] = []
    for t in rest:
        if t.kind == "mention":
            continue
        if t.kind == "quoted":
            when_parts.append(f'"{_clean(t.text)}"')
        elif t.kind == "word":
            when_parts.append(_clean(t.text))
        else:
            raise UsageError(
                f'"{_clean(t.text)}" is not part of a time, {example}.\n{_usage("schedule")}'
            )
    when = " ".join(p for p in when_parts if p)
    if not when:
        raise UsageError(
            f'When should "{name}" happen? Add e.g. `every weekday at 09:30`, `at 14:00` '
            f'or `cron "30 9 * * 1-5"`.\n{_usage("schedule")}'
        )
    if when.split()[0].lower() not in ("at", "every", "cron"):
        shown = _truncate(when, 60)
        raise UsageError(
            f'"{shown}" is not a time: use `at 14:30`, `at 2026-12-01 10:00`, '
            f'`every weekday at 09:30` or `cron "30 9 * * 1-5"`. A name of several words '
            f'needs quotes: `/meet schedule "team sync" every day at 09:00`.\n' + _usage("schedule")
        )
    return Schedule(name=name, when=when, duration=duration, invitees=invitees)


def _parse_sub(
    cmd: str, args: list[_Tok], requester: str, max_ttl: int, first_word: str
) -> Command:
    hint = _quote_hint(first_word)
    if cmd == "help":
        return Help()
    _check_specials(args, cmd)
    if cmd in ("list", "schedules"):
        if args:
            raise UsageError(f"`/meet {cmd}` takes nothing after it.{hint}\n{_usage(cmd)}")
        return ListRooms() if cmd == "list" else Schedules()
    if cmd in ("end", "unschedule"):
        what = "room" if cmd == "end" else "schedule"
        if not args:
            where = "/meet list" if cmd == "end" else "/meet schedules"
            raise UsageError(f"Which {what}? Give its id, as `{where}` shows it.\n{_usage(cmd)}")
        if len(args) > 1:
            raise UsageError(f"`/meet {cmd}` takes one {what} id.{hint}\n{_usage(cmd)}")
        ident = _room_id(args[0], cmd, what)
        return End(ident) if cmd == "end" else Unschedule(ident)
    if cmd == "extend":
        if not args:
            raise UsageError(f"Which room? Give its id, as `/meet list` shows it.\n{_usage(cmd)}")
        room = _room_id(args[0], cmd)
        rest = args[1:]
        if len(rest) == 2 and rest[0].kind == "word" and rest[0].text.lower() == "for":
            if rest[1].kind != "word":
                raise UsageError(f"For how long? e.g. for 30m.\n{_usage(cmd)}")
            return Extend(room, _duration(rest[1].text, max_ttl, cmd))
        if len(rest) == 1 and rest[0].kind == "word" and rest[0].text.lower() != "for":
            raise UsageError(
                f'Say "for" before the time: `/meet extend {room} for '
                f"{_clean(rest[0].text)}`.\n{_usage(cmd)}"
            )
        raise UsageError(f"How much more time? e.g. for 30m.{hint}\n{_usage(cmd)}")
    if cmd == "kick":
        if not args:
            raise UsageError(f"Which room, and whom?\n{_usage(cmd)}")
        room = _room_id(args[0], cmd)
        if len(args) != 2 or args[1].kind != "mention":
            raise UsageError(
                f"Mention the one person to remove, e.g. `/meet kick {room} @alice`.\n"
                + _usage(cmd)
            )
        if args[1].text == requester:
            raise UsageError(
                f"You can't kick yourself; to close the room use `/meet end {room}`.\n"
                + _usage(cmd)
            )
        return Kick(room, args[1].text)
    if cmd == "schedule":
        return _parse_schedule(args, requester, max_ttl)
    raise AssertionError(cmd)  # pragma: no cover - SUBCOMMANDS is closed


def parse_meet(text: str, *, requester: str, max_ttl: int, max_topic: int = 150) -> Command:
    """Parse the text after ``/meet`` for ``requester`` (a Slack user id).

    The first word picks a subcommand (case-insensitive) when it is exactly
    one of :data:`SUBCOMMANDS`, whose arguments are then strict; anything else
    opens a room. ``max_ttl`` (seconds) bounds every ``for <duration>``;
    ``max_topic`` bounds the topic's length in characters.

    Raises :class:`UsageError` (only) on bad input.
    """
    if not isinstance(text, str):
        raise UsageError(HELP_TEXT)
    if len(text) > MAX_TEXT:
        raise UsageError(f"That is too long for /meet (over {MAX_TEXT} characters).")
    toks = _tokenize(text)
    if not toks:
        return Open(topic="", invitees=(), duration=None)
    first = toks[0]
    if first.kind == "word":
        word = first.text.lower()
        if word in ("?", "-h", "--help"):
            return Help()
        if word in SUBCOMMANDS:
            return _parse_sub(word, toks[1:], requester, max_ttl, first.text)
    return _parse_open(toks, requester, max_ttl, max_topic)


def parse_user_ref(s: str) -> str | None:
    """The user id of an escaped mention (``<@U123|name>`` or ``<@U123>``), else None."""
    if not isinstance(s, str):
        return None
    m = _USER_REF.fullmatch(s.strip())
    return m.group(1) if m else None
