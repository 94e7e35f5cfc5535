"""The roll-up's SQL: plan chunks of dirty marks, lock them, recompute their groups, consume them.

Every statement of a chunk stays inside its weeks (`week_start BETWEEN :w AND :wl`), so the worst
plan for any of them is a scan of those weeks through `ix_events_group`, never of the whole
table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db import settled
from meter.db.ledger import MARK_ORDER
from meter.db.models import UTCDateTime
from meter.periods import as_date, months_of, whole_weeks

Key = tuple[str, str, str]  # (team, user, model) inside one week

_GROUP = ("team", "user", "model")
_KEY = ("week_start", *_GROUP)


@dataclass(frozen=True)
class Chunk:
    """Marks of the weeks `weeks[0]` to `weeks[-1]`, or of one week whose (team, user, model)
    is in [low, high) (None: unbounded)."""

    weeks: tuple[date, ...]  # the weeks with marks when planned, oldest first; never empty
    low: Key | None = None
    high: Key | None = None

    @property
    def week_start(self) -> date:
        return self.weeks[0]

    @property
    def last(self) -> date:
        return self.weeks[-1]


def _is_pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _week_range(alias: str, chunk: Chunk) -> tuple[str, dict[str, Any]]:
    """The chunk's weeks on `alias` (not its key range), as SQL and parameters."""
    if chunk.last == chunk.week_start:
        return f"{alias}.week_start = :w", {"w": chunk.week_start}
    return f"{alias}.week_start BETWEEN :w AND :wl", {"w": chunk.week_start, "wl": chunk.last}


def _range(alias: str, chunk: Chunk) -> tuple[str, dict[str, Any]]:
    """The chunk's weeks and key range on `alias`, as SQL and parameters."""
    cols = ", ".join(f'{alias}."{c}"' for c in _GROUP)
    sql, params = _week_range(alias, chunk)
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
    if ":wl" in sql:
        binds.append(sa.bindparam("wl", type_=sa.Date()))
    if ":now" in sql:
        binds.append(sa.bindparam("now", type_=UTCDateTime()))
    if ":cut" in sql:
        binds.append(sa.bindparam("cut", type_=sa.Date()))
    return clause.bindparams(*binds) if binds else clause


# --- planning (a read; outside the chunk transactions) --------------------------------------


def dirty_weeks(conn: Connection) -> list[tuple[date, int]]:
    """(week_start, number of dirty groups) for every week with marks, oldest first."""
    rows = conn.execute(
        sa.text(
            "SELECT week_start, COUNT(*) FROM rollup_dirty GROUP BY week_start ORDER BY week_start"
        )
    ).all()
    return [(as_date(r[0]), int(r[1])) for r in rows]


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


# PostgreSQL's work_mem inside a chunk. The default 4 MB makes a week's GROUP BY spill to disk
# (3x slower); at 64 MB the planner, estimating groups as the product of each column's distinct
# values (360,000 for 6 weeks of 5M events; 18,000 in fact), chose an external sort of 583,000
# rows over a hash table (3.0 s vs 1.3 s). The hash table really needs ~30 MB.
WORK_MEM = "256MB"


def prepare_transaction(conn: Connection) -> None:
    if _is_pg(conn):
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")


_CHUNK_KEYS = "rollup_chunk_keys"  # PostgreSQL: the keys a chunk took, until it commits


def take_marks(conn: Connection, chunk: Chunk, keep_keys: bool) -> int:
    """Lock the chunk's marks in one global order; return how many there are.

    PostgreSQL: one statement locks them (`FOR UPDATE`, which waits for every writer that
    holds one of them to commit) in the ORDER BY order and deletes them; with `keep_keys` their
    keys go to a temporary table for `scope` (a chunk whose week has roll-up rows already).
    `COLLATE "C"` is byte order, which for UTF-8 is the code-point order Python's `sorted` and
    the writers' statements use (meter.db.ledger): the same order on both sides, so no deadlock.
    A writer that wants one of these marks meanwhile waits for our commit, then inserts a new
    mark, since ours is gone by then. The deletion is undone with the rest if the chunk fails.

    SQLite: BEGIN IMMEDIATE already excludes every writer, so the marks in range are exactly
    the ones this chunk takes; they are deleted by `consume_marks`, at the end.
    """
    where, params = _range("d", chunk)
    if not _is_pg(conn):
        sql = f"SELECT COUNT(*) FROM rollup_dirty d WHERE {where}"
        return int(conn.execute(_text(sql), params).scalar() or 0)
    take = (
        "DELETE FROM rollup_dirty WHERE ctid IN (SELECT d.ctid FROM rollup_dirty d "
        f"WHERE {where} ORDER BY {MARK_ORDER} FOR UPDATE)"
    )
    if not keep_keys:
        return int(conn.execute(_text(take), params).rowcount)
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE IF NOT EXISTS {_CHUNK_KEYS} (week_start date, "
        'team varchar(200), "user" varchar(200), model varchar(200)) ON COMMIT DELETE ROWS'
    )
    sql = (
        f'WITH taken AS ({take} RETURNING week_start, team, "user", model) '
        f'INSERT INTO {_CHUNK_KEYS} (week_start, team, "user", model) '
        'SELECT week_start, team, "user", model FROM taken'
    )
    taken = int(conn.execute(_text(sql), params).rowcount)
    # Its real size for the planner: guessing one row, it probed weekly_usage through the
    # wrong index in delete_emptied (374 ms instead of 17 ms for 2,792 keys).
    conn.exec_driver_sql(f"ANALYZE {_CHUNK_KEYS}")
    return taken


