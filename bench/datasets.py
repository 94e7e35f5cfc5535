"""The roll-up and read-path datasets: N events of 10 teams x 100 users x 3 models over the 52
weeks ending this week, loaded fast (SQLite executemany, PostgreSQL COPY), never through the API.

Cached under bench/.cache/datasets/ for the current ISO week: the COPY text, and the loaded
SQLite file (copied for each run, never used in place). PostgreSQL databases are throw-away
(meter_bench_*), loaded from the cached text each run. Every event's group is marked dirty, as
the ledger would have marked it: the first roll-up is a full one.

    .venv/bin/python -m bench.datasets --events 1000000   # build the caches only
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import sqlalchemy as sa

from bench import _events
from bench._common import (
    CACHE,
    PgDatabases,
    checkpoint,
    pg_dsn,
    say,
    sqlite_template,
    upgrade_cached,
)
from meter.db.ledger import EVENT_COLUMNS
from meter.weeks import week_of

DATASETS = CACHE / "datasets"
WEEKS = 52
UTC_ZONE = ZoneInfo("UTC")
_COLS = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
MARK_ALL = (
    'INSERT INTO rollup_dirty (week_start, team, "user", model, n) '
    'SELECT week_start, team, "user", model, COUNT(*) FROM events '
    'GROUP BY week_start, team, "user", model'
)


def span(now: datetime | None = None) -> tuple[datetime, datetime, str]:
    """[Monday 00:00 UTC 51 weeks before this week, the start of this hour), this week's label."""
    now = now or datetime.now(UTC)
    week = week_of(now, UTC)
    first = week.start - timedelta(weeks=WEEKS - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = now.replace(minute=0, second=0, microsecond=0)
    if end <= datetime(week.start.year, week.start.month, week.start.day, tzinfo=UTC):
        end = now - timedelta(seconds=1)  # the first hour of a week: keep some events in it
    return start, end, week.label


def _template_prices() -> dict[str, _events.PriceRow]:
    engine = sa.create_engine(f"sqlite:///{sqlite_template()}")
    try:
        with engine.connect() as conn:
            return _events.load_prices(conn)
    finally:
        engine.dispose()


def tsv(n: int) -> Path:
    """The dataset's COPY text, generated once per ISO week."""
    start, end, label = span()
    path = DATASETS / f"events-{n}-{label}.tsv"
    if path.exists():
        return path
    DATASETS.mkdir(parents=True, exist_ok=True)
    for old in DATASETS.glob(f"events-{n}-*.tsv"):
        old.unlink()
    prices = _template_prices()
    say(f"  generating {n:,} events over {WEEKS} weeks -> {path.name} ...")
    t0 = time.perf_counter()
    _events.write_tsv(path, n, start, end, prices)
    path.with_suffix(".prices.json").write_text(
        json.dumps({m: [p.id, p.input_units, p.output_units] for m, p in prices.items()})
    )
    say(f"  generated in {time.perf_counter() - t0:.1f} s")
    return path


def sqlite_file(n: int) -> Path:
    """The loaded SQLite dataset (events + dirty marks, nothing rolled up), cached."""
    source = tsv(n)
    path = source.with_suffix(".db")
    if path.exists():
        upgrade_cached(path)
        return path
    tmp = path.with_suffix(".loading")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    shutil.copy(sqlite_template(), tmp)
    say(f"  loading {n:,} events into SQLite ({path.name}) ...")
    t0 = time.perf_counter()
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        sql = f"INSERT INTO events ({_COLS}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
        conn.execute("BEGIN")
        for rows in _events.tsv_tuples(source):
            conn.executemany(sql, rows)
        conn.execute(MARK_ALL)
        conn.execute("COMMIT")
    finally:
        conn.close()
    checkpoint(tmp)
    tmp.rename(path)
    say(f"  loaded in {time.perf_counter() - t0:.1f} s")
    return path


def sqlite_copy(n: int, directory: Path, name: str) -> str:
    """A fresh working copy of the SQLite dataset; its URL."""
    source = sqlite_file(n)
    path = directory / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(source, path)
    return f"sqlite:///{path}"


def pg_load(pg: PgDatabases, n: int) -> str:
    """A new meter_bench_* database holding the dataset (COPY), marked, VACUUM ANALYZEd."""
    source = tsv(n)
    url = pg.create()
    expected = json.loads(source.with_suffix(".prices.json").read_text())
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = {
            m: [p.id, p.input_units, p.output_units] for m, p in _events.load_prices(conn).items()
        }
    engine.dispose()
    if found != expected:
        raise RuntimeError(f"price ids differ from the dataset's: {found} vs {expected}")
    say(f"  loading {n:,} events into PostgreSQL (COPY) ...")
    t0 = time.perf_counter()
    with psycopg.connect(pg_dsn(url)) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY events ({_COLS}) FROM STDIN") as copy,
            open(source, "rb") as f,
        ):
            while block := f.read(1 << 20):
                copy.write(block)
        conn.execute(MARK_ALL)
        conn.commit()
    with psycopg.connect(pg_dsn(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE rollup_dirty")
    say(f"  loaded in {time.perf_counter() - t0:.1f} s")
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, action="append")
    args = parser.parse_args(argv)
    for n in args.events or [1_000_000, 5_000_000]:
        sqlite_file(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
