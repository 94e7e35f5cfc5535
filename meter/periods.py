"""Days, weeks and months in the database's timezone: the one place that knows what a period is.

A period is a half-open run of local dates `[start, end)`: a day is one date, a week its ISO
Monday to the next Monday (meter.weeks), a month its 1st to the next 1st. Its instants are
`[local midnight of start, local midnight of end)`, computed with zoneinfo, so a DST day lasts
23 or 25 hours and a month is exactly the sum of its days. Labels: day `2026-11-30`, week
`2026-W49`, month `2026-11`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from meter.weeks import Week, local_midnight_utc, parse_week, week_of

PeriodKind = Literal["day", "week", "month"]
PERIOD_KINDS: tuple[PeriodKind, ...] = get_args(PeriodKind)

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def as_date(value: object) -> date:
    """A date as a database hands it back: a date (PostgreSQL) or its ISO text (SQLite)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def local_date(moment: datetime, tz: ZoneInfo) -> date:
    """The local calendar date of an aware moment."""
    if moment.tzinfo is None:
        raise ValueError("local_date needs an aware datetime")
    return moment.astimezone(tz).date()


def _next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


@dataclass(frozen=True, order=True)
class Window:
    """One period: local dates `[start, end)` of one kind."""

    kind: PeriodKind
    start: date
    end: date  # exclusive

    @property
    def label(self) -> str:
        if self.kind == "day":
            return self.start.isoformat()
        if self.kind == "week":
            return Week(self.start).label
        return f"{self.start.year:04d}-{self.start.month:02d}"

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def week(self) -> Week | None:
        return Week(self.start) if self.kind == "week" else None

    def bounds(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The period's [start, end) as aware UTC datetimes."""
        return local_midnight_utc(self.start, tz), local_midnight_utc(self.end, tz)

    def next(self) -> Window:
        return window_at(self.kind, self.end)

    def previous(self) -> Window:
        return window_at(self.kind, self.start - timedelta(days=1))

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]

    def __str__(self) -> str:
        return self.label


def window_at(kind: PeriodKind, day: date) -> Window:
    """The period of kind `kind` that contains local date `day`."""
    if kind == "day":
        return Window("day", day, day + timedelta(days=1))
    if kind == "week":
        start = day - timedelta(days=day.weekday())
        return Window("week", start, start + timedelta(days=7))
    if kind == "month":
        start = day.replace(day=1)
        return Window("month", start, _next_month(start))
    raise ValueError(f"unknown period {kind!r}: use day, week or month")


def window_of(kind: PeriodKind, moment: datetime, tz: ZoneInfo) -> Window:
    """The period an aware moment falls in, in timezone `tz`."""
    if kind == "week":
        return window_of_week(week_of(moment, tz))
    return window_at(kind, local_date(moment, tz))


def window_of_week(week: Week) -> Window:
    return Window("week", week.start, week.next().start)


def parse_day(label: str) -> date:
    if not _DAY.match(label):
        raise ValueError(f"{label!r} is not a day: use YYYY-MM-DD, e.g. 2026-11-30")
    try:
        return date.fromisoformat(label)
    except ValueError:
        raise ValueError(f"{label!r} is not a calendar date") from None


def parse_month(label: str) -> Window:
    match = _MONTH.match(label)
    if not match:
        raise ValueError(f"{label!r} is not a month: use YYYY-MM, e.g. 2026-11")
    year, month = int(match.group(1)), int(match.group(2))
    if not (1 <= month <= 12) or year < 1:
        raise ValueError(f"{label!r} is not a month: the month must be 01 to 12")
    return window_at("month", date(year, month, 1))


def parse_period(kind: PeriodKind, label: str) -> Window:
    """A label of the given kind -> its Window (ValueError naming what is expected)."""
    label = label.strip()
    if kind == "day":
        return window_at("day", parse_day(label))
    if kind == "week":
        return window_of_week(parse_week(label))
    if kind == "month":
        return parse_month(label)
    raise ValueError(f"unknown period {kind!r}: use day, week or month")


def parse_any_period(label: str) -> Window:
    """A label of any kind, told apart by its shape: 2026-11-30, 2026-W49 or 2026-11."""
    label = label.strip()
    if _DAY.match(label):
        return parse_period("day", label)
    if _MONTH.match(label):
        return parse_period("month", label)
    if "W" in label.upper():
        return parse_period("week", label.upper())
    raise ValueError(
        f"{label!r} is not a period: use a day (2026-11-30), a week (2026-W49) or a month (2026-11)"
    )


def windows_between(first: Window, last: Window) -> list[Window]:
    """Every period from `first` to `last` inclusive (same kind), oldest first."""
    out = []
    current = first
    while current.start <= last.start:
        out.append(current)
        current = current.next()
    return out


def windows_back(last: Window, count: int) -> list[Window]:
    """`count` periods ending with `last`, oldest first."""
    out = [last]
    while len(out) < count:
        out.append(out[-1].previous())
    return out[::-1]


def month_start(day: date) -> date:
    return day.replace(day=1)


def months_of(first_day: date, last_day: date) -> list[date]:
    """The first days of the months that local dates first_day..last_day touch."""
    out, month = [], month_start(first_day)
    while month <= last_day:
        out.append(month)
        month = _next_month(month)
    return out


def whole_weeks(first_day: date, last_day: date) -> tuple[list[date], list[tuple[date, date]]]:
    """Split local days first_day..last_day into the Mondays of the whole ISO weeks inside them
    and the remaining runs of days (inclusive): a month read as ~4 weekly rows per group plus
    its edge days, instead of ~30 daily rows (exact: a week is the sum of its days)."""
    end = last_day + timedelta(days=1)
    monday = first_day + timedelta(days=(7 - first_day.weekday()) % 7)
    stop = end - timedelta(days=end.weekday())  # the Monday on or before `end`
    if monday >= stop:
        return [], [(first_day, last_day)]
    weeks = [monday + timedelta(days=7 * i) for i in range((stop - monday).days // 7)]
    edges = [(a, b - timedelta(days=1)) for a, b in ((first_day, monday), (stop, end)) if a < b]
    return weeks, edges


@dataclass(frozen=True)
class Pieces:
    """Local days first_day..last_day as the fewest roll-up rows per group: whole months
    (monthly_usage), then whole weeks in what is left (weekly_usage), then runs of days
    (daily_usage). Exact: a month and a week are sums of their days."""

    months: list[date]
    weeks: list[date]
    days: list[tuple[date, date]]  # inclusive runs


def pieces(
    first_day: date, last_day: date, skip_months: frozenset[date] | set[date] = frozenset()
) -> Pieces:
    """`skip_months`: months not to read whole (their monthly rows are being recomputed)."""
    months: list[date] = []
    rest: list[tuple[date, date]] = []  # runs of days outside the whole months, in order
    for month in months_of(first_day, last_day):
        a, b = max(first_day, month), min(last_day, _next_month(month) - timedelta(days=1))
        if a == month and b == _next_month(month) - timedelta(days=1) and month not in skip_months:
            months.append(month)
        elif rest and rest[-1][1] + timedelta(days=1) == a:
            rest[-1] = (rest[-1][0], b)  # one run across the boundary: its weeks stay whole
        else:
            rest.append((a, b))
    weeks: list[date] = []
    days: list[tuple[date, date]] = []
    for a, b in rest:
        w, d = whole_weeks(a, b)
        weeks += w
        days += d
    return Pieces(months, weeks, days)