def _scope(conn: Connection, chunk: Chunk) -> tuple[str, dict[str, Any]]:
    """A derived table `k(week_start, team, user, model)`: exactly the keys the chunk took."""
    if _is_pg(conn):
        return f'(SELECT week_start, team, "user", model FROM {_CHUNK_KEYS})', {}
    where, params = _range("d", chunk)
    return (
        f'(SELECT d.week_start, d.team, d."user", d.model FROM rollup_dirty d WHERE {where})',
        params,
    )


def _join_scope(table: str) -> str:
    return " AND ".join(f'k."{c}" = {table}."{c}"' for c in _KEY)


def existing_rows(conn: Connection, chunk: Chunk) -> int:
    where, params = _range("wu", chunk)
    return int(
        conn.execute(_text(f"SELECT COUNT(*) FROM weekly_usage wu WHERE {where}"), params).scalar()
        or 0
    )


def requests_in_scope(conn: Connection, chunk: Chunk, whole_range: bool) -> int:
    """Total `requests` of the rows the chunk may change (before and after: the difference is
    exactly the new events, since only the lease holder writes weekly_usage)."""
    if whole_range:
        where, params = _range("wu", chunk)
        sql = f"SELECT COALESCE(SUM(wu.requests), 0) FROM weekly_usage wu WHERE {where}"
    else:
        scope, params = _scope(conn, chunk)
        where, in_weeks = _week_range("wu", chunk)
        sql = (
            f"SELECT COALESCE(SUM(wu.requests), 0) FROM weekly_usage wu JOIN {scope} k "
            f"ON {_join_scope('wu')} WHERE {where}"
        )
        params = {**params, **in_weeks}
    return int(conn.execute(_text(sql), params).scalar() or 0)


def delete_emptied(conn: Connection, chunk: Chunk) -> None:
    """Drop the weekly row of a locked group that has no days left (run after `write_days`).

    A scalar subquery with LIMIT rather than NOT EXISTS: PostgreSQL turns NOT EXISTS into an
    anti-join that sorts the whole week's rows; this is one index probe per locked row.
    """
    scope, params = _scope(conn, chunk)
    where, in_weeks = _week_range("weekly_usage", chunk)
    match = " AND ".join(f'd."{c}" = weekly_usage."{c}"' for c in _KEY)
    conn.execute(
        _text(
            f'DELETE FROM weekly_usage WHERE {where} AND (week_start, team, "user", model) IN '
            f'(SELECT k.week_start, k.team, k."user", k.model FROM {scope} k) '
            f"AND (SELECT 1 FROM daily_usage d WHERE {match} LIMIT 1) IS NULL"
        ),
        {**params, **in_weeks},
    )


# Per event, as in every report: money over priced events only; the provider columns over the
# events that carry a provider cost (SPEC section 9: their sum, count and meter's own cost).
_COUNTS = """
    COUNT(*),
    COALESCE(SUM(e.prompt_tokens), 0),
    COALESCE(SUM(e.completion_tokens), 0),
    COALESCE(SUM(CASE WHEN e.status = 'error' THEN 1 ELSE 0 END), 0),
    COALESCE(SUM(CASE WHEN e.usage_source = 'estimated' THEN 1 ELSE 0 END), 0),
    COALESCE(SUM(CASE WHEN e.input_cost_units IS NULL THEN 1 ELSE 0 END), 0),
    COALESCE(SUM(e.input_cost_units), 0),
    COALESCE(SUM(e.output_cost_units), 0)"""
