"""The SQL of reports by day, week or month, over the daily roll-up (daily_usage) and the
rolled-up tags (daily_tag_usage); never over raw events. Money sums are exact (see queries)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db import models
from meter.periods import PeriodKind, Pieces, pieces
from meter.reports.queries import DIMENSIONS, Totals, totals_columns, totals_of
from meter.rollup.repository import dirty_months

du: sa.Table = models.DailyUsage.__table__  # type: ignore[assignment]
wu: sa.Table = models.WeeklyUsage.__table__  # type: ignore[assignment]
dtu: sa.Table = models.DailyTagUsage.__table__  # type: ignore[assignment]
mu: sa.Table = models.MonthlyUsage.__table__  # type: ignore[assignment]


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


def _days_rows(p: Pieces, *where: Callable[[sa.Table], Any]) -> Any:
    """The roll-up rows of `p` as one derived table: the monthly rows of its whole months, the
    weekly rows of its whole weeks, the daily rows of its days (exact: months and weeks are
    sums of their days)."""
    in_days = (
        [sa.or_(*(sa.and_(du.c.day >= a, du.c.day <= b) for a, b in p.days))] if p.days else []
    )
    spans: list[tuple[sa.Table, list[Any]]] = [
        (mu, [mu.c.month_start.in_(p.months)] if p.months else []),
        (wu, [wu.c.week_start.in_(p.weeks)] if p.weeks else []),
        (du, in_days),
    ]
    parts = []
    for table, span in spans:
        if span:
            columns = [table.c.team, table.c.user, table.c.model, *(table.c[c] for c in _SUMMED)]
            parts.append(sa.select(*columns).where(*span, *(w(table) for w in where)))
    return (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery("d")


def _pieces(conn: Connection, first_day: date, last_day: date) -> Pieces:
    """`periods.pieces` of local days first_day..last_day; a month the roll-up has marked is
    read from its weeks and days."""
    return pieces(first_day, last_day, set(dirty_months(conn)))


def billing_lines(
    conn: Connection, first_day: date, last_day: date, team: str | None = None
) -> list[tuple[str, str, str, Totals]]:
    """(team, user, model, totals) over local days first_day..last_day: one statement, grouped
    unless the range is one whole month (a month's bill: its rows as they are, in key order)."""
    p = _pieces(conn, first_day, last_day)
    if len(p.months) == 1 and not p.weeks and not p.days:
        query = sa.select(mu.c.team, mu.c.user, mu.c.model, *(mu.c[c] for c in _SUMMED)).where(
            mu.c.month_start == p.months[0]
        )
        if team is not None:
            query = query.where(mu.c.team == team)
        query = query.order_by(mu.c.team, mu.c.user, mu.c.model)
        return [(r[0], r[1], r[2], Totals(*r[3:])) for r in conn.execute(query).all()]
    where = [] if team is None else [lambda t: t.c.team == team]
    rows = _days_rows(p, *where)
    keys = (rows.c.team, rows.c.user, rows.c.model)
    query = sa.select(*keys, *totals_columns(rows)).group_by(*keys).order_by(*keys)
    return [(r[0], r[1], r[2], totals_of(r)) for r in conn.execute(query).all()]


def user_lines(
    conn: Connection, user: str, first_day: date, last_day: date, team: str | None = None
) -> list[tuple[str, Totals]]:
    """One user's days first_day..last_day per model, across teams (or only `team`'s)."""
    where: list[Callable[[sa.Table], Any]] = [lambda t: t.c.user == user]
    if team is not None:
        where.append(lambda t: t.c.team == team)
    rows = _days_rows(_pieces(conn, first_day, last_day), *where)
    query = (
        sa.select(rows.c.model, *totals_columns(rows)).group_by(rows.c.model).order_by(rows.c.model)
    )
    return [(r[0], totals_of(r)) for r in conn.execute(query)]
