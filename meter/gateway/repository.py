"""All SQL of the gateway's hard budgets. The caller owns the transaction and nothing here
commits, but for PostgreSQL's admission and settlement: each is one statement (a
meter.db.fast.Procedure), run in autocommit as a transaction of its own."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.engine import Connection

from meter.budgets.repository import (
    _BUDGET_COLUMNS,
    SPLIT,
    BudgetRow,
    _budget,
    rollup_spend_subqueries,
    scope_condition,
)
from meter.db import fast, models, settled
from meter.db.fast import FastSelect, FastStatement, Procedure
from meter.periods import Window

H = models.GatewayHold
G = models.GatewaySettled
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


def _covers_call(tags: int) -> Any:
    """The enforced budgets that cover a call: parameters team, user and tag0.. (its tags'
    `key=value`s)."""
    tag_subjects: list[Any] = [sa.bindparam(f"tag{i}") for i in range(tags)]
    return sa.and_(
        B.enforce.is_(True),
        sa.or_(
            B.scope == "global",
            sa.and_(B.scope == "team", B.subject == sa.bindparam("team")),
            sa.and_(B.scope == "user", B.subject == sa.bindparam("user")),
            sa.and_(B.scope == "tag", B.subject.in_(tag_subjects)) if tags else sa.false(),
        ),
    )


def _covering(tags: int) -> FastSelect:
    found = _COVERING.get(tags)
    if found is None:
        found = FastSelect(sa.select(*_BUDGET_COLUMNS).where(_covers_call(tags)).order_by(B.id))
        _COVERING[tags] = found
    return found


def _call_params(team: str | None, user: str | None, tags: dict[str, str] | None) -> dict[str, Any]:
    """The parameters of `_covers_call` for a call."""
    params: dict[str, Any] = {"team": team, "user": user}
    params.update((f"tag{i}", f"{k}={v}") for i, (k, v) in enumerate((tags or {}).items()))
    return params


def covering_budgets(
    reader: fast.Reader, team: str | None, user: str | None, tags: dict[str, str] | None = None
) -> list[BudgetRow]:
    """The enforced budgets that cover a call of `team`, `user` and `tags`."""
    params = _call_params(team, user, tags)
    return [_budget(r) for r in _covering(len(tags or {})).rows(reader, params)]


def _reserved_sum(window: Window, budget: BudgetRow) -> Any:
    """The open and held holds' reservations in the window (an open one until it expires).
    One sum per state, each an equality on it: PostgreSQL's planner filters an IN on the
    second column of (team, state, day) instead of seeking it, and then walked every settled
    hold of the team, whose number grows with every call until the roll-up counts them."""
    return sum(
        (
            sa.select(sa.func.coalesce(sa.func.sum(H.amount_units), 0))
            .where(
                H.day >= window.start,
                H.day < window.end,
                H.state == state,
                _covers(budget, H),
                sa.or_(H.expires_at.is_(None), H.expires_at > _NOW),
            )
            .scalar_subquery()
            for state in (OPEN, HELD)
        ),
        start=sa.literal(0, models.BigInt),
    )


def _settled_sum(window: Window, budget: BudgetRow) -> Any:
    """The settled holds' exact costs in the window, from their groups (meter.db.settled)."""
    return (
        sa.select(sa.func.coalesce(sa.func.sum(G.amount_units), 0))
        .where(G.day >= window.start, G.day < window.end, _covers(budget, G))
        .scalar_subquery()
    )


_NOW = sa.bindparam("now", type_=models.UTCDateTime())
# The admission's statements of each set of budgets (and windows), built once: building them
# (4 subqueries a budget) and their cache keys at every call was most of an admission's CPU
# (BENCHMARKS.md, Gateway). The windows are part of the key, so a new day, week or month gets
# statements of its own; the cache is emptied when it grows large.
_STATES: dict[tuple[Any, ...], tuple[FastStatement, Procedure]] = {}
_STATES_MAX = 1024