AGGREGATES = _COUNTS + ",\n    :now\n"
_PROVIDER = """,
    COALESCE(SUM(CASE WHEN e.usage_source = 'reconciled' THEN 1 ELSE 0 END), 0),
    COALESCE(SUM(CASE WHEN e.provider_cost_units IS NULL THEN 0 ELSE 1 END), 0),
    COALESCE(SUM(e.provider_cost_units), 0),
    COALESCE(SUM(CASE WHEN e.provider_cost_units IS NULL THEN 0
        ELSE COALESCE(e.input_cost_units, 0) + COALESCE(e.output_cost_units, 0) END), 0)"""
DAILY_AGGREGATES = _COUNTS + _PROVIDER + ",\n    :now\n"
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
_PROVIDER_TOTALS = (
    "reconciled",
    "provider_cost_events",
    "provider_cost_units",
    "provider_meter_cost_units",
)
COLUMNS = 'week_start, team, "user", model, ' + ", ".join(_TOTALS) + ", updated_at"
DAILY_COLUMNS = (
    'day, team, "user", model, week_start, '
    + ", ".join((*_TOTALS, *_PROVIDER_TOTALS))
    + ", updated_at"
)
_TAG_COLUMNS = (
    'day, tag_key, tag_value, team, "user", model, week_start, '
    + ", ".join(_TOTALS)
    + ", updated_at"
)
# A week is the sum of its days: exact, and a fifth of the rows of a second pass over events.
_WEEK_FROM_DAYS = ", ".join(f"SUM(d.{c})" for c in _TOTALS) + ", :now"
# Rows whose totals did not change are left alone: no write, updated_at keeps its meaning.
_UPSERT = (
    'ON CONFLICT (week_start, team, "user", model) DO UPDATE SET '
    + ", ".join(f"{c} = excluded.{c}" for c in (*_TOTALS, "updated_at"))
    + " WHERE "
    + " OR ".join(f"weekly_usage.{c} <> excluded.{c}" for c in _TOTALS)
)


# Rows are written in key order, so that a team's rows of a week sit together on disk: a
# hashed GROUP BY hands them over in hash order, and a team's 52-week summary then read ~10,000
# scattered pages for its 15,600 rows instead of a few hundred (PostgreSQL, 5M events: p99
# 44 ms -> 63-90 ms until this ORDER BY).
_IN_KEY_ORDER = 'ORDER BY d.week_start, d.team, d."user", d.model'
_DAY_GROUP = 'e.day, e.team, e."user", e.model, e.week_start'


def _unfrozen(alias: str, cutoff: date | None) -> tuple[str, dict[str, Any]]:
    """The days a chunk may recount: those from the purge cutoff on (all without a cutoff).

    Days before the cutoff are final. Their raw events are purged, or being purged in batches
    that may be committed between two statements of this chunk, so a recount would see some or
    none of them; their rows are kept as they are, and the week above them stays the sum of its
    days (meter.lifecycle.retention states the whole argument).
    """
    if cutoff is None:
        return "", {}
    return f" AND {alias}.day >= :cut", {"cut": cutoff}


def delete_days(
    conn: Connection, chunk: Chunk, whole_range: bool, tags: bool, cutoff: date | None = None
) -> None:
    """Drop the daily (and tag) rows the chunk recomputes: its whole range, or its groups',
    from the purge cutoff on."""
    tables = ("daily_usage", "daily_tag_usage") if tags else ("daily_usage",)
    for table in tables:
        live, cut = _unfrozen(table, cutoff)
        if whole_range:
            where, params = _range(table, chunk)
            conn.execute(_text(f"DELETE FROM {table} WHERE {where}{live}"), {**params, **cut})
            continue
        scope, params = _scope(conn, chunk)
        where, in_weeks = _week_range(table, chunk)
        conn.execute(
            _text(
                f'DELETE FROM {table} WHERE {where}{live} AND (week_start, team, "user", model) '
                f'IN (SELECT k.week_start, k.team, k."user", k.model FROM {scope} k)'
            ),
            {**params, **in_weeks, **cut},
        )


def _events_in(
    conn: Connection, chunk: Chunk, whole_range: bool
) -> tuple[str, str, dict[str, Any]]:
    """(joins, condition, parameters) of the chunk's events: its range, or its locked groups."""
    if whole_range:
        where, params = _range("e", chunk)
        return "events e", where, params
    scope, params = _scope(conn, chunk)
    where, in_weeks = _week_range("e", chunk)
    return f"{scope} k JOIN events e ON {_join_scope('e')}", where, {**params, **in_weeks}


def rolled_up_tag_keys(conn: Connection) -> list[str]:
    return [str(k) for k in conn.execute(sa.text("SELECT key FROM tag_keys ORDER BY key"))]


