"""All SQL of the gateway's hard budgets. The caller owns the transaction; nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.budgets.repository import (
    _BUDGET_COLUMNS,
    SPLIT,
    BudgetRow,
    _budget,
    rollup_spend_subqueries,
    scope_condition,
)
from meter.db import fast, models
from meter.db.fast import FastSelect, FastStatement
from meter.periods import Window

H = models.GatewayHold
B = models.Budget

OPEN, HELD, SETTLED = "open", "held", "settled"


@dataclass(frozen=True)
class BudgetState:
    """One budget as an admission sees it, all read in one snapshot."""

    budget_id: int
    limit_units: int
    enforce: bool
    spend_units: int  # the roll-up's total + settled gateway calls not yet rolled up
    reserved_units: int  # open reservations (running calls, cancelled calls awaiting lookup)


# Built once per number of tags, run with each call's team, user and tags: building the
# statement (and its cache key) at every call cost SQLAlchemy several times what running it
# does, on every gateway call, budgets or not; run through meter.db.fast, it costs what the
# database does. A NULL team or user matches no subject.
_COVERING: dict[int, FastSelect] = {}


def _covering(tags: int) -> FastSelect:
    found = _COVERING.get(tags)
    if found is None:
        tag_subjects: list[Any] = [sa.bindparam(f"tag{i}") for i in range(tags)]
        found = FastSelect(
            sa.select(*_BUDGET_COLUMNS)
            .where(
                B.enforce.is_(True),
                sa.or_(
                    B.scope == "global",
                    sa.and_(B.scope == "team", B.subject == sa.bindparam("team")),
                    sa.and_(B.scope == "user", B.subject == sa.bindparam("user")),
                    sa.and_(B.scope == "tag", B.subject.in_(tag_subjects)) if tags else sa.false(),
                ),
            )
            .order_by(B.id)
        )
        _COVERING[tags] = found
    return found


def covering_budgets(
    reader: fast.Reader, team: str | None, user: str | None, tags: dict[str, str] | None = None
) -> list[BudgetRow]:
    """The enforced budgets that cover a call of `team`, `user` and `tags`."""
    subjects = [f"{k}={v}" for k, v in (tags or {}).items()]
    params: dict[str, Any] = {"team": team, "user": user}
    params.update((f"tag{i}", subject) for i, subject in enumerate(subjects))
    return [_budget(r) for r in _covering(len(subjects)).rows(reader, params)]


def _hold_sum(states: tuple[str, ...], window: Window, where: Any) -> Any:
    query = sa.select(sa.func.coalesce(sa.func.sum(H.amount_units), 0)).where(
        H.day >= window.start, H.day < window.end, H.state.in_(states), where
    )
    if OPEN in states:
        query = query.where(sa.or_(H.expires_at.is_(None), H.expires_at > _NOW))
    return query.scalar_subquery()


_NOW = sa.bindparam("now", type_=models.UTCDateTime())
# The admission's statements of each set of budgets (and windows), built once: building them
# (4 subqueries a budget) and their cache keys at every call was most of an admission's CPU
# (BENCHMARKS.md, Gateway). The windows are part of the key, so a new day, week or month gets
# statements of its own; the cache is emptied when it grows large.
_STATES: dict[tuple[Any, ...], tuple[FastStatement, FastStatement]] = {}
_STATES_MAX = 1024


def _statements(
    budgets: Sequence[BudgetRow], windows: Sequence[Window]
) -> tuple[FastStatement, FastStatement]:
    """(the lock of the budgets' rows, the read of their states)."""
    key = tuple(
        (b.id, b.scope, b.subject, w.kind, w.start, w.end)
        for b, w in zip(budgets, windows, strict=True)
    )
    found = _STATES.get(key)
    if found is None:
        ids = sorted(b.id for b in budgets)
        # PostgreSQL: NO KEY UPDATE does not block the alerts' foreign-key checks.
        lock = sa.select(B.id).where(B.id.in_(ids)).order_by(B.id).with_for_update(key_share=True)
        columns: list[Any] = [B.id, B.weekly_limit_units, B.enforce]
        for b, window in zip(budgets, windows, strict=True):
            columns += rollup_spend_subqueries(b, window)
            in_holds = _in_holds(b)
            columns.append(_hold_sum((SETTLED,), window, in_holds))
            columns.append(_hold_sum((OPEN, HELD), window, in_holds))
        states = sa.select(*columns).where(B.id.in_(ids)).order_by(B.id)
        found = (FastStatement(lock), FastStatement(states))
        if len(_STATES) >= _STATES_MAX:
            _STATES.clear()
        _STATES[key] = found
    return found


def _in_holds(budget: BudgetRow) -> Any:
    tag = budget.tag
    if tag is not None:
        return H.tags[tag[0]].as_string() == tag[1]
    return scope_condition(budget.scope, budget.subject, H.team, H.user)


def budget_states(
    writer: fast.Reader, budgets: Sequence[BudgetRow], windows: Sequence[Window], now: datetime
) -> list[BudgetState]:
    """Every budget's spend and open reservations in its window (its day, week or month), in
    ONE statement: one snapshot, so a roll-up committing meanwhile (moving a settled call's
    cost from its hold to the roll-up) is seen wholly or not at all, never twice or missed.

    In the caller's transaction (`writer.transaction()`), which this makes the only admission
    to these budgets until it ends: on PostgreSQL it first locks their rows, in id order (so
    admissions to a budget run one at a time across every server, and cannot deadlock), and
    reads after the lock is granted, in a statement of its own (READ COMMITTED: a snapshot
    that sees every admission committed before); on SQLite, BEGIN IMMEDIATE did it already."""
    lock, read = _statements(budgets, windows)
    if not writer.is_sqlite:
        lock.execute(writer, {})  # pipelined: goes out with the read, one round trip
    rows = read.run(writer, {"now": now})
    by_id = {r[0]: r for r in rows}
    states = []
    for i, b in enumerate(budgets):
        row = by_id.get(b.id)
        if row is None:  # deleted meanwhile
            continue
        base = 3 + 4 * i
        parts = row[base : base + 4]
        states.append(
            BudgetState(
                budget_id=b.id,
                limit_units=int(row[1]),
                enforce=bool(row[2]),
                spend_units=int(parts[0] or 0) * SPLIT + int(parts[1] or 0) + int(parts[2] or 0),
                reserved_units=int(parts[3] or 0),
            )
        )
    return states


HOLD_COLUMNS = (
    "event_id",
    "team",
    "user",
    "tags",
    "model",
    "day",
    "week_start",
    "state",
    "amount_units",
    "reserved_units",
    "expires_at",
    "created_at",
)
_INSERT_HOLD = FastStatement(sa.insert(H), column_keys=HOLD_COLUMNS)
_SETTLE = FastStatement(
    sa.update(H)
    .where(H.event_id == sa.bindparam("hold"), H.state == OPEN)
    .values(
        state=sa.bindparam("new_state"),
        amount_units=sa.bindparam("amount"),
        expires_at=sa.null(),
    )
)


def insert_hold(writer: fast.Reader, values: dict[str, Any]) -> None:
    """In the caller's transaction; `values` has every one of HOLD_COLUMNS."""
    _INSERT_HOLD.execute(writer, values)


def settle(writer: fast.Reader, event_id: uuid.UUID, state: str, amount_units: int) -> None:
    """An open hold becomes `state` with `amount_units` (nothing if it is no longer open)."""
    _SETTLE.execute(writer, {"hold": event_id, "new_state": state, "amount": amount_units})


def extend(conn: Connection, event_ids: Sequence[uuid.UUID], expires_at: datetime) -> None:
    if event_ids:
        conn.execute(
            sa.update(H)
            .where(H.event_id.in_(list(event_ids)), H.state == OPEN)
            .values(expires_at=expires_at)
        )


def delete_lapsed(conn: Connection, before: datetime) -> int:
    """Open holds whose server stopped renewing them long ago (it crashed before the call
    ended): they stopped counting when they expired; this only tidies the table."""
    return int(
        conn.execute(sa.delete(H).where(H.state == OPEN, H.expires_at < before)).rowcount or 0
    )
