"""Recording throughput, on SQLite and PostgreSQL.

1. The database-write stage: meter's store (`DatabaseStore.store` -> `ledger.insert_events`, one
   transaction per batch of the drain's 10,000 pre-built events: pricing, rows, dedupe, roll-up
   marks) vs a raw baseline doing the same dedupe into an identical table with pre-built rows:
   SQLite `INSERT OR IGNORE` via sqlite3.executemany, batch 1,000, WAL (synchronous=NORMAL, as
   meter's engine); PostgreSQL psycopg COPY into a temporary table then
   `INSERT ... ON CONFLICT DO NOTHING`, batch 10,000. Alternating rounds, fresh databases each,
   median of the rounds. Target: >= 70% of the baseline.
2. End to end: `Meter.record` x N (validation, spool write) until `Meter.flush` says every event
   is committed (the drain thread parses the spool and stores it), one process.
   Target: >= 20,000 events/s.

    .venv/bin/python -m bench.recording [--db both|sqlite|postgresql] [--events 200000]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa

from bench import _events
from bench._common import (
    PgDatabases,
    Report,
    Row,
    backends,
    median,
    new_sqlite,
    pg_databases,
    pg_dsn,
    say,
    sqlite_path,
    workdir,
)
from meter.db.ledger import EVENT_COLUMNS
from meter.recorder.drain import BATCH_EVENTS
from meter.recorder.stores import DatabaseStore
from meter.settings import get_settings

COMMAND = ".venv/bin/python -m bench.recording"
WRITE_TARGET = 0.70
E2E_TARGET = 20_000
SQLITE_BASELINE_BATCH = 1_000
PG_BASELINE_BATCH = 10_000
_COLS = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)

T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def count_events(url: str) -> int:
    engine = sa.create_engine(url.replace("postgresql+psycopg", "postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() or 0)
    finally:
        engine.dispose()


def prices_of(url: str) -> dict[str, _events.PriceRow]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return _events.load_prices(conn)
    finally:
        engine.dispose()


# -- the write stage ---------------------------------------------------------------------------


def ours_write(url: str, records: list[Any]) -> float:
    store = DatabaseStore(get_settings(database_url=url))
    store.open()  # migrations check and pool warm-up: not part of the write stage
    try:
        t0 = time.perf_counter()
        for batch in batches(records, BATCH_EVENTS):
            store.store(list(batch), [])
        return time.perf_counter() - t0
    finally:
        store.close()


def sqlite_baseline(url: str, rows: list[tuple[Any, ...]]) -> float:
    conn = sqlite3.connect(sqlite_path(url), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        sql = (
            f"INSERT OR IGNORE INTO events ({_COLS}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
        )
        t0 = time.perf_counter()
        for batch in batches(rows, SQLITE_BASELINE_BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        conn.close()


def pg_baseline(
    url: str, rows: list[tuple[Any, ...]], batch_size: int = PG_BASELINE_BATCH
) -> float:
    with psycopg.connect(pg_dsn(url)) as conn:
        t0 = time.perf_counter()
        for batch in batches(rows, batch_size):
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE events INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS"
                )
                with cur.copy(f"COPY incoming ({_COLS}) FROM STDIN") as copy:
                    for row in batch:
                        copy.write_row(row)
                cur.execute(
                    f"INSERT INTO events ({_COLS}) SELECT {_COLS} FROM incoming "
                    "ON CONFLICT (id) DO NOTHING"
                )
        return time.perf_counter() - t0


def write_stage(
    report: Report, backend: str, n: int, rounds: int, work: Path, pg: PgDatabases | None
) -> dict[str, Any]:
    now = datetime.now(UTC)
    specs = list(_events.specs(n, now - timedelta(hours=1), now, seed=11))
    records = _events.records(specs)

    def fresh(name: str) -> str:
        return new_sqlite(work, name) if pg is None else pg.create()

    probe = fresh("probe")
    prices = prices_of(probe)
    rows = (_events.sqlite_rows if backend == "sqlite" else _events.pg_rows)(specs, prices)
    base_s: list[float] = []
    ours_s: list[float] = []
    for r in range(rounds):
        order = ("base", "ours") if r % 2 == 0 else ("ours", "base")
        for side in order:
            url = fresh(f"{side}{r}")
            if side == "ours":
                ours_s.append(ours_write(url, records))
            elif backend == "sqlite":
                base_s.append(sqlite_baseline(url, rows))
            else:
                base_s.append(pg_baseline(url, rows))
            stored = count_events(url)
            if stored != n:
                raise RuntimeError(f"{side} stored {stored} events, expected {n}")
            if pg is not None:
                pg.drop(url)
        say(
            f"  {backend} round {r + 1}: baseline {n / base_s[-1]:,.0f}/s, "
            f"meter {n / ours_s[-1]:,.0f}/s"
        )
    base_rate = n / median(base_s)
    ours_rate = n / median(ours_s)
    ratio = ours_rate / base_rate
    base_desc = (
        "INSERT OR IGNORE executemany, batch 1,000"
        if backend == "sqlite"
        else "COPY to temp + INSERT ON CONFLICT, batch 10,000"
    )
    report.add(
        Row(
            what=f"{backend}: write stage, {n:,} events, median of {rounds} rounds",
            baseline=f"{base_rate:,.0f} ev/s",
            ours=f"{ours_rate:,.0f} ev/s",
            ratio=f"{ratio:.0%}",
            target=">= 70%",
            met=ratio >= WRITE_TARGET,
            notes=f"baseline: raw {base_desc}; meter: insert_events, batch {BATCH_EVENTS:,}",
        )
    )
    return {"baseline_s": base_s, "ours_s": ours_s, "events": n}


# -- end to end -------------------------------------------------------------------------------


def end_to_end(report: Report, backend: str, n: int, work: Path, pg: PgDatabases | None) -> Any:
    from meter import Meter

    url = new_sqlite(work, "e2e") if pg is None else pg.create()
    now = datetime.now(UTC)
    specs = list(_events.specs(n, now - timedelta(hours=1), now, seed=13))
    meter = Meter(database_url=url, spool_dir=work / f"spool-e2e-{backend}")
    try:
        meter.record(model=_events.MODELS[0], prompt_tokens=1, completion_tokens=1)
        if not meter.flush(timeout=60):  # the store is open and warm before the clock starts
            raise RuntimeError("warm-up event not stored")
        record = meter.record
        t0 = time.perf_counter()
        for s in specs:
            record(
                model=s.model,
                prompt_tokens=s.prompt,
                completion_tokens=s.completion,
                user=s.user,
                team=s.team,
                status=s.status,
                usage_source=s.usage_source,
            )
        t_recorded = time.perf_counter()
        flushed = meter.flush(timeout=600)
        t_done = time.perf_counter()
    finally:
        meter.close()
    stored = count_events(url) - 1
    if not flushed or stored != n:
        raise RuntimeError(f"end to end: flushed={flushed}, stored {stored} of {n}")
    if pg is not None:
        pg.drop(url)
    rate = n / (t_done - t0)
    record_rate = n / (t_recorded - t0)
    report.add(
        Row(
            what=f"{backend}: end to end Meter.record -> committed, {n:,} events",
            baseline="-",
            ours=f"{rate:,.0f} ev/s",
            ratio="-",
            target=">= 20,000 ev/s",
            met=rate >= E2E_TARGET,
            notes=f"the caller's record() alone: {record_rate:,.0f}/s",
        )
    )
    return {"seconds": t_done - t0, "record_seconds": t_recorded - t0, "events": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    parser.add_argument("--events", type=int, default=200_000, help="write stage, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e-events", type=int, default=100_000)
    args = parser.parse_args(argv)
    report = Report("recording", COMMAND)
    work = workdir("recording")
    with pg_databases() as pg:
        for backend in backends(args.db):
            say(f"recording, {backend}:")
            dbs = pg if backend == "postgresql" else None
            report.extra[f"{backend}_write"] = write_stage(
                report, backend, args.events, args.rounds, work, dbs
            )
            report.extra[f"{backend}_e2e"] = end_to_end(report, backend, args.e2e_events, work, dbs)
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