def write_days(
    conn: Connection,
    chunk: Chunk,
    now: datetime,
    whole_range: bool,
    tags: bool,
    cutoff: date | None = None,
) -> None:
    """Recompute the daily rows (and the rolled-up tags' rows) of the chunk's events, after
    `delete_days`: one GROUP BY over the range's events, or over the locked groups', from the
    purge cutoff on."""
    joins, where, params = _events_in(conn, chunk, whole_range)
    live, cut = _unfrozen("e", cutoff)
    where, params = where + live, {**params, **cut}
    conn.execute(
        _text(
            f"INSERT INTO daily_usage ({DAILY_COLUMNS}) "
            f"SELECT {_DAY_GROUP}, {DAILY_AGGREGATES} FROM {joins} WHERE {where} "
            f"GROUP BY {_DAY_GROUP} ORDER BY {_DAY_GROUP}"
        ),
        {**params, "now": now},
    )
    if tags:
        write_tags(conn, joins, where, params, now)


def write_tags(
    conn: Connection, joins: str, where: str, params: dict[str, Any], now: datetime
) -> None:
    """Tag rows of the rolled-up keys for the events of `joins` and `where` (`_events_in`).
    Events without a key have no row for it: the day's totals minus its rows are theirs."""
    if _is_pg(conn):
        each = "CROSS JOIN LATERAL json_each_text(e.tags) AS j(key, value)"
    else:
        each = "JOIN json_each(e.tags) AS j"
    conn.execute(
        _text(
            f"INSERT INTO daily_tag_usage ({_TAG_COLUMNS}) "
            f'SELECT e.day, j.key, j.value, e.team, e."user", e.model, e.week_start, '
            f"{AGGREGATES} FROM {joins} {each} JOIN tag_keys t ON t.key = j.key "
            f"WHERE e.tags IS NOT NULL AND j.value IS NOT NULL AND {where} "
            f'GROUP BY e.day, j.key, j.value, e.team, e."user", e.model, e.week_start'
        ),
        {**params, "now": now},
    )


def recompute_range(conn: Connection, chunk: Chunk, now: datetime, *, empty: bool) -> None:
    """Recompute every weekly row of the chunk's key range from its days (written just before
    by `write_days`): the cheap plan when most of the range is dirty (a first roll-up, the
    current week). `empty`: the range has no roll-up rows yet (only the lease holder writes
    them), so a plain INSERT does; PostgreSQL's ON CONFLICT costs a speculative insertion per
    row."""
    where, params = _range("d", chunk)
    conn.execute(
        _text(
            f"INSERT INTO weekly_usage ({COLUMNS}) "
            f'SELECT d.week_start, d.team, d."user", d.model, {_WEEK_FROM_DAYS} '
            f"FROM daily_usage d WHERE {where} "
            f'GROUP BY d.week_start, d.team, d."user", d.model {_IN_KEY_ORDER} '
            f"{'' if empty else _UPSERT}"
        ),
        {**params, "now": now},
    )


def recompute_groups(conn: Connection, chunk: Chunk, now: datetime) -> None:
    """Recompute only the locked groups' weekly rows (few dirty groups in a large week)."""
    scope, params = _scope(conn, chunk)
    where, in_weeks = _week_range("d", chunk)
    match = " AND ".join(f'k."{c}" = d."{c}"' for c in _KEY)
    conn.execute(
        _text(
            f"INSERT INTO weekly_usage ({COLUMNS}) "
            f'SELECT d.week_start, d.team, d."user", d.model, {_WEEK_FROM_DAYS} '
            f"FROM {scope} k JOIN daily_usage d ON {match} "
            f"WHERE {where} "
            f'GROUP BY d.week_start, d.team, d."user", d.model {_IN_KEY_ORDER} {_UPSERT}'
        ),
        {**params, **in_weeks, "now": now},
    )


def mark_months(conn: Connection, chunk: Chunk) -> None:
    """Mark the months the chunk's days lie in (every week of its range, whole or not): the
    run's month step (`recompute_month`) rewrites them; readers take them from weeks and days
    until then."""
    last_day = chunk.last + timedelta(days=6)
    conn.execute(
        sa.text(
            "INSERT INTO rollup_dirty_months (month_start) VALUES (:m) "
            "ON CONFLICT (month_start) DO NOTHING"
        ).bindparams(sa.bindparam("m", type_=sa.Date())),
        [{"m": m} for m in months_of(chunk.week_start, last_day)],
    )


def dirty_months(conn: Connection) -> list[date]:
    """The months whose monthly rows wait for the month step, oldest first."""
    rows = conn.execute(sa.text("SELECT month_start FROM rollup_dirty_months ORDER BY 1"))
    return [as_date(r[0]) for r in rows]


