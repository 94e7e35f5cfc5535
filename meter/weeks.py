"""ISO-week arithmetic in the database's timezone: the one place that knows what a week is.

A week runs from Monday 00:00 local time to the next Monday 00:00 (half-open). Across a DST
change it lasts 167 or 169 hours; its label is the ISO year and week, `YYYY-Www`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_LABEL = re.compile(r"^(\d{4})-W(\d{2})$")


def load_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r}: use an IANA name such as Europe/Paris"
        ) from None


@dataclass(frozen=True, order=True)
class Week:
    """An ISO week, identified by its local Monday."""

    start: date

    @property
    def label(self) -> str:
        year, number, _ = self.start.isocalendar()
        return f"{year:04d}-W{number:02d}"

    def next(self) -> Week:
        return Week(self.start + timedelta(days=7))

    def previous(self) -> Week:
        return Week(self.start - timedelta(days=7))

    def bounds(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The week's [start, end) as aware UTC datetimes."""
        return local_midnight_utc(self.start, tz), local_midnight_utc(self.next().start, tz)

    def __str__(self) -> str:
        return self.label


def local_midnight_utc(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def week_of(moment: datetime, tz: ZoneInfo) -> Week:
    """The week an aware moment falls in, in timezone `tz`."""
    if moment.tzinfo is None:
        raise ValueError("week_of needs an aware datetime")
    local = moment.astimezone(tz).date()
    return Week(local - timedelta(days=local.weekday()))


def parse_week(label: str) -> Week:
    """`YYYY-Www` -> Week; a week the ISO year does not have is refused."""
    match = _LABEL.match(label)
    if not match:
        raise ValueError(f"{label!r} is not a week: use YYYY-Www, e.g. 2026-W48")
    year, number = int(match.group(1)), int(match.group(2))
    try:
        start = date.fromisocalendar(year, number, 1)
    except ValueError:
        raise ValueError(f"{label!r}: ISO year {year} has no week {number}") from None
    return Week(start)


def week_from_start(start: date) -> Week:
    if start.weekday() != 0:
        raise ValueError(f"{start} is not a Monday")
    return Week(start)


def weeks_back(last: Week, count: int) -> list[Week]:
    """`count` weeks ending with `last`, oldest first."""
    return [Week(last.start - timedelta(days=7 * i)) for i in range(count - 1, -1, -1)]


def weeks_between(first: Week, last: Week) -> list[Week]:
    """Every week from `first` to `last`, inclusive."""
    n = (last.start - first.start).days // 7 + 1
    return [Week(first.start + timedelta(days=7 * i)) for i in range(max(n, 0))]


def now_utc() -> datetime:
    return datetime.now(UTC)