def _statements(
    budgets: Sequence[BudgetRow],
    windows: Sequence[Window],
    tags: int | None = None,
    api_key: bool = False,
) -> tuple[FastStatement, Procedure]:
    """(SQLite's read of the budgets' states; PostgreSQL's admission: the lock of their rows,
    then the conditional INSERT). With `tags` (the number of the call's tags), the admission
    also checks that `budgets` are still, unchanged, all the enforced budgets covering the
    call (`_still_covering`), and inserts nothing otherwise; with `api_key`, also that the
    caller's key is still there (`_key_still_valid`)."""
    key: tuple[Any, ...] = tuple(
        (b.id, b.scope, b.subject, w.kind, w.start, w.end)
        for b, w in zip(budgets, windows, strict=True)
    )
    if tags is not None:
        key += (tags, api_key, *(b.updated_at for b in budgets))
    found = _STATES.get(key)
    if found is None:
        ids = sorted(b.id for b in budgets)
        # PostgreSQL: NO KEY UPDATE does not block the alerts' foreign-key checks.
        lock = sa.select(B.id).where(B.id.in_(ids)).order_by(B.id).with_for_update(key_share=True)
        parts = [_state_of(b, w) for b, w in zip(budgets, windows, strict=True)]
        states = (sa.union_all(*parts) if len(parts) > 1 else parts[0]).subquery("states")
        read = FastStatement(sa.select(states).order_by(states.c.id))
        fresh = None if tags is None else _still_covering(budgets, tags)
        if fresh is not None and api_key:
            fresh = sa.and_(fresh, _key_still_valid())
        found = (read, Procedure(FastStatement(lock), _SETTLE_MANY, _admission(parts, fresh)))
        if len(_STATES) >= _STATES_MAX:
            _STATES.clear()
        _STATES[key] = found
    return found


def _still_covering(budgets: Sequence[BudgetRow], tags: int) -> Any:
    """True if `budgets` are all the enforced budgets that cover the call (`_covers_call`'s
    parameters), none of them changed since read (their updated_at): an admission under
    budgets remembered from an earlier call checks this after taking their locks."""
    covers = _covers_call(tags)
    ids = [b.id for b in budgets]
    others = sa.exists(sa.select(B.id).where(covers, B.id.not_in(ids)))
    same = (
        sa.select(sa.func.count())
        .where(
            covers, sa.or_(*(sa.and_(B.id == b.id, B.updated_at == b.updated_at) for b in budgets))
        )
        .scalar_subquery()
    )
    return sa.and_(~others, same == len(ids))


def _key_still_valid() -> Any:
    """True if the API key read for an earlier call (its id and digest) is still there and
    unexpired: keys are never changed, only created and deleted (revoked, erased), so it
    still stands for the same principal."""
    k = models.ApiKey
    return sa.exists(
        sa.select(k.id).where(
            k.id == sa.bindparam("key_id", type_=sa.Integer()),
            k.key_hash == sa.bindparam("key_digest", type_=sa.String()),
            sa.or_(k.expires_at.is_(None), k.expires_at > _NOW),
        )
    )


def _state_of(budget: BudgetRow, window: Window) -> sa.Select[Any]:
    """One budget's row and its state in `window`, as columns: id, limit_units, enforce, the
    roll-up's spend (high x SPLIT + low), settled and reserved."""
    high, low = rollup_spend_subqueries(budget, window)
    return sa.select(
        B.id.label("id"),
        B.weekly_limit_units.label("limit_units"),
        B.enforce.label("enforce"),
        high.label("high"),
        low.label("low"),
        _settled_sum(window, budget).label("settled"),
        _reserved_sum(window, budget).label("reserved"),
    ).where(B.id == budget.id)


def _state(row: Any) -> BudgetState:
    return BudgetState(
        budget_id=int(row.id),
        limit_units=int(row.limit_units),
        enforce=bool(row.enforce),
        spend_units=int(row.high) * SPLIT + int(row.low) + int(row.settled),
        reserved_units=int(row.reserved),
    )


def _covers(budget: BudgetRow, table: Any) -> Any:
    """The rows of `table` (holds or their groups) that `budget` covers."""
    tag = budget.tag
    if tag is not None:
        return table.tags[tag[0]].as_string() == tag[1]
    return scope_condition(budget.scope, budget.subject, table.team, table.user)


def budget_states(
    writer: fast.Reader, budgets: Sequence[BudgetRow], windows: Sequence[Window], now: datetime
) -> list[BudgetState]:
    """SQLite: every budget's spend and open reservations in its window (its day, week or
    month), in ONE statement: one snapshot, so a roll-up committing meanwhile (moving a settled
    call's cost from its group of settled holds to the roll-up) or a settlement (from its open
    hold to its group) is seen wholly or not at all, never twice or missed. In the caller's
    transaction, whose BEGIN IMMEDIATE makes it the only admission until it ends. A budget
    deleted meanwhile has no state. (PostgreSQL reads the same states in `admit_if_room`.)"""
    read, _ = _statements(budgets, windows)
    return [_state(r) for r in read.run(writer, {"now": now})]


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
_SETTLE_HOLD = (
    sa.update(H)
    .where(H.event_id == sa.bindparam("hold"), H.state == OPEN)
    .values(
        state=sa.bindparam("new_state"),
        amount_units=sa.bindparam("amount"),
        expires_at=sa.null(),
    )
)
_GROUP_COLUMNS = ["day", "team", "user", "tags_key", "tags", "amount_units"]


