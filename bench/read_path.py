"""Read path over HTTP on the rolled-up dataset: `GET /v1/teams/{team}/summary?weeks=52`,
`GET /v1/reports/users/{user}?week=W` and `GET /v1/reports/billing?month=M` (JSON and CSV),
p50/p99, against a real `meter serve` (one uvicorn worker). The baseline column is
`GET /healthz` on the same server (HTTP + framework floor).

    .venv/bin/python -m bench.read_path [--db both] [--events 5000000] [--requests 500]

Standalone it loads and rolls up the dataset first (cached on SQLite); `bench.rollup` calls
`measure` right after its own 5M roll-up instead. Targets: summary p99 <= 50 ms, billing
report p99 <= 100 ms (JSON and CSV).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

import httpx

from bench import _events, datasets
from bench._common import (
    Report,
    Row,
    backends,
    meter_server,
    pct,
    pg_databases,
    say,
    workdir,
)
from meter.periods import window_of
from meter.weeks import week_of

COMMAND = ".venv/bin/python -m bench.read_path"
SUMMARY_P99_TARGET_MS = 50.0
BILLING_P99_TARGET_MS = 100.0


def _timed(client: httpx.Client, paths: list[str]) -> list[float]:
    out = []
    for path in paths:
        t0 = time.perf_counter()
        response = client.get(path)
        response.read()
        out.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status_code}: {response.text[:200]}")
    return out


def measure(
    report: Report, backend: str, url: str, n_events: int, requests: int = 500
) -> dict[str, Any]:
    rng = random.Random(5)
    start, _, _ = datasets.span()
    first = week_of(start, datasets.UTC_ZONE)
    weeks = [first]
    for _ in range(datasets.WEEKS - 1):
        weeks.append(weeks[-1].next())
    summaries = [f"/v1/teams/{rng.choice(_events.TEAMS)}/summary?weeks=52" for _ in range(requests)]
    users = [
        f"/v1/reports/users/{_events.user_of(rng.randrange(10), rng.randrange(100))}"
        f"?week={rng.choice(weeks).label}"
        for _ in range(requests)
    ]
    months = sorted({window_of("month", w.bounds(datasets.UTC_ZONE)[0], datasets.UTC_ZONE).label
                     for w in weeks[5:-5]})  # fmt: skip
    billing = [f"/v1/reports/billing?month={rng.choice(months)}" for _ in range(requests)]
    billing_csv = [f"{path}&format=csv" for path in billing]
    health = ["/healthz"] * requests
    with (
        meter_server(url, f"read-{backend}") as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        doc = client.get(summaries[0]).json()
        if len(doc["weeks"]) != 52 or not any(w["requests"] for w in doc["weeks"]):
            raise RuntimeError(f"the summary shows no data: {str(doc)[:300]}")
        for paths in (health, summaries, users, billing, billing_csv):  # warm-up
            _timed(client, paths[:30])
        t_health = _timed(client, health)
        t_summary = _timed(client, summaries)
        t_users = _timed(client, users)
        t_billing = _timed(client, billing)
        t_billing_csv = _timed(client, billing_csv)
    floor50, floor99 = pct(t_health, 50), pct(t_health, 99)
    for what, times, target in (
        ("team summary, 52 weeks", t_summary, SUMMARY_P99_TARGET_MS),
        ("user report, one week", t_users, None),
        ("billing report, one month, JSON", t_billing, BILLING_P99_TARGET_MS),
        ("billing report, one month, CSV", t_billing_csv, BILLING_P99_TARGET_MS),
    ):
        for q in (50, 99):
            value = pct(times, q)
            floor = floor50 if q == 50 else floor99
            has_target = target is not None and q == 99
            report.add(
                Row(
                    what=f"{backend}: {what}, p{q}, {n_events:,} events, n={len(times)}",
                    baseline=f"{floor:.2f} ms",
                    ours=f"{value:.2f} ms",
                    ratio=f"{value / floor:.1f}x" if floor else "-",
                    target=f"<= {target:.0f} ms" if has_target else "-",
                    met=(value <= target) if has_target and target is not None else None,
                    command=COMMAND,
                    notes="baseline: GET /healthz on the same server",
                )
            )
    return {
        "healthz_ms": [floor50, floor99],
        "summary_ms": [pct(t_summary, 50), pct(t_summary, 99)],
        "user_report_ms": [pct(t_users, 50), pct(t_users, 99)],
        "billing_ms": [pct(t_billing, 50), pct(t_billing, 99)],
        "billing_csv_ms": [pct(t_billing_csv, 50), pct(t_billing_csv, 99)],
    }


def main(argv: list[str] | None = None) -> int:
    from meter.db.engine import make_engine
    from meter.db.session import Database
    from meter.rollup.engine import run_rollup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args(argv)
    report = Report("read_path", COMMAND)
    work = workdir("read-path")
    with pg_databases() as pg:
        for backend in backends(args.db):
            say(f"read path, {backend}, {args.events:,} events:")
            if backend == "sqlite":
                url = datasets.sqlite_copy(args.events, work, "read")
            else:
                url = datasets.pg_load(pg, args.events)
            db = Database(engine=make_engine(url), tz=datasets.UTC_ZONE)
            try:
                say("  rolling up ...")
                run_rollup(db)
            finally:
                db.dispose()
            report.extra[backend] = measure(report, backend, url, args.events, args.requests)
            if backend == "postgresql":
                pg.drop(url)
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
