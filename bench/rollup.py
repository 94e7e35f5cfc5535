"""Roll-up, on SQLite and PostgreSQL, for datasets of 1M and 5M events (bench.datasets).

- Full: `run_rollup` over every dirty group (days, and weeks as sums of days; tags off) vs one
  bare `INSERT INTO <copy of daily_usage> SELECT ... GROUP BY day, team, user, model` over the
  same events with the daily roll-up's keys and aggregates (PostgreSQL: the same `SET LOCAL
  work_mem`). The baseline runs before and after ours; the faster one counts. Target: <= 1.5x
  (SPEC section 6, "roll-up with days").
- Incremental: 10,000 new events (this week, stored through the ledger, so they mark their
  groups) on top of the largest dataset, then `run_rollup`. Target: <= 5% of the full run.
- Then the read path (bench.read_path.measure) on the rolled-up largest dataset.

    .venv/bin/python -m bench.rollup [--db both] [--sizes 1000000,5000000] [--no-read-path]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench import _events, datasets, read_path
from bench._common import PgDatabases, Report, Row, backends, pg_databases, say, workdir
from meter.db.engine import make_engine
from meter.db.ledger import insert_events, load_price_book
from meter.db.models import UTCDateTime
from meter.db.session import Database
from meter.rollup.engine import run_rollup
from meter.rollup.repository import DAILY_AGGREGATES, DAILY_COLUMNS, WORK_MEM
from meter.weeks import week_of

COMMAND = ".venv/bin/python -m bench.rollup"
FULL_TARGET = 1.5
INCREMENTAL_TARGET = 0.05
INCREMENTAL_EVENTS = 10_000

# The daily roll-up's own columns and aggregates (meter.rollup.repository), over the whole
# table at once.
_BARE = f"""
INSERT INTO wu_bare ({DAILY_COLUMNS})
SELECT e.day, e.team, e."user", e.model, e.week_start, {DAILY_AGGREGATES}
FROM events e
GROUP BY e.day, e.team, e."user", e.model, e.week_start
"""


def _create_bare_table(conn: sa.Connection) -> None:
    """An empty table identical to daily_usage (columns, key, indexes)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("CREATE TABLE wu_bare (LIKE daily_usage INCLUDING ALL)")
        return
    ddl = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE tbl_name = 'daily_usage' AND sql IS NOT NULL "
        "ORDER BY type DESC"  # the table before its indexes
    ).all()
    for (sql,) in ddl:
        conn.exec_driver_sql(sql.replace("daily_usage", "wu_bare"))


def bare_group_by(db: Database) -> tuple[float, int]:
    """Seconds for the bare INSERT ... SELECT ... GROUP BY (table created and dropped outside
    the timing), and the rows it wrote."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS wu_bare")
        _create_bare_table(conn)
    t0 = time.perf_counter()
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")  # as meter's
        stmt = sa.text(_BARE).bindparams(sa.bindparam("now", type_=UTCDateTime()))
        rows = conn.execute(stmt, {"now": datetime.now(UTC)}).rowcount
    elapsed = time.perf_counter() - t0
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE wu_bare")
    return elapsed, int(rows)


def _warm(db: Database) -> None:
    with db.engine.connect() as conn:
        conn.exec_driver_sql("SELECT COUNT(*), SUM(prompt_tokens), MAX(team) FROM events").all()


def _totals(db: Database) -> tuple[int, int, int]:
    with db.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT COUNT(*), COALESCE(SUM(requests), 0), COALESCE(SUM(output_cost_units), 0) "
            "FROM daily_usage"
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def new_events(db: Database, n: int) -> None:
    """n events of this week through the ledger (it marks their groups dirty)."""
    now = datetime.now(UTC)
    week = week_of(now, UTC)
    start = max(
        now - timedelta(hours=1),
        datetime(week.start.year, week.start.month, week.start.day, tzinfo=UTC),
    )
    records = _events.records(list(_events.specs(n, start, now, seed=99)))
    with db.engine.begin() as conn:
        insert_events(conn, records, load_price_book(conn), datasets.UTC_ZONE)


def one_size(
    report: Report, backend: str, n: int, pg: PgDatabases | None, last: bool, read: bool
) -> dict[str, Any]:
    work = workdir(f"rollup-{backend}-{n}")
    url = datasets.sqlite_copy(n, work, "rollup") if pg is None else datasets.pg_load(pg, n)
    db = Database(engine=make_engine(url), tz=datasets.UTC_ZONE)
    out: dict[str, Any] = {}
    try:
        _warm(db)
        say("  bare INSERT ... SELECT ... GROUP BY ...")
        base1, groups = bare_group_by(db)
        say(f"    {base1:.2f} s, {groups:,} groups")
        say("  meter full roll-up ...")
        t0 = time.perf_counter()
        result = run_rollup(db)
        full = time.perf_counter() - t0
        say(f"    {full:.2f} s ({result.chunks} chunks, {result.events_rolled_up:,} events)")
        base2, _ = bare_group_by(db)
        say(f"  bare again: {base2:.2f} s")
        base = min(base1, base2)
        rows_, requests, _ = _totals(db)
        if rows_ != groups or requests != n or result.events_rolled_up != n:
            raise RuntimeError(
                f"roll-up totals are wrong: {rows_} rows / {groups} groups, {requests} requests "
                f"/ {n} events, rolled up {result.events_rolled_up}"
            )
        ratio = full / base
        report.add(
            Row(
                what=f"{backend}: full roll-up, {n:,} events, {groups:,} groups",
                baseline=f"{base:.2f} s",
                ours=f"{full:.2f} s",
                ratio=f"{ratio:.2f}x",
                target="<= 1.5x",
                met=ratio <= FULL_TARGET,
                notes="baseline: one bare INSERT .. SELECT .. GROUP BY (day keys), faster of 2",
            )
        )
        out.update(full_s=full, baseline_s=[base1, base2], groups=groups)
        if last:
            say(f"  {INCREMENTAL_EVENTS:,} new events, then an incremental roll-up ...")
            new_events(db, INCREMENTAL_EVENTS)
            t0 = time.perf_counter()
            inc = run_rollup(db)
            inc_s = time.perf_counter() - t0
            if inc.events_rolled_up != INCREMENTAL_EVENTS:
                raise RuntimeError(f"incremental rolled up {inc.events_rolled_up} events")
            share = inc_s / full
            report.add(
                Row(
                    what=(
                        f"{backend}: incremental roll-up, {INCREMENTAL_EVENTS:,} new on "
                        f"{n:,} ({inc.groups:,} groups)"
                    ),
                    baseline=f"{full:.2f} s (full)",
                    ours=f"{inc_s:.3f} s",
                    ratio=f"{share:.1%}",
                    target="<= 5% of full",
                    met=share <= INCREMENTAL_TARGET,
                )
            )
            out.update(incremental_s=inc_s, incremental_groups=inc.groups)
    finally:
        db.dispose()
    if last and read:
        say("  read path on the rolled-up dataset ...")
        out["read_path"] = read_path.measure(report, backend, url, n + INCREMENTAL_EVENTS)
    if pg is not None:
        pg.drop(url)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--no-read-path", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    report = Report("rollup", COMMAND)
    with pg_databases() as pg:
        for backend in backends(args.db):
            for n in sizes:
                say(f"roll-up, {backend}, {n:,} events:")
                report.extra[f"{backend}_{n}"] = one_size(
                    report,
                    backend,
                    n,
                    pg if backend == "postgresql" else None,
                    last=n == sizes[-1],
                    read=not args.no_read_path,
                )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