def _settle_statements() -> tuple[list[FastStatement], FastStatement]:
    """(SQLite's statements of one settlement; PostgreSQL's statement of many): each hold's
    new state and, when it is settled, its cost added to its group of meter.db.settled, taken
    from the hold's own row.

    PostgreSQL: one statement over arrays (`settle_*`, one element a hold), the UPDATE first
    (it locks the holds, then the groups, in key order: the lock order of meter.db.settled),
    adding to a group only what it changed (a roll-up may have counted a call and deleted its
    hold meanwhile); the holds settled together are summed per group first (one command may
    change a row once). Run alone (`_SETTLE_PG`) or inside an admission, after its budgets'
    locks (`_statements`). SQLite: the INSERT reads the hold before the UPDATE changes it,
    under the write lock this transaction holds since BEGIN."""
    units = sa.bindparam("amount", type_=models.BigInt)
    from_hold = (
        sa.select(H.day, H.team, H.user, sa.bindparam("tags_key", type_=sa.String()), H.tags, units)
        .where(H.event_id == sa.bindparam("hold"), H.state == OPEN)
        .where(sa.bindparam("new_state", type_=sa.String()) == SETTLED)
    )
    lite = settled.upsert("sqlite").from_select(_GROUP_COLUMNS, from_hold)
    s = (
        sa.func.unnest(
            sa.bindparam("settle_holds", type_=pg_dialect.ARRAY(sa.Uuid())),
            sa.bindparam("settle_states", type_=pg_dialect.ARRAY(sa.String())),
            sa.bindparam("settle_amounts", type_=pg_dialect.ARRAY(models.BigInt)),
            sa.bindparam("settle_keys", type_=pg_dialect.ARRAY(sa.String())),
        )
        .table_valued("hold", "new_state", "amount", "tags_key", name="settling")
        .render_derived()
    )
    changed = (
        sa.update(H)
        .where(H.event_id == s.c.hold, H.state == OPEN)
        .values(state=s.c.new_state, amount_units=s.c.amount, expires_at=sa.null())
        .returning(H.day, H.team, H.user, s.c.tags_key, H.tags, H.amount_units, H.state)
        .cte("changed")
    )
    c = changed.c
    key = (c.day, c.team, c.user, c.tags_key)
    groups = (
        sa.select(
            *key,
            sa.func.array_agg(c.tags)[1],  # the same tags: tags_key is their digest
            sa.cast(sa.func.sum(c.amount_units), models.BigInt),
        )
        .where(c.state == SETTLED)
        .group_by(*key)
        .order_by(*key)
    )
    pg = settled.upsert("postgresql").from_select(_GROUP_COLUMNS, groups)
    return [FastStatement(lite), FastStatement(_SETTLE_HOLD)], FastStatement(pg)


_SETTLE_SQLITE, _SETTLE_MANY = _settle_statements()
# PostgreSQL's settlements alone: their own transaction, whose commit is not flushed
# (BudgetGate.settle says why that is harmless).
_SETTLE_PG = Procedure(_SETTLE_MANY, unflushed=True)


@dataclass(frozen=True)
class Settlement:
    """A hold's end: its new state (SETTLED, or HELD for a lookup), its amount, its tags."""

    event_id: uuid.UUID
    state: str
    amount_units: int
    tags: dict[str, str] | None


def settle_params(settlements: Sequence[Settlement]) -> dict[str, list[Any]]:
    """PostgreSQL: the `settle_*` arrays of _SETTLE_MANY."""
    return {
        "settle_holds": [s.event_id for s in settlements],
        "settle_states": [s.state for s in settlements],
        "settle_amounts": [s.amount_units for s in settlements],
        "settle_keys": [settled.tags_key(s.tags) for s in settlements],
    }


