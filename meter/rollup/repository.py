"""The roll-up's SQL: plan chunks of dirty marks, lock them, recompute their groups, consume them.

Every statement of a chunk stays inside one week (`week_start = :w`), so the worst plan for any
of them is a scan of that week through `ix_events_group`, never of the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db.models import UTCDateTime

Key = tuple[str, str, str]  # (team, user, model) inside one week

_GROUP = ("team", "user", "model")


@dataclass(frozen=True)
class Chunk:
    """Marks of one week whose (team, user, model) is in [low, high); None is unbounded."""

    week_start: date
    low: Key | None = None
    high: Key | None = None


def _date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _is_pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _range(alias: str, chunk: Chunk) -> tuple[str, dict[str, Any]]:
    """`alias.week_start = :w` and the chunk's key range, as SQL and parameters."""
    cols = ", ".join(f'{alias}."{c}"' for c in _GROUP)
    sql = f"{alias}.week_start = :w"
    params: dict[str, Any] = {"w": chunk.week_start}
    if chunk.low is not None:
        sql += f" AND ({cols}) >= (:lt, :lu, :lm)"
        params.update(lt=chunk.low[0], lu=chunk.low[1], lm=chunk.low[2])
    if chunk.high is not None:
        sql += f" AND ({cols}) < (:ht, :hu, :hm)"
        params.update(ht=chunk.high[0], hu=chunk.high[1], hm=chunk.high[2])
    return sql, params


def _text(sql: str) -> sa.TextClause:
    """Typed binds, so dates and times are written the way the columns store them."""
    clause = sa.text(sql)
    binds = []
    if ":w" in sql:
        binds.append(sa.bindparam("w", type_=sa.Date()))
    if ":now" in sql:
        binds.append(sa.bindparam("now", type_=UTCDateTime()))
    return clause.bindparams(*binds) if binds else clause


# --- planning (a read; outside the chunk transactions) --------------------------------------


def dirty_weeks(conn: Connection) -> list[tuple[date, int]]:
    """(week_start, number of dirty groups) for every week with marks, oldest first."""
    rows = conn.execute(
        sa.text(
            "SELECT week_start, COUNT(*) FROM rollup_dirty GROUP BY week_start ORDER BY week_start"
        )
    ).all()
    return [(_date(r[0]), int(r[1])) for r in rows]


def week_boundaries(conn: Connection, week_start: date, every: int) -> list[Key]:
    """Every `every`-th dirty key of a week, in the database's own order: chunk boundaries."""
    rows = conn.execute(
        _text(
            'SELECT team, "user", model FROM rollup_dirty WHERE week_start = :w '
            'ORDER BY team, "user", model'
        ),
        {"w": week_start},
    ).all()
    return [(r[0], r[1], r[2]) for r in rows[every::every]]


# --- one chunk, in its own write transaction ------------------------------------------------


def prepare_transaction(conn: Connection) -> None:
    if _is_pg(conn):
        # The default 4 MB makes a week's GROUP BY spill to disk (3x slower).
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")


def lock_marks(conn: Connection, chunk: Chunk) -> list[Key]:
    """Lock the chunk's marks in one global order and return their keys.

    PostgreSQL: `FOR UPDATE` waits for every writer that bumped one of these marks to commit,
    and locks rows in the ORDER BY order. `COLLATE "C"` is byte order, which for UTF-8 is the
    code-point order Python's `sorted` gives the writers (meter.db.ledger.mark_dirty): the same
    order on both sides, so no deadlock. SQLite: BEGIN IMMEDIATE already excludes every writer.
    """
    where, params = _range("d", chunk)
    if _is_pg(conn):
        sql = (
            f'SELECT d.team, d."user", d.model FROM rollup_dirty d WHERE {where} '
            'ORDER BY d.team COLLATE "C", d."user" COLLATE "C", d.model COLLATE "C" FOR UPDATE'
        )
    else:
        sql = f'SELECT d.team, d."user", d.model FROM rollup_dirty d WHERE {where}'
    return [(r[0], r[1], r[2]) for r in conn.execute(_text(sql), params)]


def _scope(conn: Connection, chunk: Chunk, keys: list[Key]) -> tuple[str, dict[str, Any]]:
    """A derived table `k(team, user, model)` holding exactly the locked keys.

    PostgreSQL: the keys themselves, as arrays (marks committed after the lock must not be
    consumed). SQLite: nobody else can write during the transaction, so the marks in range are
    exactly the locked ones.
    """
    if _is_pg(conn):
        return (
            "(SELECT * FROM unnest(CAST(:kt AS text[]), CAST(:ku AS text[]), "
            'CAST(:km AS text[])) AS u(team, "user", model))',
            {
                "kt": [k[0] for k in keys],
                "ku": [k[1] for k in keys],
                "km": [k[2] for k in keys],
            },
        )
    where, params = _range("d", chunk)
    return f'(SELECT d.team, d."user", d.model FROM rollup_dirty d WHERE {where})', params


def _join_scope(table: str) -> str:
    return " AND ".join(f'k."{c}" = {table}."{c}"' for c in _GROUP)


