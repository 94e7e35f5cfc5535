"""Purge (SPEC section 6): `meter purge` without pauses against a loop of bare
`DELETE FROM events WHERE id IN (next 10,000 ids)` over the same rows (the ids fetched before
the clock starts: the baseline is favoured), VACUUM excluded; then `POST /v1/events` throughput
while a purge with the default pauses runs, against the same ingest without a purge.
Every side starts from a copy of one database holding `--events` rolled-up events of
September 2026 (all older than the cutoff). Targets: purge <= 2x the loop; ingest >= 70%.

    .venv/bin/python -m bench.purge [--db both] [--events 1000000] [--ingest-events 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import _events
from bench._common import (
    PgDatabases,
    Report,
    Row,
    backends,
    checkpoint,
    meter_server,
    new_sqlite,
    pg_databases,
    say,
    sqlite_path,
    workdir,
)
from bench.export import load
from bench.ingest import bodies, post_all

COMMAND = ".venv/bin/python -m bench.purge"
BASE_BATCH = 10_000
PURGE_TARGET = 2.0
INGEST_TARGET = 0.70
RETENTION_DAYS = 30


def open_db(url: str) -> Any:
    from meter.db.engine import make_engine
    from meter.db.session import Database
    from meter.weeks import load_timezone

    return Database(make_engine(url), load_timezone("UTC"))


def count(url: str) -> int:
    import sqlalchemy as sa

    db = open_db(url)
    try:
        with db.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() or 0)
    finally:
        db.dispose()


class Copies:
    """Copies of one loaded, rolled-up database: a file copy (SQLite) or a template (PG)."""

    def __init__(self, url: str, work: Path, pg: PgDatabases | None) -> None:
        self.url, self.work, self.pg, self.n = url, work, pg, 0
        if pg is None:
            checkpoint(Path(sqlite_path(url)))

    def make(self) -> str:
        self.n += 1
        if self.pg is None:
            path = self.work / f"purge-copy{self.n}.db"
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            shutil.copy(sqlite_path(self.url), path)
            return f"sqlite:///{path}"
        import sqlalchemy as sa

        source = sa.make_url(self.url).database
        name = f"{source}_c{self.n}"
        self.pg._exec(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        self.pg.created.insert(0, name)
        return self.pg.url(name)

    def drop(self, url: str) -> None:
        if self.pg is not None:
            self.pg.drop(url)
        else:
            Path(sqlite_path(url)).unlink(missing_ok=True)


def baseline_deletes(url: str) -> float:
    """Seconds for the bare loop: every id, then DELETE ... WHERE id IN (next 10,000) each in
    its own transaction."""
    import sqlalchemy as sa

    db = open_db(url)
    try:
        with db.engine.connect() as conn:
            ids = list(conn.execute(sa.text("SELECT id FROM events ORDER BY occurred_at, id")))
        pg = not db.is_sqlite
        t0 = time.perf_counter()
        for i in range(0, len(ids), BASE_BATCH):
            part = [r[0] for r in ids[i : i + BASE_BATCH]]
            with db.engine.begin() as conn:
                if pg:
                    conn.execute(sa.text("DELETE FROM events WHERE id = ANY(:ids)"), {"ids": part})
                else:
                    marks = ",".join("?" * len(part))
                    conn.exec_driver_sql(f"DELETE FROM events WHERE id IN ({marks})", tuple(part))
        return time.perf_counter() - t0
    finally:
        db.dispose()


def ours(url: str, pause_ratio: float | None) -> tuple[float, int]:
    from meter.lifecycle.retention import purge

    db = open_db(url)
    try:
        t0 = time.perf_counter()
        result = purge(db, RETENTION_DAYS, actor="cli", pause_ratio=pause_ratio)
        return time.perf_counter() - t0, result.deleted
    finally:
        db.dispose()


def ingest(url: str, payloads: list[bytes], during_purge: bool) -> tuple[float, bool]:
    """(seconds to POST every payload, whether a purge ran from before the first to after the
    last) against a fresh `meter serve`."""
    with meter_server(url, "purge-ingest") as base_url:
        if not during_purge:
            return post_all(base_url, payloads, 2), False
        done = threading.Event()
        thread = threading.Thread(target=lambda: (ours(url, None), done.set()), daemon=True)
        thread.start()
        time.sleep(2.0)  # past the roll-up and the cutoff: into the deletes
        seconds = post_all(base_url, payloads, 2)
        overlapped = not done.is_set()
        thread.join(timeout=3600)
        return seconds, overlapped


def run(report: Report, backend: str, n: int, m: int, work: Path, pg: PgDatabases | None) -> Any:
    from meter.rollup import run_rollup

    url = new_sqlite(work, "purge-source") if pg is None else pg.create()
    say(f"  loading {n:,} events of September 2026")
    load(url, 0, n)
    db = open_db(url)
    run_rollup(db)
    db.dispose()
    copies = Copies(url, work, pg)

    copy = copies.make()
    base_s = baseline_deletes(copy)
    if count(copy) != 0:
        raise RuntimeError("the baseline left events behind")
    copies.drop(copy)
    copy = copies.make()
    ours_s, deleted = ours(copy, 0.0)
    if deleted != n or count(copy) != 0:
        raise RuntimeError(f"meter purge deleted {deleted} of {n}")
    copies.drop(copy)
    ratio = ours_s / base_s
    say(f"  {backend}: bare loop {base_s:.1f} s, meter purge (no pauses) {ours_s:.1f} s")
    report.add(
        Row(
            what=f"{backend}: purge of {n:,} events, no pauses",
            baseline=f"{base_s:.1f} s ({n / base_s:,.0f} ev/s)",
            ours=f"{ours_s:.1f} s ({n / ours_s:,.0f} ev/s)",
            ratio=f"{ratio:.2f}x",
            target="<= 2x",
            met=ratio <= PURGE_TARGET,
            notes="baseline: DELETE ... WHERE id IN (next 10,000), ids fetched untimed",
        )
    )

    now = datetime.now(UTC)
    payloads = bodies(
        _events.records(list(_events.specs(m, now - timedelta(hours=1), now, seed=5)))
    )
    copy = copies.make()
    alone_s, _ = ingest(copy, payloads, during_purge=False)
    copies.drop(copy)
    copy = copies.make()
    during_s, overlapped = ingest(copy, payloads, during_purge=True)
    left = count(copy)
    copies.drop(copy)
    if left != m:
        raise RuntimeError(f"{left} events after the purge, expected the {m:,} ingested")
    share = alone_s / during_s
    say(
        f"  {backend}: ingest alone {m / alone_s:,.0f} ev/s, during a purge {m / during_s:,.0f}"
        f" ev/s (purge still running at the end: {overlapped})"
    )
    report.add(
        Row(
            what=f"{backend}: POST /v1/events x1,000 while a purge runs (default pauses)",
            baseline=f"{m / alone_s:,.0f} ev/s",
            ours=f"{m / during_s:,.0f} ev/s",
            ratio=f"{share:.0%}",
            target=">= 70%",
            met=share >= INGEST_TARGET and overlapped,
            notes=f"{m:,} events, 2 clients; the purge "
            + ("outlasted the ingest" if overlapped else "ended first: not comparable"),
        )
    )
    if pg is not None:
        pg.drop(url)
    return {"baseline_s": base_s, "purge_s": ours_s, "ingest_alone_s": alone_s,
            "ingest_during_s": during_s, "overlapped": overlapped}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--ingest-events", type=int, default=100_000)
    args = parser.parse_args(argv)
    report = Report("purge", COMMAND)
    work = workdir("purge")
    with pg_databases() as pg:
        for backend in backends(args.db):
            say(f"purge, {backend}:")
            report.extra[backend] = run(
                report,
                backend,
                args.events,
                args.ingest_events,
                work,
                pg if backend == "postgresql" else None,
            )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
