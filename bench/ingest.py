"""Ingest API: `POST /v1/events` in batches of 1,000 to a real `meter serve` (one uvicorn
worker, no roll-up scheduler, SQLite or PostgreSQL), bodies pre-built, sent over keep-alive
connections by `--clients` threads, vs the raw same-dedupe baseline of bench.recording
(SQLite INSERT OR IGNORE, batch 1,000; PostgreSQL COPY + INSERT ON CONFLICT, batch 10,000) on the
same events. Alternating rounds, fresh databases each, median. Target: >= 50% of the baseline.
`--with-key` sends an ingest key stored in the database (as production does: its lookup, and its
last_used_at written once a minute) instead of serving in open mode.

    .venv/bin/python -m bench.ingest [--db both] [--events 100000] [--clients 2] [--with-key]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import _events, recording
from bench._common import (
    PgDatabases,
    Report,
    Row,
    backends,
    median,
    meter_server,
    new_sqlite,
    pg_databases,
    say,
    workdir,
)

COMMAND = ".venv/bin/python -m bench.ingest"
BATCH = 1_000
TARGET = 0.50


def bodies(records: list[Any]) -> list[bytes]:
    out = []
    for i in range(0, len(records), BATCH):
        doc = {"events": [r.to_wire() for r in records[i : i + BATCH]]}
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


def ingest_key(database_url: str) -> str:
    """A fresh ingest key stored in the database."""
    from meter.db.engine import make_engine
    from meter.keys import create_key

    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            return create_key(conn, "ingest", None, "bench")[1]
    finally:
        engine.dispose()


def post_all(base_url: str, payloads: list[bytes], clients: int, key: str | None = None) -> float:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    lock = threading.Lock()
    queue = list(reversed(payloads))
    errors: list[str] = []
    inserted = [0]

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    body = queue.pop()
                response = client.post("/v1/events", content=body, headers=headers)
                if response.status_code != 200:
                    with lock:
                        errors.append(f"HTTP {response.status_code}: {response.text[:300]}")
                    return
                with lock:
                    inserted[0] += response.json()["inserted"]

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    expected = len(payloads) * BATCH
    if inserted[0] != expected:
        raise RuntimeError(f"inserted {inserted[0]} of {expected}")
    return elapsed


def run(
    report: Report,
    backend: str,
    n: int,
    rounds: int,
    clients: int,
    work: Path,
    pg: PgDatabases | None,
    with_key: bool = False,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    specs = list(_events.specs(n, now - timedelta(hours=1), now, seed=21))
    payloads = bodies(_events.records(specs))

    def fresh(name: str) -> str:
        return new_sqlite(work, name) if pg is None else pg.create()

    probe = fresh("probe")
    prices = recording.prices_of(probe)
    rows = (_events.sqlite_rows if backend == "sqlite" else _events.pg_rows)(specs, prices)
    base_s: list[float] = []
    ours_s: list[float] = []
    same_batch_s: list[float] = []  # PostgreSQL: the raw insert at the API's batch of 1,000
    for r in range(rounds):
        order = ("base", "ours") if r % 2 == 0 else ("ours", "base")
        for side in order:
            url = fresh(f"ingest-{side}{r}")
            if side == "ours":
                key = ingest_key(url) if with_key else None
                with meter_server(url, f"ingest-{backend}") as base_url:
                    ours_s.append(post_all(base_url, payloads, clients, key))
            elif backend == "sqlite":
                base_s.append(recording.sqlite_baseline(url, rows))
            else:
                base_s.append(recording.pg_baseline(url, rows))
                pg.drop(url)
                url = fresh(f"ingest-same{r}")
                same_batch_s.append(recording.pg_baseline(url, rows, batch_size=BATCH))
            stored = recording.count_events(url)
            if stored != n:
                raise RuntimeError(f"{side} stored {stored} events, expected {n}")
            if pg is not None:
                pg.drop(url)
        say(
            f"  {backend} round {r + 1}: baseline {n / base_s[-1]:,.0f}/s, "
            f"POST /v1/events {n / ours_s[-1]:,.0f}/s"
        )
    base_rate = n / median(base_s)
    ours_rate = n / median(ours_s)
    ratio = ours_rate / base_rate
    report.add(
        Row(
            what=f"{backend}: POST /v1/events x1,000, {n:,} events, {clients} clients"
            + (", ingest key" if with_key else ""),
            baseline=f"{base_rate:,.0f} ev/s",
            ours=f"{ours_rate:,.0f} ev/s",
            ratio=f"{ratio:.0%}",
            target=">= 50%",
            met=ratio >= TARGET,
            notes="baseline: the raw same-dedupe insert of bench.recording",
        )
    )
    if same_batch_s:
        same_rate = n / median(same_batch_s)
        report.add(
            Row(
                what=f"{backend}: same, against the raw insert at batch 1,000 (information)",
                baseline=f"{same_rate:,.0f} ev/s",
                ours=f"{ours_rate:,.0f} ev/s",
                ratio=f"{ours_rate / same_rate:.0%}",
                target="-",
                met=None,
                notes="one commit (WAL flush) per 1,000 events on both sides",
            )
        )
    return {
        "baseline_s": base_s,
        "ours_s": ours_s,
        "same_batch_s": same_batch_s,
        "events": n,
        "clients": clients,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--with-key", action="store_true", help="send a stored ingest key")
    args = parser.parse_args(argv)
    report = Report("ingest", COMMAND)
    work = workdir("ingest")
    with pg_databases() as pg:
        for backend in backends(args.db):
            say(f"ingest, {backend}:")
            report.extra[backend] = run(
                report,
                backend,
                args.events,
                args.rounds,
                args.clients,
                work,
                pg if backend == "postgresql" else None,
                args.with_key,
            )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