def existing_rows(conn: Connection, chunk: Chunk) -> int:
    where, params = _range("wu", chunk)
    return int(
        conn.execute(_text(f"SELECT COUNT(*) FROM weekly_usage wu WHERE {where}"), params).scalar()
        or 0
    )


def requests_in_scope(conn: Connection, chunk: Chunk, keys: list[Key], whole_range: bool) -> int:
    """Total `requests` of the rows the chunk may change (before and after: the difference is
    exactly the new events, since only the lease holder writes weekly_usage)."""
    if whole_range:
        where, params = _range("wu", chunk)
        sql = f"SELECT COALESCE(SUM(wu.requests), 0) FROM weekly_usage wu WHERE {where}"
    else:
        scope, params = _scope(conn, chunk, keys)
        sql = (
            f"SELECT COALESCE(SUM(wu.requests), 0) FROM weekly_usage wu JOIN {scope} k "
            f"ON {_join_scope('wu')} WHERE wu.week_start = :w"
        )
        params = {**params, "w": chunk.week_start}
    return int(conn.execute(_text(sql), params).scalar() or 0)


def delete_emptied(conn: Connection, chunk: Chunk, keys: list[Key]) -> None:
    """Drop the roll-up row of a locked group that has no events left.

    A scalar subquery with LIMIT rather than NOT EXISTS: PostgreSQL turns NOT EXISTS into an
    anti-join that sorts the whole week's events; this is one index probe per locked row.
    """
    scope, params = _scope(conn, chunk, keys)
    match = " AND ".join(f'e."{c}" = weekly_usage."{c}"' for c in _GROUP)
    conn.execute(
        _text(
            f'DELETE FROM weekly_usage WHERE week_start = :w AND (team, "user", model) IN '
            f'(SELECT k.team, k."user", k.model FROM {scope} k) '
            f"AND (SELECT 1 FROM events e WHERE e.week_start = weekly_usage.week_start "
            f"AND {match} LIMIT 1) IS NULL"
        ),
        {**params, "w": chunk.week_start},
    )


_AGGREGATES = """
    COUNT(*),
    COALESCE(SUM(e.prompt_tokens), 0),
    COALESCE(SUM(e.completion_tokens), 0),
    COALESCE(SUM(CASE WHEN e.status = 'error' THEN 1 ELSE 0 END), 0),
    COALESCE(SUM(CASE WHEN e.usage_source = 'estimated' THEN 1 ELSE 0 END), 0),
    COALESCE(SUM(CASE WHEN e.input_cost_units IS NULL THEN 1 ELSE 0 END), 0),
    COALESCE(SUM(e.input_cost_units), 0),
    COALESCE(SUM(e.output_cost_units), 0),
    :now
"""
_TOTALS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "errors",
    "estimated",
    "unpriced",
    "input_cost_units",
    "output_cost_units",
)
_COLUMNS = 'week_start, team, "user", model, ' + ", ".join(_TOTALS) + ", updated_at"
# Rows whose totals did not change are left alone: no write, updated_at keeps its meaning.
_UPSERT = (
    'ON CONFLICT (week_start, team, "user", model) DO UPDATE SET '
    + ", ".join(f"{c} = excluded.{c}" for c in (*_TOTALS, "updated_at"))
    + " WHERE "
    + " OR ".join(f"weekly_usage.{c} <> excluded.{c}" for c in _TOTALS)
)


def recompute_range(conn: Connection, chunk: Chunk, now: datetime) -> None:
    """Recompute every group of the chunk's key range with one GROUP BY over that part of the
    week: the cheap plan when most of the range is dirty (a first roll-up, the current week)."""
    where, params = _range("e", chunk)
    conn.execute(
        _text(
            f"INSERT INTO weekly_usage ({_COLUMNS}) "
            f'SELECT e.week_start, e.team, e."user", e.model, {_AGGREGATES} '
            f"FROM events e WHERE {where} "
            f'GROUP BY e.week_start, e.team, e."user", e.model {_UPSERT}'
        ),
        {**params, "now": now},
    )


def recompute_groups(conn: Connection, chunk: Chunk, keys: list[Key], now: datetime) -> None:
    """Recompute only the locked groups (few dirty groups in a large week)."""
    scope, params = _scope(conn, chunk, keys)
    conn.execute(
        _text(
            f"INSERT INTO weekly_usage ({_COLUMNS}) "
            f'SELECT e.week_start, e.team, e."user", e.model, {_AGGREGATES} '
            f"FROM {scope} k JOIN events e ON e.week_start = :w AND {_join_scope('e')} "
            f"WHERE e.week_start = :w "
            f'GROUP BY e.week_start, e.team, e."user", e.model {_UPSERT}'
        ),
        {**params, "w": chunk.week_start, "now": now},
    )


def consume_marks(conn: Connection, chunk: Chunk, keys: list[Key]) -> None:
    """Delete exactly the locked marks; a writer waiting on one re-inserts it after we commit."""
    scope, params = _scope(conn, chunk, keys)
    conn.execute(
        _text(
            'DELETE FROM rollup_dirty WHERE week_start = :w AND (team, "user", model) IN '
            f'(SELECT k.team, k."user", k.model FROM {scope} k)'
        ),
        {**params, "w": chunk.week_start},
    )


def utc_now() -> datetime:
    return datetime.now(UTC)
