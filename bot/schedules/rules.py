"""Recurrence rules of team rooms and their next run, DST-safe (pure).

A schedule is stored as a :class:`Recurrence` plus the IANA time zone of the
person who made it; the scheduler asks :func:`next_run` for the next UTC
instant. Wall-clock semantics are what people expect from a calendar: "every
day at 09:00" in Europe/Berlin stays 09:00 local across the DST changes.

Two DST edge cases are decided here once, so the scheduler never has to:

* a local time that does not exist (spring gap, e.g. 02:30 on the day clocks
  jump from 02:00 to 03:00) fires once that day, at the first valid instant
  after the gap (03:00 local), like Vixie cron;
* a local time that happens twice (autumn fold, e.g. 02:30 when clocks go back
  from 03:00 to 02:00) fires once, at its first occurrence.

Recurring rules are kept as 5-field crontab strings. The day-of-week field is
always stored with names (``mon-fri``), never numbers, because APScheduler 3
numbers weekdays from Monday=0 while crontab uses Sunday=0; names mean the same
thing to both. Use :func:`next_run` rather than feeding ``spec`` to
APScheduler directly: it also applies crontab's rule that a restricted
day-of-month and a restricted day-of-week are OR-ed, not AND-ed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

__all__ = [
    "MIN_INTERVAL",
    "WHEN_USAGE",
    "Recurrence",
    "from_storage",
    "next_run",
    "parse_when",
    "to_storage",
]

#: Shortest allowed gap between two runs of a recurring rule. A team room every
#: minute would DM a whole channel every minute: that is abuse, not a meeting.
MIN_INTERVAL = 3600
#: How far ahead a one-off may be scheduled (also keeps datetimes far from year 9999).
MAX_YEARS_AHEAD = 5

WHEN_USAGE = (
    "use `at 14:30`, `at 2026-12-01 10:00`, `every day at 09:00`, "
    '`every weekday at 09:30`, `every mon,wed,fri at 16:00` or `cron "30 9 * * 1-5"`'
)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler order, Monday first
_DAY_ALIASES = {
    "mon": 0, "monday": 0, "mondays": 0,
    "tue": 1, "tues": 1, "tuesday": 1, "tuesdays": 1,
    "wed": 2, "weds": 2, "wednesday": 2, "wednesdays": 2,
    "thu": 3, "thur": 3, "thurs": 3, "thursday": 3, "thursdays": 3,
    "fri": 4, "friday": 4, "fridays": 4,
    "sat": 5, "saturday": 5, "saturdays": 5,
    "sun": 6, "sunday": 6, "sundays": 6,
}  # fmt: skip
_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‟": '"', "″": '"'})

_TIME_RE = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", re.ASCII)
_AMPM_RE = re.compile(r"(\d{1,2})(?::(\d{2}))?(am|pm)", re.ASCII)
_DATE_RE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})", re.ASCII)


@dataclass(frozen=True)
class Recurrence:
    """When a team room opens.

    ``kind`` is ``"once"`` (``spec`` = local ISO datetime, e.g.
    ``2026-12-01T10:00:00``) or ``"cron"`` (``spec`` = 5-field crontab string
    with a named day-of-week field, e.g. ``30 9 * * mon-fri``). Both are wall
    times in the schedule's time zone, which is stored beside it.
    """

    kind: Literal["once", "cron"]
    spec: str

    def __post_init__(self) -> None:
        if self.kind not in ("once", "cron"):
            raise ValueError(f"unknown recurrence kind {self.kind!r}")

    def describe(self, tz: str | None = None) -> str:
        """A phrase for people, reusing the /meet grammar's words where possible.

        ``every weekday at 09:30``, ``once on 2026-12-01 at 10:00``,
        ``cron "0 9 1 * *"``; with ``tz`` the zone is appended in parentheses.
        """
        suffix = f" ({tz})" if tz else ""
        if self.kind == "once":
            dt = datetime.fromisoformat(self.spec)
            return f"once on {dt:%Y-%m-%d} at {_hhmm(dt.time())}{suffix}"
        fields = self.spec.split()
        if (
            len(fields) == 5
            and fields[0].isdigit()
            and fields[1].isdigit()
            and fields[2] == "*"
            and fields[3] == "*"
        ):
            at = f"at {int(fields[1]):02d}:{int(fields[0]):02d}"
            dow = fields[4]
            if dow == "*":
                return f"every day {at}{suffix}"
            if dow == "mon-fri":
                return f"every weekday {at}{suffix}"
            if dow == "sat,sun":
                return f"every weekend {at}{suffix}"
            if re.fullmatch(r"[a-z]{3}(-[a-z]{3})?(,[a-z]{3}(-[a-z]{3})?)*", dow):
                return f"every {dow} {at}{suffix}"
        return f'cron "{self.spec}"{suffix}'


def _hhmm(t: time) -> str:
    return f"{t:%H:%M:%S}" if t.second else f"{t:%H:%M}"


def _zone(tz: str) -> tzinfo:
    """The IANA zone ``tz``; ValueError naming it when it is unknown."""
    if not isinstance(tz, str) or not tz.strip():
        raise ValueError("a time zone is missing (e.g. Europe/Berlin)")
    try:
        return ZoneInfo(tz.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f'"{tz}" is not a known time zone (e.g. Europe/Berlin)') from None


def _as_utc(dt: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (the store keeps UTC)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _resolve(wall: datetime, zone: tzinfo) -> datetime:
    """The UTC instant at which local wall time ``wall`` happens in ``zone``.

    Ambiguous (fold) → first occurrence. Non-existent (gap) → the first valid
    instant after the gap, i.e. the transition itself.
    """
    wall = wall.replace(tzinfo=None, fold=0)
    u0 = wall.replace(tzinfo=zone).astimezone(UTC)
    if u0.astimezone(zone).replace(tzinfo=None) == wall:
        return u0
    u1 = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = min(u0, u1), max(u0, u1)
    after = hi.astimezone(zone).utcoffset()
    # Binary search, to the second, for the first instant with the new offset.
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp())
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(zone).utcoffset() == after:
            hi_s = mid
        else:
            lo_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


# --- parsing -------------------------------------------------------------------------


def _parse_time(text: str, *, seconds: bool = True) -> time:
    """``HH:MM[:SS]``, ``9am``, ``5:30pm`` → time; ValueError naming the text otherwise."""
    bad = f'"{text}" is not a time of day: use HH:MM from 00:00 to 23:59'
    m = _TIME_RE.fullmatch(text)
    if m:
        h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if m.group(3) is not None and not seconds:
            raise ValueError(f'"{text}": give the time as HH:MM, without seconds')
    else:
        m = _AMPM_RE.fullmatch(text)
        if not m:
            raise ValueError(bad)
        h, mi, s = int(m.group(1)), int(m.group(2) or 0), 0
        if not 1 <= h <= 12:
            raise ValueError(bad)
        h = h % 12 + (12 if m.group(3) == "pm" else 0)
    if h > 23 or mi > 59 or s > 59:
        raise ValueError(bad)
    return time(h, mi, s)


def _parse_days(text: str) -> list[int]:
    """``day``/``weekday``/``weekend``/``mon,wed,fri`` → sorted Monday-first day numbers."""
    if text in ("day", "days", "daily"):
        return list(range(7))
    if text in ("weekday", "weekdays"):
        return list(range(5))
    if text in ("weekend", "weekends"):
        return [5, 6]
    days: set[int] = set()
    for item in filter(None, re.split(r"[,\s]+|\band\b", text)):
        first, dash, last = item.partition("-")
        for name in (first, last) if dash else (first,):
            if name not in _DAY_ALIASES:
                raise ValueError(
                    f'"{name}" is not a day: use day, weekday or day names like mon,wed,fri'
                )
        a, b = _DAY_ALIASES[first], _DAY_ALIASES[last if dash else first]
        days.update(d % 7 for d in range(a, (b if b >= a else b + 7) + 1))
    if not days:
        raise ValueError("which days? use day, weekday or day names like mon,wed,fri")
    return sorted(days)


def _dow_field(days: Sequence[int]) -> str:
    """Monday-first day numbers → a crontab day-of-week field with names (``mon-fri``)."""
    days = sorted(set(days))
    if len(days) == 7:
        return "*"
    parts: list[str] = []
    i = 0
    while i < len(days):
        j = i
        while j + 1 < len(days) and days[j + 1] == days[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{_DAYS[days[i]]}-{_DAYS[days[j]]}")
        else:
            parts.extend(_DAYS[d] for d in days[i : j + 1])
        i = j + 1
    return ",".join(parts)


def _cron_dow(field: str) -> str:
    """A crontab day-of-week field (Sunday=0 or 7, names, ranges, steps) → named field.

    Expanding to a set and back removes the Monday=0 / Sunday=0 disagreement
    between APScheduler 3 and crontab.
    """
    names = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}

    def value(v: str) -> int:
        if v.isdigit() and int(v) <= 7:
            return int(v) % 7
        if v in names:
            return names[v]
        raise ValueError(f'day of week: "{v}" is not a day (0-7 or sun-sat)')

    days: set[int] = set()  # Sunday=0
    for item in field.split(","):
        rng, _, step_s = item.partition("/")
        if step_s and not (step_s.isdigit() and int(step_s) > 0):
            raise ValueError(f'day of week: "{item}" has a bad step')
        step = int(step_s) if step_s else 1
        if rng == "*":
            seq = list(range(7))
        elif "-" in rng:
            a_s, _, b_s = rng.partition("-")
            a, b = value(a_s), value(b_s)
            if b_s == "7":
                b = 7
            if a > b:  # a name range that wraps (sat-mon)
                b += 7
            seq = [d % 7 for d in range(a, b + 1)]
        else:
            start = value(rng)
            seq = [start] if not step_s else list(range(start, 7))
        days.update(seq[::step])
    # Sunday=0 → Monday-first numbering
    return _dow_field([(d - 1) % 7 for d in days])


def _cron_spec(expr: str, zone: tzinfo) -> str:
    """Validate a crontab expression and return its canonical stored form."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f'cron "{expr}" has {len(fields)} fields; it needs 5: minute hour day-of-month '
            'month day-of-week, e.g. cron "30 9 * * 1-5"'
        )
    fields = [f.lower() for f in fields]
    try:
        fields[4] = _cron_dow(fields[4])
    except ValueError as e:
        raise ValueError(f'cron "{expr}": {e}') from None
    kwargs = ("minute", "hour", "day", "month", "day_of_week")
    for label, key, value in zip(_CRON_FIELDS, kwargs, fields, strict=True):
        try:
            CronTrigger(**{key: value}, timezone=zone)
        except ValueError as e:
            raise ValueError(f'cron "{expr}": {label}: {e}') from None
    spec = " ".join(fields)
    try:
        for sub in _split_or(spec):
            CronTrigger.from_crontab(sub, timezone=zone)
    except ValueError as e:
        raise ValueError(f'cron "{expr}": {e}') from None
    return spec


