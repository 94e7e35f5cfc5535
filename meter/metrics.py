"""Prometheus metrics of a meter process; `GET /metrics` exposes them.

`/metrics` needs no key, so no metric carries a team, user or model label: they would leak who
spends what. With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR (prometheus-client's
multiprocess mode); each gauge declares how its per-process values combine.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

EVENTS_INGESTED = Counter(
    "meter_events_ingested",
    "Events stored by this process (duplicates of stored ids are not counted).",
)
ROLLUP_DURATION = Histogram(
    "meter_rollup_duration_seconds",
    "Wall time of each roll-up run.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
ROLLUP_LAG = Gauge(
    "meter_rollup_lag_seconds",
    "Seconds since the last roll-up run finished (any process; read from the database at "
    "scrape). Absent until one has run.",
    multiprocess_mode="max",
)
GATEWAY_CALLS = Counter(
    "meter_gateway_calls",
    "Calls answered by the gateway (POST /v1/chat/completions, /v1/completions), by outcome.",
    ["outcome"],  # forwarded | refused_budget | invalid | upstream_unreachable | ...
)
RESERVATION_EXCEEDED = Counter(
    "meter_reservation_exceeded",
    "Gateway calls whose exact cost came out above the worst case reserved for them.",
)
GENERATION_LOOKUPS = Counter(
    "meter_generation_lookups",
    "Generation lookups of this process by outcome: reconciled, retried (not found yet or "
    "failed), unavailable (given up at the deadline), skipped, rate_limited (429 answers).",
    ["outcome"],
)
SPOOL_DEPTH = Gauge(
    "meter_spool_depth_bytes",
    "Bytes waiting in this machine's spool directory (METER_SPOOL_DIR), measured at scrape.",
    multiprocess_mode="max",
)


def spool_bytes(spool_dir: Path) -> int:
    """Total size of the files under the spool directory; 0 when it does not exist."""
    total = 0
    # os.walk, not Path.rglob: it never raises on a directory that disappears mid-walk.
    for root, _dirs, files in os.walk(spool_dir):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue  # replayed and removed while we looked
    return total


def observe_rollup_lag(last_run_at: datetime | None, now: datetime) -> None:
    if last_run_at is not None:
        ROLLUP_LAG.set(max((now - last_run_at).total_seconds(), 0.0))
