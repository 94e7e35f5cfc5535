"""Reconciliation (SPEC section 9): meter's cost against what the provider reported, per period
and model, read from the daily roll-up (never from raw events). `cost_usd` is meter's cost of
the events that carry a provider cost, `provider_cost_usd` the sum of those costs, and
`drift_usd` their difference: exact decimals."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from meter._exceptions import InvalidRequest
from meter.budgets.repository import SPLIT
from meter.db import models
from meter.db.session import Database
from meter.money import render_usd
from meter.periods import window_at, window_of, windows_back
from meter.reports.period_queries import period_start_column, period_start_date
from meter.reports.period_service import DEFAULT_COUNT
from meter.reports.queries import reading
from meter.reports.ranges import MAX_DAYS, parse_kind, parse_label
from meter.reports.service import rollup_as_of
from meter.weeks import now_utc

D: sa.Table = models.DailyUsage.__table__  # type: ignore[assignment]
E: sa.Table = models.Event.__table__  # type: ignore[assignment]
L: sa.Table = models.GenerationLookup.__table__  # type: ignore[assignment]


class ReconciliationRow(BaseModel):
    period: str
    period_start: str
    model: str
    events: int
    events_with_provider_cost: int
    cost_usd: str
    provider_cost_usd: str
    drift_usd: str
    estimated: int
    reconciled: int
    lookups_pending: int


class Reconciliation(BaseModel):
    as_of: str | None
    period: str
    rows: list[ReconciliationRow]


def _split_sum(column: Any) -> list[Any]:
    # SQLite's SUM over int64 overflows past $9.2M: sum millions and remainders apart.
    return [sa.func.sum(column // SPLIT), sa.func.sum(column % SPLIT)]


def _units(high: Any, low: Any) -> int:
    return int(high or 0) * SPLIT + int(low or 0)


def reconciliation(
    db: Database,
    *,
    period: str | None = "week",
    first: str | None = None,
    last: str | None = None,
    team: str | None = None,
    now: datetime | None = None,
) -> Reconciliation:
    """Rows per period and model over periods `first`..`last` (default: the last few up to the
    current one); `team`: only that team's events (what a team-scoped key may see)."""
    kind = parse_kind(period or "week")
    end = parse_label(kind, last, "to") if last is not None else None
    if end is None:
        end = window_of(kind, now or now_utc(), db.tz)
    start = (
        parse_label(kind, first, "from")
        if first is not None
        else windows_back(end, DEFAULT_COUNT[kind])[0]
    )
    if start > end:
        raise InvalidRequest(f"from: {start.label} is after to: {end.label}", "from")
    if (end.end - start.start).days > MAX_DAYS:
        raise InvalidRequest(f"from: at most {MAX_DAYS} days in one answer", "from")
    with reading(db) as conn:
        as_of = rollup_as_of(conn)
        begin = period_start_column(conn, D, kind).label("period_start")
        rows = conn.execute(
            sa.select(
                begin,
                D.c.model,
                sa.func.sum(D.c.requests),
                sa.func.sum(D.c.provider_cost_events),
                *_split_sum(D.c.provider_meter_cost_units),
                *_split_sum(D.c.provider_cost_units),
                sa.func.sum(D.c.estimated),
                sa.func.sum(D.c.reconciled),
            )
            .where(
                D.c.day >= start.start,
                D.c.day <= end.last_day,
                *((D.c.team == team,) if team is not None else ()),
            )
            .group_by(begin, D.c.model)
        ).all()
        pending_start = period_start_column(conn, E, kind).label("period_start")
        pending = {
            (period_start_date(kind, r[0]), r[1]): int(r[2])
            for r in conn.execute(
                sa.select(pending_start, E.c.model, sa.func.count())
                .select_from(L.join(E, E.c.id == L.c.event_id))
                .where(
                    L.c.state == "pending",
                    E.c.day >= start.start,
                    E.c.day <= end.last_day,
                    *((E.c.team == team,) if team is not None else ()),
                )
                .group_by(pending_start, E.c.model)
            )
        }
    out = []
    for r in sorted(rows, key=lambda r: (period_start_date(kind, r[0]), r[1])):
        day = period_start_date(kind, r[0])
        window = window_at(kind, day)
        cost = _units(r[4], r[5])
        provider = _units(r[6], r[7])
        out.append(
            ReconciliationRow(
                period=window.label,
                period_start=window.start.isoformat(),
                model=r[1],
                events=int(r[2] or 0),
                events_with_provider_cost=int(r[3] or 0),
                cost_usd=render_usd(cost) or "0",
                provider_cost_usd=render_usd(provider) or "0",
                drift_usd=render_usd(cost - provider) or "0",
                estimated=int(r[8] or 0),
                reconciled=int(r[9] or 0),
                lookups_pending=pending.get((day, r[1]), 0),
            )
        )
    return Reconciliation(as_of=as_of, period=kind, rows=out)
