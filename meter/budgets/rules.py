"""The pure rules of budgets: thresholds, ratios and the projected-overspend pace. No I/O.

Money here is integer units of 1e-12 USD (meter.money); thresholds are exact Decimals. Nothing
is compared as a float.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Context, Decimal, InvalidOperation
from typing import Protocol
from zoneinfo import ZoneInfo

from meter.money import format_decimal
from meter.periods import PERIOD_KINDS, PeriodKind, Window, window_of

DEFAULT_THRESHOLDS = (Decimal("0.5"), Decimal("0.8"), Decimal("1"))
MAX_THRESHOLD = Decimal(10)
MAX_THRESHOLDS = 20
THRESHOLD_PLACES = 6
RATIO_PLACES = 6
# A projection needs some of the period behind it: a busy Monday morning says little about a
# week. A seventh of the period (a day of a week; 3 h 26 min of a 24-hour day).
PROJECTION_MIN_ELAPSED = timedelta(hours=24)
PROJECTION_MIN_SHARE = 7  # 1/7 of the period

# Wide enough for any limit (19 digits) times any threshold (8 digits) without rounding.
_EXACT = Context(prec=60)


def parse_threshold(value: object) -> Decimal:
    """One threshold, a ratio of the limit in (0, 10] with at most 6 decimals."""
    if isinstance(value, bool):
        raise ValueError("each threshold must be a number")
    if isinstance(value, float):
        value = repr(value)  # a ratio, not money: 0.8 means "0.8", not its binary expansion
    try:
        d = Decimal(str(value).strip()) if isinstance(value, int | str | Decimal) else None
    except InvalidOperation:
        d = None
    if d is None or not d.is_finite():
        raise ValueError(f"{value!r} is not a number")
    if not (0 < d <= MAX_THRESHOLD):
        raise ValueError(f"each threshold must be in (0, 10]; got {format_decimal(d)}")
    if d != d.quantize(Decimal(1).scaleb(-THRESHOLD_PLACES), rounding=ROUND_DOWN):
        raise ValueError(f"{format_decimal(d)} has more than {THRESHOLD_PLACES} decimals")
    return d.normalize()


def normalize_thresholds(values: Iterable[object]) -> list[Decimal]:
    """Parsed, deduplicated, ascending."""
    parsed = sorted({parse_threshold(v) for v in values})
    if len(parsed) > MAX_THRESHOLDS:
        raise ValueError(f"at most {MAX_THRESHOLDS} thresholds")
    return parsed


def threshold_key(threshold: Decimal) -> str:
    """How a threshold is stored and shown: plain notation, no trailing zeros ("0.5", "1")."""
    return format_decimal(threshold)


def crossed(spend_units: int, limit_units: int, threshold: Decimal) -> bool:
    """spend >= threshold x limit, exactly."""
    return (
        _EXACT.compare(Decimal(spend_units), _EXACT.multiply(threshold, Decimal(limit_units))) >= 0
    )


def crossed_thresholds(
    spend_units: int, limit_units: int, thresholds: Iterable[Decimal]
) -> list[Decimal]:
    """The thresholds this spend is at or over, ascending. No spend crosses nothing."""
    if spend_units <= 0:
        return []
    return sorted(t for t in thresholds if crossed(spend_units, limit_units, t))


def ratio(spend_units: int, limit_units: int) -> str:
    """spend / limit as a decimal string, truncated to 6 places so that it never overstates."""
    value = _EXACT.divide(Decimal(spend_units), Decimal(limit_units))
    return format_decimal(value.quantize(Decimal(1).scaleb(-RATIO_PLACES), rounding=ROUND_DOWN))


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def projected_spend(
    spend_units: int,
    limit_units: int,
    week_start: datetime,
    week_end: datetime,
    now: datetime,
    min_elapsed: timedelta = PROJECTION_MIN_ELAPSED,
) -> int | None:
    """The week's projected spend when its pace crosses the limit before the week ends, else None.

    Method: linear pace. projected = spend so far x (week length / time elapsed), in exact integer
    units (rounded down), judged only inside the week, once `min_elapsed` of it has passed, and
    only while spend is still under the limit (over it, the 100% threshold speaks instead). The
    week length is its real length in hours (167 or 169 across a DST change).
    """
    if spend_units <= 0 or spend_units >= limit_units:
        return None
    if not (week_start <= now < week_end):
        return None
    elapsed = _micros(now - week_start)
    if elapsed < _micros(min_elapsed) or elapsed <= 0:
        return None
    projected = spend_units * _micros(week_end - week_start) // elapsed
    return projected if projected >= limit_units else None


class HasPeriod(Protocol):
    @property
    def period(self) -> str: ...


def budget_window(budget: HasPeriod, now: datetime, tz: ZoneInfo) -> Window:
    """The window a budget counts spend in at `now`: its local day, ISO week or calendar month,
    `[start, end)` in local dates (`.start`, `.end` exclusive, `.label`, `.bounds(tz)` for the
    instants). With meter.budgets.repository.spend_in, what the gateway's admission reads."""
    period: PeriodKind = budget.period if budget.period in PERIOD_KINDS else "week"  # type: ignore[assignment]
    return window_of(period, now, tz)


def min_elapsed(start: datetime, end: datetime) -> timedelta:
    """How much of a period must have passed before its pace is projected: a seventh of its real
    length (24 h of a week, as before periods; 23/25 h days and weeks across DST included)."""
    return (end - start) / PROJECTION_MIN_SHARE
