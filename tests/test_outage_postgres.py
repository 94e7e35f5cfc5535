"""A PostgreSQL outage of a minute while a thread records steadily: no `record` call waits,
nothing is lost, nothing is stored twice once the server is back."""

from __future__ import annotations

import resource
import statistics
import threading
import time
from pathlib import Path

import pytest

from meter import Meter
from meter.db import migrate
from meter.db.engine import make_engine
from meter.pricing import SEED_MODEL
from tests.private_postgres import private_postgres
from tests.recorder_helpers import stored_ids

OUTAGE_S = 60.0
INTERVAL_S = 0.005  # about 200 calls a second
MAX_CALLS = 40_000  # bounds the loop whatever happens


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


@pytest.mark.slow
def test_a_minute_of_postgres_outage_loses_nothing_and_delays_no_call(tmp_path: Path):
    with private_postgres() as server:
        url = server.url()
        engine = make_engine(url)
        migrate.upgrade(engine, "UTC")
        engine.dispose()

        meter = Meter(url, spool_dir=tmp_path / "spool")
        phase = ["normal"]
        durations: dict[str, list[float]] = {"normal": [], "outage": [], "after": []}
        ids = []
        stop = threading.Event()

        def record_steadily() -> None:
            for i in range(MAX_CALLS):
                if stop.is_set():
                    return
                started = time.perf_counter()
                event = meter.record(
                    model=SEED_MODEL, prompt_tokens=i, completion_tokens=1, user="steady"
                )
                durations[phase[0]].append(time.perf_counter() - started)
                ids.append(event.id)
                time.sleep(INTERVAL_S)

        recorder = threading.Thread(target=record_steadily)
        recorder.start()
        try:
            time.sleep(5)
            assert meter.flush(timeout=30)
            phase[0] = "outage"
            server.stop("fast")
            time.sleep(OUTAGE_S)
            server.start()
            phase[0] = "after"
            time.sleep(5)
        finally:
            stop.set()
            recorder.join(timeout=30)
        assert meter.flush(timeout=60), meter.stats()
        stats = meter.stats()
        meter.close()

        stored = stored_ids(url)
        assert len(stored) == len(ids)
        assert set(stored) == set(ids)
        assert stats.duplicates == 0

        worst = max(max(d) for d in durations.values())
        assert worst < 2.0  # the liveness bound SPEC sets; no tighter timing here
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for name, values in durations.items():
            print(
                f"record() {name}: n={len(values)} p50={statistics.median(values) * 1e6:.0f}us "
                f"p99={percentile(values, 0.99) * 1e6:.0f}us max={max(values) * 1e6:.0f}us"
            )
        print(f"events={len(ids)} peak RSS={rss_mb:.0f} MiB stats={stats}")