_MONTH_FROM_ROWS = ", ".join(f"SUM(d.{c})" for c in _TOTALS)


def recompute_month(conn: Connection, month: date, now: datetime) -> None:
    """Rewrite a marked month's rows as the sums of its days, and unmark it: the weekly rows
    of its whole weeks and the daily rows of its edge days (a third of the rows of its days;
    exact, a week is the sum of its days). Days before the purge cutoff are in both, as they
    are in every week."""
    next_month = (month + timedelta(days=31)).replace(day=1)
    weeks, edges = whole_weeks(month, next_month - timedelta(days=1))
    totals = ", ".join(_TOTALS)
    parts, binds, params = [], ["m"], {"m": month}
    if weeks:
        parts.append(
            f'SELECT team, "user", model, {totals} FROM weekly_usage '
            "WHERE week_start BETWEEN :wa AND :wb"
        )
        binds += ["wa", "wb"]
        params.update(wa=weeks[0], wb=weeks[-1])
    for i, (a, b) in enumerate(edges):
        parts.append(
            f'SELECT team, "user", model, {totals} FROM daily_usage '
            f"WHERE day BETWEEN :a{i} AND :b{i}"
        )
        binds += [f"a{i}", f"b{i}"]
        params.update({f"a{i}": a, f"b{i}": b})
    typed = [sa.bindparam(n, type_=sa.Date()) for n in binds]
    conn.execute(
        sa.text("DELETE FROM monthly_usage WHERE month_start = :m").bindparams(typed[0]),
        {"m": month},
    )
    conn.execute(
        sa.text(
            f'INSERT INTO monthly_usage (month_start, team, "user", model, {totals}, updated_at) '
            f'SELECT :m, d.team, d."user", d.model, {_MONTH_FROM_ROWS}, :now '
            f"FROM ({' UNION ALL '.join(parts)}) d "
            'GROUP BY d.team, d."user", d.model ORDER BY d.team, d."user", d.model'
        ).bindparams(*typed, sa.bindparam("now", type_=UTCDateTime())),
        {**params, "now": now},
    )
    conn.execute(
        sa.text("DELETE FROM rollup_dirty_months WHERE month_start = :m").bindparams(typed[0]),
        {"m": month},
    )


def drop_counted_holds(conn: Connection, chunk: Chunk, whole_range: bool) -> None:
    """Delete the gateway's holds (meter/gateway/holds.py) of the events this chunk counts.

    Runs before the recount, in the same transaction: every event this statement sees is also
    seen by the recount that follows (READ COMMITTED snapshots only grow; SQLite excludes every
    writer), so a hold leaves the budgets' spend exactly when its event's cost enters the
    roll-up, at the commit; the settled ones leave their groups of meter.db.settled (after the
    DELETE: the holds' locks first). `held` holds stay: a cancelled call's reservation waits for its
    generation lookup, which settles it and marks the group again. Driven from the holds (few)
    with one probe of the events' primary key each, never a scan of the chunk's events.
    """
    if whole_range:
        where, params = _range("h", chunk)
    else:
        scope, params = _scope(conn, chunk)
        where, in_weeks = _week_range("h", chunk)
        where += (
            ' AND (h.week_start, h.team, h."user", h.model) IN '
            f'(SELECT k.week_start, k.team, k."user", k.model FROM {scope} k)'
        )
        params = {**params, **in_weeks}
    deleted = conn.execute(
        _text(
            "DELETE FROM gateway_holds WHERE event_id IN (SELECT h.event_id FROM gateway_holds h "
            f"WHERE {where} AND h.state IN ('open', 'settled') "
            "AND EXISTS (SELECT 1 FROM events e WHERE e.id = h.event_id)) "
            'RETURNING state, day, team, "user", tags, amount_units'
        ).columns(
            sa.column("state", sa.String()),
            sa.column("day", sa.Date()),
            sa.column("team", sa.String()),
            sa.column("user", sa.String()),
            sa.column("tags", sa.JSON()),
            sa.column("amount_units", sa.BigInteger()),
        ),
        params,
    ).all()
    settled.subtract(conn, (h for h in deleted if h.state == "settled"))


def consume_marks(conn: Connection, chunk: Chunk) -> None:
    """SQLite: delete the chunk's marks (all of the range: no writer could add one meanwhile).
    PostgreSQL's `take_marks` deleted them already."""
    if _is_pg(conn):
        return
    where, params = _range("d", chunk)
    conn.execute(_text(f"DELETE FROM rollup_dirty AS d WHERE {where}"), params)


def utc_now() -> datetime:
    return datetime.now(UTC)