def _split_or(spec: str) -> list[str]:
    """Crontab ORs a restricted day-of-month with a restricted day-of-week; APScheduler ANDs.

    Return one spec per alternative (one spec when there is nothing to OR).
    """
    m, h, dom, mon, dow = spec.split()
    if dom.startswith("*") or dow.startswith("*"):
        return [spec]
    return [f"{m} {h} {dom} {mon} *", f"{m} {h} * {mon} {dow}"]


def _tokens(when: str | Sequence[str]) -> str:
    text = when if isinstance(when, str) else " ".join(when)
    text = text.translate(_QUOTES)
    return " ".join(text.split())


def parse_when(
    tokens_or_text: str | Sequence[str],
    *,
    now_utc: datetime,
    tz: str,
    min_interval: int = MIN_INTERVAL,
) -> Recurrence:
    """Parse the ``<when>`` of ``/meet schedule`` in the requester's time zone ``tz``.

    * ``at HH:MM`` → the next such local time strictly after ``now_utc`` (kind once);
    * ``at YYYY-MM-DD HH:MM[:SS]`` → once, must be in the future;
    * ``every day|weekday|weekend|mon,wed,fri at HH:MM`` → cron;
    * ``cron "m h dom mon dow"`` (crontab semantics, Sunday = 0) → cron.

    Raises ``ValueError`` with a message for people: bad times, bad day names,
    invalid cron fields, a time in the past, an unknown zone, a rule that never
    fires or fires more often than ``min_interval`` seconds.
    """
    zone = _zone(tz)
    now = _as_utc(now_utc)
    text = _tokens(tokens_or_text)
    low = text.lower()
    low = re.sub(r"(\d)\s+(am|pm)\b", r"\1\2", low)
    words = low.split()
    if not words:
        raise ValueError(f"when should it happen? {WHEN_USAGE}")
    head = words[0]

    if head == "at":
        args = words[1:]
        if len(args) == 1 and "t" in args[0] and _DATE_RE.match(args[0]):
            args = args[0].split("t", 1)
        if len(args) == 1:
            t = _parse_time(args[0])
            local_today = now.astimezone(zone).date()
            for day in (local_today, local_today + timedelta(days=1)):
                wall = datetime.combine(day, t)
                if _resolve(wall, zone) > now:
                    return Recurrence("once", wall.isoformat())
            wall = datetime.combine(local_today + timedelta(days=2), t)  # unreachable in practice
            return Recurrence("once", wall.isoformat())
        if len(args) == 2:
            d = _parse_date(args[0])
            t = _parse_time(args[1])
            local_now = now.astimezone(zone)
            if d.year > local_now.year + MAX_YEARS_AHEAD:
                raise ValueError(
                    f"{d.isoformat()} is too far ahead: schedule at most "
                    f"{MAX_YEARS_AHEAD} years in advance"
                )
            wall = datetime.combine(d, t)
            if _resolve(wall, zone) <= now:
                raise ValueError(
                    f"{d.isoformat()} {_hhmm(t)} is in the past (it is now "
                    f"{local_now:%Y-%m-%d %H:%M} in {tz})"
                )
            return Recurrence("once", wall.isoformat())
        raise ValueError(f'"{text}" is not a time: {WHEN_USAGE}')

    if head == "every":
        m = re.fullmatch(r"every (.+?) at (\S+)", low)
        if not m:
            raise ValueError(f'"{text}": say when on those days, e.g. every weekday at 09:30')
        days = _parse_days(m.group(1).strip())
        t = _parse_time(m.group(2), seconds=False)
        rec = Recurrence("cron", f"{t.minute} {t.hour} * * {_dow_field(days)}")
        _check_fires(rec, zone, now, min_interval)
        return rec

    if head == "cron":
        rest = text[len("cron") :].strip()
        if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "\"'`":
            rest = rest[1:-1].strip()
        if not rest:
            raise ValueError('cron needs an expression, e.g. cron "30 9 * * 1-5"')
        rec = Recurrence("cron", _cron_spec(rest, zone))
        _check_fires(rec, zone, now, min_interval)
        return rec

    raise ValueError(f'"{text}" is not a time: {WHEN_USAGE}')


