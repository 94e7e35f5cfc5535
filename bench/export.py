"""Export in constant memory: peak RSS of `meter export events -o /dev/null` (a child process,
sampled every 20 ms) and of a `meter serve` streaming `GET /v1/export/events`, with 20k and then
200k events in the database (SQLite or PostgreSQL). The two peaks should be about equal: memory
does not grow with the number of events exported. No target; figures for BENCHMARKS.md.

    .venv/bin/python -m bench.export [--db both] [--events 200000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import _events
from bench._common import (
    METER_BIN,
    PgDatabases,
    Report,
    Row,
    backends,
    meter_server,
    new_sqlite,
    pg_databases,
    say,
    workdir,
)

COMMAND = ".venv/bin/python -m bench.export"
CHUNK = 10_000


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples a process's resident memory every 20 ms in a thread; `peak` in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> float:
        return self.peak_kib / 1024


def load(url: str, start_index: int, count: int) -> None:
    """Store `count` more events through the ledger (the one way events are stored)."""
    from meter.db.engine import make_engine
    from meter.db.ledger import insert_events, load_price_book
    from meter.weeks import load_timezone

    engine = make_engine(url)
    tz = load_timezone("UTC")
    base = datetime(2026, 9, 1, tzinfo=UTC)
    try:
        for first in range(start_index, start_index + count, CHUNK):
            n = min(CHUNK, start_index + count - first)
            window = base + timedelta(hours=first // CHUNK)
            records = _events.records(
                list(_events.specs(n, window, window + timedelta(hours=1), seed=first))
            )
            with engine.begin() as conn:
                insert_events(conn, records, load_price_book(conn), tz)
    finally:
        engine.dispose()


def cli_export(url: str, for_ingest: bool) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of the CLI exporting everything to /dev/null."""
    cmd = [METER_BIN, "export", "events", "--output", "/dev/null"]
    if for_ingest:
        cmd.append("--for-ingest")
    env = {"METER_DATABASE_URL": url, "PATH": "/usr/bin:/bin", "COLUMNS": "100"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with PeakRss(proc.pid) as rss:
        _, err = proc.communicate(timeout=1800)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"meter export failed: {err.decode()[-500:]}")
    return rss.peak, elapsed


def http_export(url: str, name: str) -> tuple[float, float, int]:
    """(peak RSS MiB of the server, seconds, lines) streaming GET /v1/export/events."""
    with meter_server(url, name) as base_url:
        pid = server_pid(base_url)
        lines = 0
        t0 = time.perf_counter()
        with (
            PeakRss(pid) as rss,
            httpx.Client(base_url=base_url, timeout=600) as client,
            client.stream("GET", "/v1/export/events") as response,
        ):
            response.raise_for_status()
            for _ in response.iter_lines():
                lines += 1
        return rss.peak, time.perf_counter() - t0, lines


def server_pid(base_url: str) -> int:
    port = base_url.rsplit(":", 1)[1]
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split("pid=")[1].split(",")[0])


def run(report: Report, backend: str, total: int, work: Path, pg: PgDatabases | None) -> Any:
    url = new_sqlite(work, "export") if pg is None else pg.create()
    small = total // 10
    figures: dict[str, Any] = {}
    loaded = 0
    for size in (small, total):
        load(url, loaded, size - loaded)
        loaded = size
        cli_peak, cli_s = cli_export(url, for_ingest=False)
        ingest_peak, ingest_s = cli_export(url, for_ingest=True)
        http_peak, http_s, lines = http_export(url, f"export-{backend}-{size}")
        if lines != size:
            raise RuntimeError(f"GET /v1/export/events gave {lines} lines, expected {size}")
        figures[str(size)] = {
            "cli_peak_mib": cli_peak,
            "cli_s": cli_s,
            "cli_for_ingest_peak_mib": ingest_peak,
            "cli_for_ingest_s": ingest_s,
            "serve_peak_mib": http_peak,
            "http_s": http_s,
        }
        say(
            f"  {backend} {size:,} events: CLI peak {cli_peak:.0f} MiB in {cli_s:.1f} s "
            f"({size / cli_s:,.0f} ev/s), --for-ingest {ingest_peak:.0f} MiB in {ingest_s:.1f} s, "
            f"serve peak {http_peak:.0f} MiB streaming in {http_s:.1f} s"
        )
    a, b = figures[str(small)], figures[str(total)]
    for label, key in (
        ("meter export events", "cli_peak_mib"),
        ("meter export events --for-ingest", "cli_for_ingest_peak_mib"),
        ("meter serve, GET /v1/export/events", "serve_peak_mib"),
    ):
        report.add(
            Row(
                what=f"{backend}: peak RSS, {label}",
                baseline=f"{a[key]:.0f} MiB ({small:,} events)",
                ours=f"{b[key]:.0f} MiB ({total:,} events)",
                ratio=f"{b[key] / a[key]:.2f}x",
                target="flat",
                met=None,
                notes="10x the events; the ratio should stay near 1",
            )
        )
    if pg is not None:
        pg.drop(url)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args(argv)
    report = Report("export", COMMAND)
    work = workdir("export")
    with pg_databases() as pg:
        for backend in backends(args.db):
            say(f"export, {backend}:")
            report.extra[backend] = run(
                report, backend, args.events, work, pg if backend == "postgresql" else None
            )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
