"""The reports' SQL, over the roll-up (weekly_usage), never over raw events.

Sums of money across rows are computed as two exact halves, `SUM(x >> 32)` and
`SUM(x & 0xFFFFFFFF)`, recombined in Python: SQLite's SUM of integer units raises "integer
overflow" past 2^63 units ($9.2M), and the halves cannot overflow before 2^31 rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db import models
from meter.db.session import Database
from meter.periods import as_date

DIMENSIONS = ("team", "user", "model")
_LOW_BITS = 32
_LOW_MASK = (1 << _LOW_BITS) - 1

wu = models.WeeklyUsage.__table__


@contextmanager
def reading(db: Database) -> Iterator[Connection]:
    """One consistent read: a deferred transaction on SQLite (no write lock), a read-only
    REPEATABLE READ snapshot on PostgreSQL, so `as_of` and the rows agree."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            conn = conn.execution_options(readonly=True)
        else:
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with conn.begin():
            yield conn


@dataclass(frozen=True)
class Totals:
    """Summed roll-up rows: counts, and money in exact units over priced events only."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    estimated: int = 0
    unpriced: int = 0
    input_units: int = 0
    output_units: int = 0

    @property
    def cost_units(self) -> int:
        return self.input_units + self.output_units

    @property
    def all_unpriced(self) -> bool:
        return self.requests > 0 and self.unpriced == self.requests

    def __add__(self, o: Totals) -> Totals:
        return Totals(
            self.requests + o.requests,
            self.prompt_tokens + o.prompt_tokens,
            self.completion_tokens + o.completion_tokens,
            self.errors + o.errors,
            self.estimated + o.estimated,
            self.unpriced + o.unpriced,
            self.input_units + o.input_units,
            self.output_units + o.output_units,
        )

    def __sub__(self, o: Totals) -> Totals:
        return Totals(
            self.requests - o.requests,
            self.prompt_tokens - o.prompt_tokens,
            self.completion_tokens - o.completion_tokens,
            self.errors - o.errors,
            self.estimated - o.estimated,
            self.unpriced - o.unpriced,
            self.input_units - o.input_units,
            self.output_units - o.output_units,
        )


@dataclass(frozen=True)
class WeeklyTotals:
    week_start: date
    team: str | None
    user: str | None
    model: str | None
    totals: Totals


def money_sums(column: Any, name: str) -> list[sa.ColumnElement[Any]]:
    return [
        # Inline constants: PostgreSQL has `bigint >> integer` but no `bigint >> bigint`.
        sa.func.sum(column.op(">>")(sa.literal_column(str(_LOW_BITS)))).label(f"{name}_hi"),
        sa.func.sum(column.op("&")(sa.literal_column(str(_LOW_MASK)))).label(f"{name}_lo"),
    ]


def totals_columns(table: Any = wu) -> list[sa.ColumnElement[Any]]:
    """The summed totals of roll-up rows (weekly, daily or tag rows: the same columns)."""
    c = table.c
    return [
        sa.func.sum(c.requests).label("requests"),
        sa.func.sum(c.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(c.completion_tokens).label("completion_tokens"),
        sa.func.sum(c.errors).label("errors"),
        sa.func.sum(c.estimated).label("estimated"),
        sa.func.sum(c.unpriced).label("unpriced"),
        *money_sums(c.input_cost_units, "input"),
        *money_sums(c.output_cost_units, "output"),
    ]


_TOTALS_WIDTH = 10  # the columns of totals_columns()


def totals_of(row: Any) -> Totals:
    """The Totals of a row whose last columns are `totals_columns()`, read by position: a
    billing report turns thousands of rows, and Row's lookups by name cost ~20x more."""
    r, p, c, err, est, unp, in_hi, in_lo, out_hi, out_lo = row[-_TOTALS_WIDTH:]
    return Totals(
        requests=int(r or 0),
        prompt_tokens=int(p or 0),
        completion_tokens=int(c or 0),
        errors=int(err or 0),
        estimated=int(est or 0),
        unpriced=int(unp or 0),
        input_units=(int(in_hi or 0) << _LOW_BITS) + int(in_lo or 0),
        output_units=(int(out_hi or 0) << _LOW_BITS) + int(out_lo or 0),
    )


def weekly_totals(
    conn: Connection,
    first: date,
    last: date,
    *,
    team: str | None = None,
    user: str | None = None,
    model: str | None = None,
    group_by: Sequence[str] = DIMENSIONS,
) -> list[WeeklyTotals]:
    """Totals per week and per the `group_by` dimensions, for weeks first..last inclusive."""
    dims = [getattr(wu.c, d) for d in DIMENSIONS if d in group_by]
    query = sa.select(wu.c.week_start, *dims, *totals_columns()).where(
        wu.c.week_start >= first, wu.c.week_start <= last
    )
    for name, value in (("team", team), ("user", user), ("model", model)):
        if value is not None:
            query = query.where(getattr(wu.c, name) == value)
    query = query.group_by(wu.c.week_start, *dims).order_by(wu.c.week_start, *dims)
    result = []
    for row in conn.execute(query):
        mapping = row._mapping
        result.append(
            WeeklyTotals(
                week_start=as_date(row.week_start),
                team=mapping["team"] if "team" in group_by else None,
                user=mapping["user"] if "user" in group_by else None,
                model=mapping["model"] if "model" in group_by else None,
                totals=totals_of(row),
            )
        )
    return result


def user_lines(
    conn: Connection, user: str, week_start: date, team: str | None = None
) -> list[tuple[str, Totals]]:
    """One user's week per model, across teams (or only `team`'s rows for a scoped key)."""
    query = sa.select(wu.c.model, *totals_columns()).where(
        wu.c.user == user, wu.c.week_start == week_start
    )
    if team is not None:
        query = query.where(wu.c.team == team)
    query = query.group_by(wu.c.model).order_by(wu.c.model)
    return [(row.model, totals_of(row)) for row in conn.execute(query)]


def team_weeks(conn: Connection, team: str, first: date, last: date) -> dict[date, Totals]:
    query = (
        sa.select(wu.c.week_start, *totals_columns())
        .where(wu.c.team == team, wu.c.week_start >= first, wu.c.week_start <= last)
        .group_by(wu.c.week_start)
    )
    return {as_date(row.week_start): totals_of(row) for row in conn.execute(query)}


def team_users(conn: Connection, team: str, week_start: date) -> list[tuple[str, Totals]]:
    """Every user of a team in one week (sorted by the caller: exact sums live in Python)."""
    query = (
        sa.select(wu.c.user, *totals_columns())
        .where(wu.c.team == team, wu.c.week_start == week_start)
        .group_by(wu.c.user)
    )
    return [(row.user, totals_of(row)) for row in conn.execute(query)]