def _parse_date(text: str) -> date:
    m = _DATE_RE.fullmatch(text)
    if m:
        try:
            return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            pass
    raise ValueError(f'"{text}" is not a date: use YYYY-MM-DD, e.g. 2026-12-01')


def _check_fires(rec: Recurrence, zone: tzinfo, now: datetime, min_interval: int) -> None:
    """Refuse rules that never fire or fire too often (sampled over the next runs)."""
    runs: list[datetime] = []
    after = now
    for _ in range(8):
        nxt = _next_cron(rec.spec, zone, after)
        if nxt is None:
            break
        runs.append(nxt)
        after = nxt
    if not runs:
        raise ValueError(f'cron "{rec.spec}" never happens')
    for a, b in zip(runs, runs[1:], strict=False):
        if (b - a).total_seconds() < min_interval:
            raise ValueError(
                f"{rec.describe()} would open a room every {int((b - a).total_seconds()) // 60} "
                f"minutes; team rooms may open at most once every {min_interval // 60} minutes"
            )


# --- next run ------------------------------------------------------------------------


def _next_single(trigger: CronTrigger, zone: tzinfo, after: datetime) -> datetime | None:
    """Next fire of one crontab rule strictly after ``after``, with our DST rules.

    ``trigger`` runs on wall-clock time (built with ``timezone=UTC`` over naive
    local times): APScheduler's own zone handling silently skips a day whose
    time falls in a spring gap (e.g. 00:00 in America/Santiago on the night
    clocks jump to 01:00). Each wall time is then mapped to an instant by
    ``_resolve`` (gap → its end, fold → the first pass), which never moves
    backwards, so the first instant after ``after`` is the answer.
    """
    # Start a little before ``after``'s wall time: around a fold the wall clock
    # runs an hour back, and a wall time "before" it may still lie after it.
    wall = after.astimezone(zone).replace(tzinfo=None) - timedelta(hours=3)
    search = wall.replace(tzinfo=UTC)
    for _ in range(10_000):
        cand = trigger.get_next_fire_time(None, search + timedelta(microseconds=1))
        if cand is None:
            return None
        eff = _resolve(cand.replace(tzinfo=None), zone)
        if eff > after:
            return eff
        search = cand
    return None


