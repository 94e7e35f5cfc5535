"""The SQL of reports by day, week or month, over the daily roll-up (daily_usage) and the
rolled-up tags (daily_tag_usage); never over raw events. Money sums are exact (see queries)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db import models
from meter.periods import PeriodKind
from meter.reports.queries import DIMENSIONS, Totals, totals_columns, totals_of

du: sa.Table = models.DailyUsage.__table__  # type: ignore[assignment]
wu: sa.Table = models.WeeklyUsage.__table__  # type: ignore[assignment]
dtu: sa.Table = models.DailyTagUsage.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class PeriodTotals:
    period_start: date
    team: str | None
    user: str | None
    model: str | None
    tag_value: str | None  # only with a tag group; None: events without the tag
    totals: Totals


def period_start_column(
    conn: Connection, table: sa.Table, kind: PeriodKind
) -> sa.ColumnElement[Any]:
    """The column that names a row's period: its day, its Monday, or its month's first day."""
    if kind == "day":
        return table.c.day
    if kind == "week":
        return table.c.week_start
    if conn.dialect.name == "postgresql":
        return sa.func.date_trunc("month", table.c.day).cast(sa.Date)
    return sa.func.substr(table.c.day, 1, 7)  # SQLite stores dates as text: YYYY-MM


def period_start_date(kind: PeriodKind, value: Any) -> date:
    """A period start as the database returns it (a date, or SQLite's text) as a date."""
    if isinstance(value, date):
        return value
    text = str(value)
    return date.fromisoformat(text + "-01" if kind == "month" and len(text) == 7 else text[:10])


def period_totals(
    conn: Connection,
    kind: PeriodKind,
    first_day: date,
    last_day: date,
    *,
    team: str | None = None,
    user: str | None = None,
    model: str | None = None,
    group_by: Sequence[str] = DIMENSIONS,
    tag_key: str | None = None,
) -> list[PeriodTotals]:
    """Totals per period and `group_by` dimensions over local days first_day..last_day; with
    `tag_key`, per value of that tag too, plus the rest (events without it) as value None."""
    base = _grouped(conn, du, kind, first_day, last_day, team, user, model, group_by)
    if tag_key is None:
        return base
    tagged = _grouped(
        conn, dtu, kind, first_day, last_day, team, user, model, group_by, tag_key=tag_key
    )
    rest: dict[tuple[Any, ...], Totals] = {
        (r.period_start, r.team, r.user, r.model): r.totals for r in base
    }
    for r in tagged:
        key = (r.period_start, r.team, r.user, r.model)
        rest[key] = rest[key] - r.totals
    out = list(tagged)
    for (start, t, u, m), totals in rest.items():
        if totals.requests:
            out.append(PeriodTotals(start, t, u, m, None, totals))
    out.sort(key=lambda r: (r.period_start, r.team or "", r.user or "", r.model or "",
                            r.tag_value is None, r.tag_value or ""))  # fmt: skip
    return out


def _grouped(
    conn: Connection,
    table: sa.Table,
    kind: PeriodKind,
    first_day: date,
    last_day: date,
    team: str | None,
    user: str | None,
    model: str | None,
    group_by: Sequence[str],
    tag_key: str | None = None,
) -> list[PeriodTotals]:
    start = period_start_column(conn, table, kind).label("period_start")
    dims = [table.c[d] for d in DIMENSIONS if d in group_by]
    keys: list[sa.ColumnElement[Any]] = [start, *dims]
    if tag_key is not None:
        keys.append(table.c.tag_value)
    query = sa.select(*keys, *totals_columns(table)).where(
        table.c.day >= first_day, table.c.day <= last_day
    )
    if tag_key is not None:
        query = query.where(table.c.tag_key == tag_key)
    for name, value in (("team", team), ("user", user), ("model", model)):
        if value is not None:
            query = query.where(table.c[name] == value)
    query = query.group_by(*keys)
    out = []
    for row in conn.execute(query):
        m = row._mapping
        out.append(
            PeriodTotals(
                period_start=period_start_date(kind, m["period_start"]),
                team=m["team"] if "team" in group_by else None,
                user=m["user"] if "user" in group_by else None,
                model=m["model"] if "model" in group_by else None,
                tag_value=m["tag_value"] if tag_key is not None else None,
                totals=totals_of(row),
            )
        )
    out.sort(key=lambda r: (r.period_start, r.team or "", r.user or "", r.model or ""))
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


def _in_days(table: sa.Table, first_day: date, last_day: date) -> list[Any]:
    """Rows of local days first_day..last_day: whole weeks from weekly_usage (`table` is
    weekly), the rest from daily_usage."""
    weeks, edges = whole_weeks(first_day, last_day)
    if table is wu:
        return [sa.false()] if not weeks else [wu.c.week_start.in_(weeks)]
    if not edges:
        return [sa.false()]
    return [sa.or_(*(sa.and_(du.c.day >= a, du.c.day <= b) for a, b in edges))]


_SUMMED = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "errors",
    "estimated",
    "unpriced",
    "input_cost_units",
    "output_cost_units",
)


def _days_rows(first_day: date, last_day: date, *where: Callable[[sa.Table], Any]) -> Any:
    """The roll-up rows of local days first_day..last_day as one derived table: its whole weeks'
    weekly rows and its edge days' daily rows (exact: a week is the sum of its days)."""
    parts = []
    for table in (wu, du):
        columns = [table.c.team, table.c.user, table.c.model, *(table.c[c] for c in _SUMMED)]
        conditions = [w(table) for w in where]
        parts.append(sa.select(*columns).where(*_in_days(table, first_day, last_day), *conditions))
    return sa.union_all(*parts).subquery("d")


def billing_lines(
    conn: Connection, first_day: date, last_day: date, team: str | None = None
) -> list[tuple[str, str, str, Totals]]:
    """(team, user, model, totals) over local days first_day..last_day: one grouped statement."""
    where = [] if team is None else [lambda t: t.c.team == team]
    rows = _days_rows(first_day, last_day, *where)
    keys = (rows.c.team, rows.c.user, rows.c.model)
    query = sa.select(*keys, *totals_columns(rows)).group_by(*keys).order_by(*keys)
    return [(r[0], r[1], r[2], totals_of(r)) for r in conn.execute(query)]


def user_lines(
    conn: Connection, user: str, first_day: date, last_day: date, team: str | None = None
) -> list[tuple[str, Totals]]:
    """One user's days first_day..last_day per model, across teams (or only `team`'s)."""
    where: list[Callable[[sa.Table], Any]] = [lambda t: t.c.user == user]
    if team is not None:
        where.append(lambda t: t.c.team == team)
    rows = _days_rows(first_day, last_day, *where)
    query = (
        sa.select(rows.c.model, *totals_columns(rows)).group_by(rows.c.model).order_by(rows.c.model)
    )
    return [(r[0], totals_of(r)) for r in conn.execute(query)]
