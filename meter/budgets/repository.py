"""All SQL of budgets and alerts. The caller owns the transaction; nothing here commits."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from meter.budgets.rules import budget_window
from meter.db import models
from meter.periods import Window, window_of_week
from meter.weeks import Week

B = models.Budget
A = models.Alert
U = models.WeeklyUsage
D = models.DailyUsage
T = models.DailyTagUsage

ALERT_KEY = ("budget_id", "type", "week_start", "threshold")
SPLIT = 10**6  # see _spend_columns
# budgets.id is an INTEGER: a larger id cannot exist (and PostgreSQL refuses to compare an
# INTEGER with it), so it is simply not found.
_MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class BudgetRow:
    id: int
    scope: str
    subject: str  # '' for global; `key=value` for tag
    weekly_limit_units: int  # the limit of one period, whatever the period (see limit_units)
    thresholds: tuple[Decimal, ...]
    webhook_url: str | None
    webhook_secret: str | None = field(repr=False)  # write-only: never in a repr or a log
    enforce: bool
    created_at: datetime
    updated_at: datetime
    period: str = "week"  # day | week | month, fixed at creation

    @property
    def has_webhook_secret(self) -> bool:
        return bool(self.webhook_secret)

    @property
    def limit_units(self) -> int:
        return self.weekly_limit_units

    @property
    def tag(self) -> tuple[str, str] | None:
        """(key, value) of a tag budget."""
        if self.scope != "tag":
            return None
        key, _, value = self.subject.partition("=")
        return key, value


@dataclass(frozen=True)
class AlertRow:
    id: str
    budget_id: int
    type: str
    week_start: date  # the start of the budget's period
    threshold: str  # '' for projections
    spend_units: int
    limit_units: int
    projected_units: int | None
    fired_at: datetime
    payload: str | None
    delivery_status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    period: str = "week"  # the budget's period kind


_BUDGET_COLUMNS = (
    B.id,
    B.scope,
    B.subject,
    B.weekly_limit_units,
    B.thresholds,
    B.webhook_url,
    B.webhook_secret,
    B.enforce,
    B.created_at,
    B.updated_at,
    B.period,
)


def _budget(row: Any) -> BudgetRow:
    thresholds = row.thresholds
    if isinstance(thresholds, str):  # some drivers hand JSON back as text
        thresholds = json.loads(thresholds)
    return BudgetRow(
        id=row.id,
        scope=row.scope,
        subject=row.subject,
        weekly_limit_units=int(row.weekly_limit_units),
        thresholds=tuple(Decimal(t) for t in thresholds),
        webhook_url=row.webhook_url,
        webhook_secret=row.webhook_secret,
        enforce=bool(row.enforce),
        created_at=row.created_at,
        updated_at=row.updated_at,
        period=row.period,
    )


# -- budgets --------------------------------------------------------------------------------------


def insert_budget(conn: Connection, values: dict[str, Any]) -> int:
    return int(conn.execute(sa.insert(B).values(**values).returning(B.id)).scalar_one())


def get_budget(conn: Connection, budget_id: int) -> BudgetRow | None:
    if not 0 < budget_id <= _MAX_ID:
        return None
    row = conn.execute(sa.select(*_BUDGET_COLUMNS).where(B.id == budget_id)).first()
    return _budget(row) if row else None


def list_budgets(
    conn: Connection,
    *,
    team: str | None = None,
    enforced_only: bool = False,
    where: sa.ColumnElement[bool] | None = None,
) -> list[BudgetRow]:
    """Every budget, or only team `team`'s (what a team-scoped key may see)."""
    query = sa.select(*_BUDGET_COLUMNS).order_by(B.id)
    if where is not None:
        query = query.where(where)
    if team is not None:
        query = query.where(B.scope == "team", B.subject == team)
    if enforced_only:
        query = query.where(B.enforce.is_(True))
    return [_budget(r) for r in conn.execute(query)]


