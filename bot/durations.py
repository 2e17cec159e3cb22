"""Human durations (``90s``, ``15m``, ``1h30m``, ``7d``) to seconds and back.

One parser serves both the configuration (``MEETBOT_ROOM_TTL=60m``) and the
``/meet ... for 45m`` grammar, so people meet the same rules and the same error
messages everywhere. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re

__all__ = ["MAX_DURATION", "DurationTooLongError", "format_duration", "parse_duration"]

#: Anything longer than about ten years is a typo, not a meeting or a setting.
MAX_DURATION = 3650 * 86400


class DurationTooLongError(ValueError):
    """A well-formed duration beyond :data:`MAX_DURATION`: callers may word their own limit."""


_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))

# ASCII digits only: ``int()`` would happily accept Arabic-Indic or full-width
# digits, which nobody means to type in a duration. Each unit at most once, in
# decreasing order; at most 12 digits per number so that int() never has to
# chew through a megabyte of digits.
_UNIT_RE = re.compile(
    r"(?:(?P<d>[0-9]{1,12})d)?(?:(?P<h>[0-9]{1,12})h)?"
    r"(?:(?P<m>[0-9]{1,12})m)?(?:(?P<s>[0-9]{1,12})s)?",
    re.ASCII,
)
_PLAIN_RE = re.compile(r"[0-9]{1,12}", re.ASCII)
_EXAMPLES = "use e.g. 45m, 1h30m or 2h"


def _show(text: str) -> str:
    """Quote user input for an error message, cut short so a pasted novel stays readable."""
    shown = text if len(text) <= 40 else text[:39] + "…"
    return f'"{shown}"'


def parse_duration(text: str) -> int:
    """Return the number of seconds that ``text`` spells.

    Accepts ``90s``, ``15m``, ``2h``, ``1h30m``, ``7d``, ``1d2h3m4s`` (units in
    decreasing order, each at most once, case-insensitive, no inner spaces) and
    plain seconds such as ``"900"``. ``0``/``0m`` parse to 0: whether zero is
    acceptable is the caller's decision (``MEETBOT_TOKEN_GRACE=0`` is fine, a
    zero-minute room is not).

    Raises ``ValueError`` with a message fit to show a person as is.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration; {_EXAMPLES}")
    raw = text.strip()
    if not raw:
        raise ValueError(f"a duration is missing; {_EXAMPLES}")
    s = raw.lower()
    if s.startswith("-"):
        raise ValueError(f"{_show(raw)} is not a duration: it cannot be negative; {_EXAMPLES}")
    seconds: int | None = None
    if _PLAIN_RE.fullmatch(s):
        seconds = int(s)
    else:
        m = _UNIT_RE.fullmatch(s)
        if m and any(m.group(u) is not None for u, _ in _UNITS):
            seconds = sum(int(m.group(u) or 0) * size for u, size in _UNITS)
    if seconds is None:
        if re.fullmatch(r"[0-9]*[.,][0-9]+[a-z]*|[0-9]+[.,][0-9]*[a-z]*", s, re.ASCII):
            raise ValueError(
                f"{_show(raw)} is not a duration: use whole numbers, e.g. 1h30m rather than 1.5h"
            )
        raise ValueError(f"{_show(raw)} is not a duration; {_EXAMPLES}")
    if seconds > MAX_DURATION:
        raise DurationTooLongError(
            f"{_show(raw)} is too long: the longest duration is {format_duration(MAX_DURATION)}"
        )
    return seconds


def format_duration(seconds: int) -> str:
    """Return the shortest canonical spelling of ``seconds`` (5400 → ``1h30m``, 0 → ``0s``).

    The output always parses back to the same number with :func:`parse_duration`,
    so it is safe to show in messages that invite the user to type it again.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError(f"seconds must be an int, not {type(seconds).__name__}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    if seconds == 0:
        return "0s"
    parts = []
    rest = seconds
    for unit, size in _UNITS:
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)
