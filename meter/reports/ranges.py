"""Which local dates a report covers: a day, week or month label, or from/to local dates
(inclusive), validated with errors that name the parameter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from meter._exceptions import InvalidRequest
from meter.db.session import Database
from meter.periods import PERIOD_KINDS, PeriodKind, Window, parse_day, parse_period, window_of
from meter.weeks import now_utc

MAX_DAYS = 3_700  # about ten years of days in one answer


@dataclass(frozen=True)
class DateRange:
    """Local dates first..last inclusive, and the period they are, when they are one."""

    first: date
    last: date
    window: Window | None = None


def parse_kind(value: str | None) -> PeriodKind:
    kind = (value or "day").strip()
    if kind not in PERIOD_KINDS:
        raise InvalidRequest(f"period: must be day, week or month, not {kind!r}", "period")
    return kind


def parse_label(kind: PeriodKind, value: str, field: str) -> Window:
    try:
        return parse_period(kind, value)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}", field) from None


def _day(value: str, field: str) -> date:
    try:
        return parse_day(value.strip())
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}", field) from None


def date_range(
    db: Database,
    *,
    day: str | None = None,
    week: str | None = None,
    month: str | None = None,
    first: str | None = None,
    last: str | None = None,
    default: PeriodKind = "week",
    now: datetime | None = None,
) -> DateRange:
    """One of day=, week=, month= or from=/to= (local dates, inclusive); else this `default`."""
    given = [n for n, v in (("day", day), ("week", week), ("month", month)) if v is not None]
    if first is not None or last is not None:
        given.append("from")
    if len(given) > 1:
        raise InvalidRequest(
            f"{given[1]}: give one of day, week, month or from/to, not {' and '.join(given)}",
            given[1],
        )
    if day is not None:
        w = parse_label("day", day, "day")
    elif week is not None:
        w = parse_label("week", week, "week")
    elif month is not None:
        w = parse_label("month", month, "month")
    elif first is not None or last is not None:
        if first is None or last is None:
            missing = "from" if first is None else "to"
            raise InvalidRequest(f"{missing}: from and to go together (local dates)", missing)
        a, b = _day(first, "from"), _day(last, "to")
        if a > b:
            raise InvalidRequest(f"from: {a} is after to: {b}; the range is inclusive", "from")
        if (b - a).days >= MAX_DAYS:
            raise InvalidRequest(f"from: at most {MAX_DAYS} days in one answer", "from")
        return DateRange(a, b)
    else:
        w = window_of(default, now or now_utc(), db.tz)
    return DateRange(w.start, w.last_day, w)