def update_budget(conn: Connection, budget_id: int, values: dict[str, Any]) -> bool:
    if not 0 < budget_id <= _MAX_ID:
        return False
    return conn.execute(sa.update(B).where(B.id == budget_id).values(**values)).rowcount == 1


def delete_budget(conn: Connection, budget_id: int) -> bool:
    if not 0 < budget_id <= _MAX_ID:
        return False
    # Alerts go with it (ON DELETE CASCADE); delete them explicitly too, for SQLite connections
    # opened without foreign keys on.
    conn.execute(sa.delete(A).where(A.budget_id == budget_id))
    return conn.execute(sa.delete(B).where(B.id == budget_id)).rowcount == 1


# -- spend (from the roll-up) --------------------------------------------------------------------


def _spend_columns(table: Any = U) -> list[sa.ColumnElement[Any]]:
    # SQLite's SUM over int64 raises past 2^63 units ($9.2M): sum the millions and the remainders
    # apart, so no partial sum can overflow; Python puts them back together exactly.
    return [
        sa.func.sum(table.input_cost_units // SPLIT),
        sa.func.sum(table.input_cost_units % SPLIT),
        sa.func.sum(table.output_cost_units // SPLIT),
        sa.func.sum(table.output_cost_units % SPLIT),
    ]


def _total(parts: Sequence[Any]) -> int:
    high_in, low_in, high_out, low_out = (int(p or 0) for p in parts)
    return (high_in + high_out) * SPLIT + low_in + low_out


def scope_condition(scope: str, subject: str, team: Any, user: Any) -> Any:
    """Which rows a budget counts: its team's, its user's across teams, or all of them."""
    if scope == "team":
        return team == subject
    if scope == "user":
        return user == subject
    return sa.true()


def rollup_spend_subqueries(budget: BudgetRow, window: Window | date) -> list[Any]:
    """A budget's roll-up spend in a window (meter.budgets.rules.budget_window; a date is the
    start of a week) as two scalar subqueries, (millions, remainders) of units: `high * SPLIT +
    low` is exact, and no partial sum can overflow SQLite's int64. For a statement that must
    read it together with other state (the gateway's admission). The same rows as `spend_in`."""
    window = _as_window(window)
    table: Any = U if window.kind == "week" else D
    if budget.tag is not None:
        table = T
        in_scope: Any = sa.and_(T.tag_key == budget.tag[0], T.tag_value == budget.tag[1])
    else:
        in_scope = scope_condition(budget.scope, budget.subject, table.team, table.user)
    where = (*_in_window(table, window), in_scope)
    total = table.input_cost_units + table.output_cost_units
    return [
        sa.select(sa.func.coalesce(sa.func.sum(total // SPLIT), 0)).where(*where).scalar_subquery(),
        sa.select(sa.func.coalesce(sa.func.sum(total % SPLIT), 0)).where(*where).scalar_subquery(),
    ]


def _in_window(table: Any, window: Window) -> list[sa.ColumnElement[bool]]:
    """A week is read from weekly_usage (one row per group), any other window from its days."""
    if table is U:
        return [U.week_start == window.start]
    return [table.day >= window.start, table.day < window.end]


def spend_by(
    conn: Connection, window: Window | date, scope: str, subjects: Iterable[str]
) -> dict[str, int]:
    """A window's priced spend per team (scope 'team') or per user across teams ('user').
    A date is the start of a week (how this was called when every budget was weekly)."""
    window = _as_window(window)
    wanted = sorted(set(subjects))
    if not wanted:
        return {}
    table: Any = U if window.kind == "week" else D
    column = table.team if scope == "team" else table.user
    rows = conn.execute(
        sa.select(column, *_spend_columns(table))
        .where(*_in_window(table, window), column.in_(wanted))
        .group_by(column)
    )
    return {r[0]: _total(r[1:]) for r in rows}


def global_spend(conn: Connection, window: Window | date) -> int:
    window = _as_window(window)
    table: Any = U if window.kind == "week" else D
    row = conn.execute(sa.select(*_spend_columns(table)).where(*_in_window(table, window))).one()
    return _total(row)


def tag_spend(conn: Connection, window: Window, tags: Iterable[tuple[str, str]]) -> dict[str, int]:
    """A window's priced spend of the events carrying each tag, as {"key=value": units}."""
    out: dict[str, int] = {}
    for key, value in sorted(set(tags)):
        row = conn.execute(
            sa.select(*_spend_columns(T)).where(
                T.tag_key == key, T.tag_value == value, *_in_window(T, window)
            )
        ).one()
        out[f"{key}={value}"] = _total(row)
    return out


def _as_window(window: Window | date) -> Window:
    return window if isinstance(window, Window) else window_of_week(Week(window))


def spend_in(conn: Connection, window: Window, budgets: Sequence[BudgetRow]) -> dict[int, int]:
    """Each budget's spend in one window (whatever the budgets' own periods): at most three
    grouped queries and one per tag, whatever the count. The one spend function: alerts, the
    API's views, the client guard and the gateway all count spend through it."""
    teams = spend_by(conn, window, "team", (b.subject for b in budgets if b.scope == "team"))
    users = spend_by(conn, window, "user", (b.subject for b in budgets if b.scope == "user"))
    tags = tag_spend(conn, window, (t for b in budgets if (t := b.tag) is not None))
    everything = global_spend(conn, window) if any(b.scope == "global" for b in budgets) else 0
    result = {}
    for b in budgets:
        if b.scope == "team":
            result[b.id] = teams.get(b.subject, 0)
        elif b.scope == "user":
            result[b.id] = users.get(b.subject, 0)
        elif b.scope == "tag":
            result[b.id] = tags.get(b.subject, 0)
        else:
            result[b.id] = everything
    return result


def spend_for(conn: Connection, week_start: date, budgets: Sequence[BudgetRow]) -> dict[int, int]:
    """Each budget's spend in one week (`spend_in` over that week's window)."""
    return spend_in(conn, window_of_week(Week(week_start)), budgets)


def spend_now(
    conn: Connection, budgets: Sequence[BudgetRow], now: datetime, tz: ZoneInfo
) -> dict[int, tuple[Window, int]]:
    """Each budget's current window (meter.budgets.rules.budget_window) and its spend there."""
    by_window: dict[Window, list[BudgetRow]] = {}
    for b in budgets:
        by_window.setdefault(budget_window(b, now, tz), []).append(b)
    out: dict[int, tuple[Window, int]] = {}
    for window, members in by_window.items():
        for budget_id, units in spend_in(conn, window, members).items():
            out[budget_id] = (window, units)
    return out


# -- alerts ---------------------------------------------------------------------------------------


def fired_keys(conn: Connection, period_start: date) -> set[tuple[int, str, str]]:
    """(budget_id, type, threshold) already fired in periods starting on `period_start`: to skip
    inserts bound to conflict."""
    rows = conn.execute(
        sa.select(A.budget_id, A.type, A.threshold).where(A.week_start == period_start)
    )
    return {(r.budget_id, r.type, r.threshold) for r in rows}


def claim_alert(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert an alert unless its (budget, type, week, threshold) exists: the exactly-once claim.

    Whichever process inserts first wins; the others' INSERT does nothing (on PostgreSQL it waits
    for the winner's commit first), so two servers never fire the same alert.
    """
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    stmt = (
        insert(A)
        .values(**values)
        .on_conflict_do_nothing(index_elements=list(ALERT_KEY))
        .returning(A.id)  # rowcount is not reliable here (psycopg reports -1)
    )
    return conn.execute(stmt).first() is not None


_ALERT_COLUMNS = (
    A.id,
    A.budget_id,
    A.type,
    A.week_start,
    A.threshold,
    A.spend_units,
    A.limit_units,
    A.projected_units,
    A.fired_at,
    A.payload,
    A.delivery_status,
    A.attempts,
    A.last_error,
    A.next_attempt_at,
    A.delivered_at,
    A.period,
)


def _alert(row: Any) -> AlertRow:
    return AlertRow(**{c.key: getattr(row, c.key) for c in _ALERT_COLUMNS})


def get_alert(conn: Connection, alert_id: str) -> AlertRow | None:
    row = conn.execute(sa.select(*_ALERT_COLUMNS).where(A.id == alert_id)).first()
    return _alert(row) if row else None


def list_alerts(
    conn: Connection,
    *,
    budget_id: int | None = None,
    week_start: date | None = None,
    period: tuple[str, date] | None = None,
    team: str | None = None,
    limit: int = 100,
) -> list[AlertRow]:
    """Newest first. `team` keeps only alerts of that team's budgets (a scoped key)."""
    query = sa.select(*_ALERT_COLUMNS).order_by(A.id.desc()).limit(limit)
    if budget_id is not None:
        if not 0 < budget_id <= _MAX_ID:
            return []
        query = query.where(A.budget_id == budget_id)
    if week_start is not None:  # a week's alerts: those of week budgets
        query = query.where(A.week_start == week_start, A.period == "week")
    if period is not None:  # (kind, start): the alerts of that period's budgets
        query = query.where(A.period == period[0], A.week_start == period[1])
    if team is not None:
        query = query.join(B, B.id == A.budget_id).where(B.scope == "team", B.subject == team)
    return [_alert(r) for r in conn.execute(query)]


def requeue_failed(conn: Connection, alert_id: str, now: datetime) -> bool:
    return (
        conn.execute(
            sa.update(A)
            .where(A.id == alert_id, A.delivery_status == "failed")
            .values(delivery_status="pending", attempts=0, last_error=None, next_attempt_at=now)
        ).rowcount
        == 1
    )


# -- the delivery outbox --------------------------------------------------------------------------


@dataclass(frozen=True)
class DueDelivery:
    alert_id: str
    attempts: int  # after this claim
    payload: str
    webhook_url: str | None
    webhook_secret: str | None = field(repr=False)


def due_heads(conn: Connection, now: datetime, limit: int) -> list[Any]:
    """Pending alerts due now that are first in their budget's queue (thresholds go in order)."""
    earlier = aliased(A)
    blocked = sa.exists().where(
        earlier.budget_id == A.budget_id,
        earlier.delivery_status == "pending",
        earlier.id < A.id,
    )
    return list(
        conn.execute(
            sa.select(A.id, A.attempts, A.payload, B.webhook_url, B.webhook_secret)
            .join(B, B.id == A.budget_id)
            .where(A.delivery_status == "pending", A.next_attempt_at <= now, ~blocked)
            .order_by(A.id)
            .limit(limit)
        )
    )


def claim_delivery(
    conn: Connection, alert_id: str, seen_attempts: int, lease_until: datetime
) -> bool:
    """Take one delivery for this process: `attempts` is its version, so only one claimer wins.

    The lease (next_attempt_at pushed past the send's timeout) keeps other servers off it while it
    is being sent; if this process dies, the lease runs out and another server retries.
    """
    return (
        conn.execute(
            sa.update(A)
            .where(A.id == alert_id, A.delivery_status == "pending", A.attempts == seen_attempts)
            .values(attempts=seen_attempts + 1, next_attempt_at=lease_until)
        ).rowcount
        == 1
    )


def finish_delivery(
    conn: Connection,
    alert_id: str,
    claimed_attempts: int,
    *,
    status: str,
    last_error: str | None,
    next_attempt_at: datetime | None,
    delivered_at: datetime | None,
) -> None:
    conn.execute(
        sa.update(A)
        .where(A.id == alert_id, A.attempts == claimed_attempts, A.delivery_status == "pending")
        .values(
            delivery_status=status,
            last_error=last_error[:500] if last_error else None,
            next_attempt_at=next_attempt_at,
            delivered_at=delivered_at,
        )
    )
