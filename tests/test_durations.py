"""bot/durations.py: one duration syntax for configuration and /meet."""

from __future__ import annotations

import pytest

from bot.durations import (
    MAX_DURATION,
    DurationTooLongError,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1h30m", 5400),
        ("7d", 604800),
        ("1d2h3m4s", 93784),
        ("900", 900),
        ("0", 0),
        ("0m", 0),
        ("1H30M", 5400),
        ("  45m ", 2700),
        ("1h90m", 9000),
        ("015m", 900),
        ("3650d", MAX_DURATION),
    ],
)
def test_parse_accepts(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("banana", '"banana" is not a duration; use e.g. 45m, 1h30m or 2h'),
        ("", "missing"),
        ("   ", "missing"),
        ("-5m", "negative"),
        ("-5", "negative"),
        ("1.5h", "whole numbers"),
        (".5h", "whole numbers"),
        ("2,5h", "whole numbers"),
        ("30m1h", "not a duration"),  # units out of order
        ("1h1h", "not a duration"),  # unit twice
        ("1h 30m", "not a duration"),  # inner space
        ("h", "not a duration"),
        ("5w", "not a duration"),
        ("+5m", "not a duration"),
        ("٥m", "not a duration"),  # Arabic-Indic digit: int() would accept it
        ("１５m", "not a duration"),  # full-width digits
        ("3651d", "too long"),
        ("9" * 13, "not a duration"),
        ("9" * 5000 + "s", "not a duration"),
    ],
)
def test_parse_rejects_with_a_human_message(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_duration(text)
    assert fragment in str(e.value)


def test_too_long_has_its_own_type_so_callers_can_state_their_limit() -> None:
    with pytest.raises(DurationTooLongError):
        parse_duration("99999d")
    assert issubclass(DurationTooLongError, ValueError)


def test_long_input_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError) as e:
        parse_duration("x" * 500)
    assert len(str(e.value)) < 120


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (5400, "1h30m"),
        (3600, "1h"),
        (86400, "1d"),
        (93784, "1d2h3m4s"),
        (90061, "1d1h1m1s"),
        (86460, "1d1m"),
    ],
)
def test_format_is_shortest_canonical(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_format_rejects_negative_and_non_int() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)
    with pytest.raises(TypeError):
        format_duration(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_duration(True)  # type: ignore[arg-type]
