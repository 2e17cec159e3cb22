"""bot/schedules/rules.py: the <when> grammar, DST-safe next runs, storage round-trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.schedules.rules import (
    Recurrence,
    from_storage,
    next_run,
    parse_when,
    to_storage,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(dt: datetime, tz: str) -> str:
    return dt.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


def runs(rec: Recurrence, tz: str, after: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        nxt = next_run(rec, tz, after)
        assert nxt is not None
        assert nxt > after and nxt.tzinfo is UTC
        out.append(nxt)
        after = nxt
    return out


NOW = utc(2026, 11, 27, 12, 0)  # a Friday; 13:00 in Berlin


# --- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "kind", "spec", "described"),
    [
        ("at 14:30", "once", "2026-11-27T14:30:00", "once on 2026-11-27 at 14:30"),
        ("at 9:05", "once", "2026-11-28T09:05:00", "once on 2026-11-28 at 09:05"),
        ("at 2026-12-01 10:00", "once", "2026-12-01T10:00:00", "once on 2026-12-01 at 10:00"),
        ("at 2026-12-01 10:00:30", "once", "2026-12-01T10:00:30", "once on 2026-12-01 at 10:00:30"),
        ("at 2026-12-01T10:00", "once", "2026-12-01T10:00:00", "once on 2026-12-01 at 10:00"),
        ("every day at 09:00", "cron", "0 9 * * *", "every day at 09:00"),
        ("every weekday at 09:30", "cron", "30 9 * * mon-fri", "every weekday at 09:30"),
        ("Every Weekday At 9:30", "cron", "30 9 * * mon-fri", "every weekday at 09:30"),
        (
            "every mon,wed,fri at 16:00",
            "cron",
            "0 16 * * mon,wed,fri",
            "every mon,wed,fri at 16:00",
        ),
        (
            "every fri, mon and wed at 4pm",
            "cron",
            "0 16 * * mon,wed,fri",
            "every mon,wed,fri at 16:00",
        ),
        ("every monday at 08:15", "cron", "15 8 * * mon", "every mon at 08:15"),
        ("every weekend at 9am", "cron", "0 9 * * sat,sun", "every weekend at 09:00"),
        ("every tue-thu at 12:00", "cron", "0 12 * * tue-thu", "every tue-thu at 12:00"),
        ('cron "30 9 * * 1-5"', "cron", "30 9 * * mon-fri", "every weekday at 09:30"),
        ("cron “0 10 * * 0”", "cron", "0 10 * * sun", "every sun at 10:00"),
        ('cron "0 10 * * 7"', "cron", "0 10 * * sun", "every sun at 10:00"),
        ('cron "0 10 * * 5-7"', "cron", "0 10 * * fri-sun", "every fri-sun at 10:00"),
        (
            'cron "0 10 * * */2"',
            "cron",
            "0 10 * * tue,thu,sat,sun",
            "every tue,thu,sat,sun at 10:00",
        ),
        ('cron "0 9 1 * *"', "cron", "0 9 1 * *", 'cron "0 9 1 * *"'),
        ("cron 0 9 1 jan *", "cron", "0 9 1 jan *", 'cron "0 9 1 jan *"'),
    ],
)
def test_parse_when(when: str, kind: str, spec: str, described: str) -> None:
    rec = parse_when(when, now_utc=NOW, tz=BERLIN)
    assert (rec.kind, rec.spec) == (kind, spec)
    assert rec.describe() == described
    assert rec.describe(BERLIN) == f"{described} ({BERLIN})"


def test_tokens_are_accepted_too() -> None:
    rec = parse_when(["every", "day", "at", "09:00"], now_utc=NOW, tz=BERLIN)
    assert rec.spec == "0 9 * * *"


def test_at_time_is_the_next_occurrence_strictly_after_now() -> None:
    # 13:00 local now: 13:00 itself is not "after now", so it means tomorrow
    assert parse_when("at 13:00", now_utc=NOW, tz=BERLIN).spec == "2026-11-28T13:00:00"
    assert parse_when("at 13:01", now_utc=NOW, tz=BERLIN).spec == "2026-11-27T13:01:00"
    # the user's zone decides the date: in New York it is 07:00
    assert parse_when("at 08:00", now_utc=NOW, tz=NEW_YORK).spec == "2026-11-27T08:00:00"


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        ("at 25:00", '"25:00" is not a time of day'),
        ("at 12:60", "not a time of day"),
        ("at 13pm", "not a time of day"),
        ("every day at 24:00", "not a time of day"),
        ("every day at 09:00:30", "without seconds"),
        ("every funday at 10:00", '"funday" is not a day'),
        ("every day", "say when"),
        ("every at 10:00", "say when"),
        ("at 2026-02-30 10:00", '"2026-02-30" is not a date'),
        ("at 2026-11-27 12:59", "is in the past"),
        ("at 2020-01-01 10:00", "is in the past"),
        ("at 2099-01-01 10:00", "too far ahead"),
        ("at tomorrow", "is not a time"),
        ("tomorrow at 10", "is not a time"),
        ("", "when should it happen"),
        ("at", "is not a time"),
        ('cron "* * *"', "has 3 fields; it needs 5"),
        ('cron "0 9 * * * *"', "has 6 fields"),
        ('cron "61 * * * *"', "minute"),
        ('cron "0 24 * * *"', "hour"),
        ('cron "0 9 32 * *"', "day of month"),
        ('cron "0 9 * 13 *"', "month"),
        ('cron "0 9 * * 8"', "day of week"),
        ('cron "0 9 * * funday"', "day of week"),
        ('cron "a b c d e"', 'cron "a b c d e"'),
        ('cron ""', "needs an expression"),
        ('cron "0 0 30 2 *"', "never happens"),
        ('cron "*/5 * * * *"', "every 5 minutes"),
        ('cron "0,30 9 * * *"', "at most once every 60 minutes"),
    ],
)
def test_parse_when_errors(when: str, fragment: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_when(when, now_utc=NOW, tz=BERLIN)
    assert fragment.lower() in str(e.value).lower()


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../../etc/passwd", "Europe"])
def test_unknown_time_zone(tz: str) -> None:
    with pytest.raises(ValueError, match="time zone"):
        parse_when("at 10:00", now_utc=NOW, tz=tz)


def test_min_interval_can_be_relaxed() -> None:
    rec = parse_when('cron "*/15 * * * *"', now_utc=NOW, tz="UTC", min_interval=600)
    assert runs(rec, "UTC", NOW, 2) == [utc(2026, 11, 27, 12, 15), utc(2026, 11, 27, 12, 30)]


# --- next runs -----------------------------------------------------------------------


def test_once() -> None:
    rec = parse_when("at 2026-12-01 10:00", now_utc=NOW, tz=BERLIN)
    assert next_run(rec, BERLIN, NOW) == utc(2026, 12, 1, 9, 0)
    assert next_run(rec, BERLIN, utc(2026, 12, 1, 9, 0)) is None  # strictly after
    assert next_run(rec, BERLIN, utc(2027, 1, 1)) is None


def test_strictly_after() -> None:
    rec = Recurrence("cron", "0 9 * * *")
    first = next_run(rec, "UTC", utc(2026, 12, 1, 8, 59, 59))
    assert first == utc(2026, 12, 1, 9, 0)
    assert next_run(rec, "UTC", first) == utc(2026, 12, 2, 9, 0)
    assert next_run(rec, "UTC", first - timedelta(microseconds=1)) == first


def test_naive_after_is_taken_as_utc() -> None:
    rec = Recurrence("cron", "0 9 * * *")
    assert next_run(rec, "UTC", datetime(2026, 12, 1, 8)) == utc(2026, 12, 1, 9)


def test_every_weekday_skips_weekends() -> None:
    rec = parse_when("every weekday at 09:30", now_utc=NOW, tz=BERLIN)
    got = [local(r, BERLIN) for r in runs(rec, BERLIN, NOW, 6)]
    assert got == [
        "2026-11-30 09:30 CET",  # Monday: Sat 28 and Sun 29 skipped
        "2026-12-01 09:30 CET",
        "2026-12-02 09:30 CET",
        "2026-12-03 09:30 CET",
        "2026-12-04 09:30 CET",
        "2026-12-07 09:30 CET",
    ]


def test_cron_sunday_is_zero_like_crontab() -> None:
    rec = parse_when('cron "0 10 * * 0"', now_utc=NOW, tz="UTC")
    assert next_run(rec, "UTC", NOW) == utc(2026, 11, 29, 10)  # Sunday
    rec = parse_when('cron "0 10 * * 1-5"', now_utc=NOW, tz="UTC")
    assert next_run(rec, "UTC", NOW) == utc(2026, 11, 30, 10)  # Monday, not Saturday


def test_cron_day_of_month_or_day_of_week() -> None:
    # crontab: "on the 1st, and on every Monday", not "on Mondays that are the 1st"
    rec = parse_when('cron "0 9 1 * 1"', now_utc=NOW, tz="UTC")
    got = runs(rec, "UTC", NOW, 3)
    assert got == [utc(2026, 11, 30, 9), utc(2026, 12, 1, 9), utc(2026, 12, 7, 9)]


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [
        # Berlin: CET→CEST on 2026-03-29, CEST→CET on 2026-10-25
        (
            BERLIN,
            utc(2026, 3, 27, 12),
            [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7)],
        ),
        (
            BERLIN,
            utc(2026, 10, 23, 12),
            [utc(2026, 10, 24, 7), utc(2026, 10, 25, 8), utc(2026, 10, 26, 8)],
        ),
        # New York: EST→EDT on 2026-03-08, EDT→EST on 2026-11-01
        (
            NEW_YORK,
            utc(2026, 3, 6, 18),
            [utc(2026, 3, 7, 14), utc(2026, 3, 8, 13), utc(2026, 3, 9, 13)],
        ),
        (
            NEW_YORK,
            utc(2026, 10, 30, 18),
            [utc(2026, 10, 31, 13), utc(2026, 11, 1, 14), utc(2026, 11, 2, 14)],
        ),
    ],
)
def test_every_day_keeps_local_time_across_dst(
    tz: str, start: datetime, expected: list[datetime]
) -> None:
    rec = parse_when("every day at 09:00", now_utc=start, tz=tz)
    got = runs(rec, tz, start, 3)
    assert got == expected
    assert {r.astimezone(ZoneInfo(tz)).strftime("%H:%M") for r in got} == {"09:00"}


@pytest.mark.parametrize(
    ("tz", "start", "gap_day", "gap_end", "next_day"),
    [
        (
            BERLIN,
            utc(2026, 3, 27, 12),
            "2026-03-29 03:00 CEST",
            utc(2026, 3, 29, 1),
            "2026-03-30 02:30 CEST",
        ),
        (
            NEW_YORK,
            utc(2026, 3, 6, 12),
            "2026-03-08 03:00 EDT",
            utc(2026, 3, 8, 7),
            "2026-03-09 02:30 EDT",
        ),
    ],
)
def test_spring_gap_fires_once_at_the_end_of_the_gap(
    tz: str, start: datetime, gap_day: str, gap_end: datetime, next_day: str
) -> None:
    rec = parse_when("every day at 02:30", now_utc=start, tz=tz)
    got = runs(rec, tz, start, 3)
    assert [local(r, tz) for r in got][1:] == [gap_day, next_day]
    assert got[1] == gap_end


def test_spring_gap_every_quarter_hour_collapses_into_one_run() -> None:
    rec = Recurrence("cron", "*/15 * * * *")
    after = utc(2026, 3, 29, 0, 50)  # 01:50 CET
    got = [local(r, BERLIN) for r in runs(rec, BERLIN, after, 4)]
    assert got == [
        "2026-03-29 03:00 CEST",  # 02:00, 02:15, 02:30, 02:45 and 03:00 all land here, once
        "2026-03-29 03:15 CEST",
        "2026-03-29 03:30 CEST",
        "2026-03-29 03:45 CEST",
    ]


def test_spring_gap_does_not_swallow_runs_just_after_it() -> None:
    rec = Recurrence("cron", "30 2,3 * * *")
    got = [local(r, BERLIN) for r in runs(rec, BERLIN, utc(2026, 3, 28, 22), 3)]
    assert got == ["2026-03-29 03:00 CEST", "2026-03-29 03:30 CEST", "2026-03-30 02:30 CEST"]


@pytest.mark.parametrize(
    ("tz", "when", "start", "first", "then"),
    [
        (
            BERLIN,
            "every day at 02:30",
            utc(2026, 10, 24, 12),
            utc(2026, 10, 25, 0, 30),
            utc(2026, 10, 26, 1, 30),
        ),
        (
            NEW_YORK,
            "every day at 01:30",
            utc(2026, 10, 31, 12),
            utc(2026, 11, 1, 5, 30),
            utc(2026, 11, 2, 6, 30),
        ),
    ],
)
def test_autumn_fold_fires_once_at_the_first_occurrence(
    tz: str, when: str, start: datetime, first: datetime, then: datetime
) -> None:
    rec = parse_when(when, now_utc=start, tz=tz)
    assert runs(rec, tz, start, 2) == [first, then]


def test_hourly_through_the_fold_does_not_repeat_a_wall_time() -> None:
    rec = Recurrence("cron", "0 * * * *")
    got = [local(r, BERLIN) for r in runs(rec, BERLIN, utc(2026, 10, 24, 23, 30), 3)]
    assert got == ["2026-10-25 02:00 CEST", "2026-10-25 03:00 CET", "2026-10-25 04:00 CET"]


def test_once_in_gap_and_fold() -> None:
    start = utc(2026, 3, 1)
    gap = parse_when("at 2026-03-29 02:30", now_utc=start, tz=BERLIN)
    assert next_run(gap, BERLIN, start) == utc(2026, 3, 29, 1, 0)
    fold = parse_when("at 2026-10-25 02:30", now_utc=start, tz=BERLIN)
    assert next_run(fold, BERLIN, start) == utc(2026, 10, 25, 0, 30)


def test_at_time_on_a_gap_day() -> None:
    # Saturday evening before the change: "at 02:30" means Sunday, which has no 02:30
    rec = parse_when("at 02:30", now_utc=utc(2026, 3, 28, 20), tz=BERLIN)
    assert rec.spec == "2026-03-29T02:30:00"
    assert next_run(rec, BERLIN, utc(2026, 3, 28, 20)) == utc(2026, 3, 29, 1)


def test_same_rule_in_other_zone() -> None:
    rec = parse_when("every day at 09:00", now_utc=NOW, tz=BERLIN)
    assert next_run(rec, "Asia/Tokyo", NOW) == utc(2026, 11, 28, 0)
    with pytest.raises(ValueError, match="time zone"):
        next_run(rec, "Nowhere/Land", NOW)


# --- storage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rec",
    [
        Recurrence("once", "2026-12-01T10:00:00"),
        Recurrence("cron", "30 9 * * mon-fri"),
        Recurrence("cron", "0 9 1 * *"),
    ],
)
def test_storage_round_trip(rec: Recurrence) -> None:
    stored = to_storage(rec)
    assert isinstance(stored, str)
    assert from_storage(stored) == rec


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "once",
        "once:",
        "daily:0 9 * * *",
        "cron:0 9 * *",
        "once:tomorrow",
        "once:2026-12-01T10:00:00+01:00",
    ],
)
def test_from_storage_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        from_storage(bad)


def test_recurrence_kind_is_checked() -> None:
    with pytest.raises(ValueError):
        Recurrence("weekly", "x")  # type: ignore[arg-type]


# --- properties ----------------------------------------------------------------------

ZONES = st.sampled_from(
    [
        BERLIN,
        NEW_YORK,
        "UTC",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
        "America/Santiago",
        "Pacific/Chatham",
    ]
)
INSTANTS = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60), ZONES)
def test_parse_when_only_raises_value_error(text: str, tz: str) -> None:
    try:
        rec = parse_when(text, now_utc=NOW, tz=tz)
    except ValueError:
        return
    assert rec.kind in ("once", "cron")
    assert from_storage(to_storage(rec)) == rec


def test_a_gap_at_midnight_still_fires_that_day_at_the_gap_end() -> None:
    # America/Santiago jumps from 00:00 to 01:00 on 2025-09-07; APScheduler
    # alone skipped the whole day (found by the property test below).
    rec = parse_when(
        "every day at 00:00", now_utc=datetime(2025, 9, 1, tzinfo=UTC), tz="America/Santiago"
    )
    got = next_run(rec, "America/Santiago", datetime(2025, 9, 6, 4, 0, tzinfo=UTC))
    local = got.astimezone(ZoneInfo("America/Santiago"))
    assert (local.date().isoformat(), local.hour, local.minute) == ("2025-09-07", 1, 0)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 23), st.integers(0, 59), ZONES, INSTANTS)
def test_every_day_runs_daily_at_that_wall_time_or_gap_end(
    hour: int, minute: int, tz: str, after: datetime
) -> None:
    rec = parse_when(f"every day at {hour:02d}:{minute:02d}", now_utc=after, tz=tz)
    nxt = next_run(rec, tz, after)
    assert nxt is not None and after < nxt <= after + timedelta(days=1, hours=2)
    wall = nxt.astimezone(ZoneInfo(tz))
    if (wall.hour, wall.minute) != (hour, minute):
        # only allowed when that wall time does not exist that day (a gap)
        want = wall.replace(hour=hour, minute=minute, tzinfo=None)
        round_trip = want.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC).astimezone(ZoneInfo(tz))
        assert round_trip.replace(tzinfo=None) != want
    assert next_run(rec, tz, nxt) > nxt + timedelta(hours=20)