class _Numeric(sa.types.UserDefinedType[Any]):
    """PostgreSQL's NUMERIC, read as psycopg gives it (a Decimal: exact)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "NUMERIC"


_NUMERIC = _Numeric()


def _admission(states_of: Sequence[sa.Select[Any]], fresh: Any = None) -> FastStatement:
    """PostgreSQL's admission as one statement, after the lock: every budget's state (as
    `budget_states` reads it on SQLite) and the hold inserted only if each has room for it, in
    one snapshot taken once the lock is granted. Sums are NUMERIC there: exact, never
    overflowing. -> (admitted: 1 or 0, then the states' columns), one row per budget."""
    states = (sa.union_all(*states_of) if len(states_of) > 1 else states_of[0]).cte("states")
    worst = sa.bindparam("worst", type_=models.BigInt)
    spend = states.c.high * SPLIT + states.c.low + states.c.settled
    no_room = sa.exists(
        sa.select(states.c.id).where(
            states.c.enforce, spend + states.c.reserved + worst > states.c.limit_units
        )
    )
    fresh = sa.true() if fresh is None else fresh
    values = [sa.bindparam(f"h_{c}", type_=H.__table__.c[c].type) for c in HOLD_COLUMNS]
    inserted = (
        sa.insert(H)
        .from_select(list(HOLD_COLUMNS), sa.select(*values).where(~no_room, fresh))
        .returning(H.event_id)
        .cte("inserted")
    )
    # One row even when every budget was deleted meanwhile (then none limits the call).
    admitted = sa.select(sa.func.count().label("admitted")).select_from(inserted).subquery("a")
    # Typed as the Procedure's function returns them.
    columns: list[Any] = [
        sa.cast(admitted.c.admitted, models.BigInt).label("admitted"),
        sa.cast(fresh, sa.Boolean()).label("fresh"),
    ]
    columns += [
        sa.cast(states.c[name], type_).label(name)
        for name, type_ in (
            ("id", sa.Integer()),
            ("limit_units", models.BigInt),
            ("enforce", sa.Boolean()),
            ("high", _NUMERIC),
            ("low", _NUMERIC),
            ("settled", _NUMERIC),
            ("reserved", _NUMERIC),
        )
    ]
    return FastStatement(
        sa.select(*columns).select_from(admitted.outerjoin(states, sa.true())).order_by(states.c.id)
    )


def admit_if_room(
    writer: fast.Reader,
    budgets: Sequence[BudgetRow],
    windows: Sequence[Window],
    now: datetime,
    hold: dict[str, Any],
    call: tuple[str | None, str | None, dict[str, str] | None] | None = None,
    settlements: Sequence[Settlement] = (),
    api_key: tuple[int, str] | None = None,
) -> tuple[list[BudgetState], bool, bool]:
    """PostgreSQL, as one statement (`writer` in autocommit: its own transaction, one round
    trip): lock the budgets' rows, in id order (so that admissions to a budget run one at a
    time across every server, and cannot deadlock), then insert `hold` (every one of
    HOLD_COLUMNS) only if every budget has room for its amount, in one statement whose READ
    COMMITTED snapshot is taken after the lock is granted (it sees every admission committed
    before). With `call` (its team, user and tags): only if `budgets` are also still all the
    enforced budgets covering it, unchanged. -> (the budgets' states as that statement read
    them, whether the hold was inserted, whether `budgets` were still those of the call).
    `settlements`: this server's, made first in the same transaction, after the locks (the
    states read see them); committed whether or not the hold is inserted. `api_key` (with
    `call`): the id and digest of the caller's key, read for an earlier call: only if it is
    still there, too."""
    tags = None if call is None else len(call[2] or {})
    _, admission = _statements(budgets, windows, tags, api_key is not None)
    params = {f"h_{c}": v for c, v in hold.items()}
    params.update(now=now, worst=hold["amount_units"])
    if call is not None:
        params.update(_call_params(*call))
    if api_key is not None:
        params.update(key_id=api_key[0], key_digest=api_key[1])
    params.update(settle_params(settlements))
    found = admission.run(writer, params)
    states = [_state(r) for r in found if r.id is not None]
    return states, bool(found[0].admitted), bool(found[0].fresh)


def insert_hold(writer: fast.Reader, values: dict[str, Any]) -> None:
    """In the caller's transaction; `values` has every one of HOLD_COLUMNS."""
    _INSERT_HOLD.execute(writer, values)


def settle(writer: fast.Reader, settlements: Sequence[Settlement]) -> None:
    """Open holds become their settlements' states and amounts, and a settled one's cost joins
    its group (nothing for a hold no longer open). SQLite: in the caller's transaction, one
    by one. PostgreSQL: one statement; in autocommit, a transaction of its own whose commit is
    not flushed (in the caller's transaction, it makes that transaction's commit unflushed)."""
    if not settlements:
        return
    if writer.is_sqlite:
        for s in settlements:
            params = {
                "hold": s.event_id,
                "new_state": s.state,
                "amount": s.amount_units,
                "tags_key": settled.tags_key(s.tags),
            }
            for statement in _SETTLE_SQLITE:
                statement.execute(writer, params)
    else:
        _SETTLE_PG.run(writer, settle_params(settlements))


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