def _next_cron(spec: str, zone: tzinfo, after: datetime) -> datetime | None:
    found = [
        _next_single(CronTrigger.from_crontab(sub, timezone=UTC), zone, after)
        for sub in _split_or(spec)
    ]
    return min((f for f in found if f is not None), default=None)


def next_run(rec: Recurrence, tz: str, after_utc: datetime) -> datetime | None:
    """The next run strictly after ``after_utc``, as an aware UTC datetime.

    ``None`` when a one-off is not after ``after_utc`` or a cron rule never
    fires again. Wall times follow ``tz`` across DST (see the module docs).
    """
    zone = _zone(tz)
    after = _as_utc(after_utc)
    if rec.kind == "once":
        t = _resolve(datetime.fromisoformat(rec.spec), zone)
        return t if t > after else None
    return _next_cron(rec.spec, zone, after)


def to_storage(rec: Recurrence) -> str:
    """``once:2026-12-01T10:00:00`` or ``cron:30 9 * * mon-fri``: readable in the database."""
    return f"{rec.kind}:{rec.spec}"


def from_storage(s: str) -> Recurrence:
    """Inverse of :func:`to_storage`; ValueError on anything it could not have written."""
    kind, sep, spec = s.partition(":")
    if not sep or kind not in ("once", "cron") or not spec.strip():
        raise ValueError(f"not a stored recurrence: {s!r}")
    if kind == "once":
        try:
            dt = datetime.fromisoformat(spec)
        except ValueError:
            raise ValueError(f"not a stored recurrence: {s!r}") from None
        if dt.tzinfo is not None:
            raise ValueError(f"a stored one-off must be a local time: {s!r}")
        return Recurrence("once", spec)
    if len(spec.split()) != 5:
        raise ValueError(f"not a stored recurrence: {s!r}")
    return Recurrence("cron", spec)
