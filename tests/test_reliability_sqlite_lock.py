"""The SQLite file locked by another writer (`BEGIN EXCLUSIVE` in another process) for 30 s
while a process records steadily with `Meter`: nothing lost, nothing twice, no call waits.

The recorder runs in its own process so that its peak RSS is its own; the locker is a third
process. Timings and RSS are printed for RELIABILITY.md; only the loose liveness bound (every
`record` under 2 s) is asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.recorder_helpers import PYTHON, REPO, stored_ids

LOCK_S = 30.0

RECORDER = textwrap.dedent(
    """
    import json, os, resource, sys, time
    from meter import Meter
    from meter.pricing import SEED_MODEL

    meter = Meter(os.environ["URL"], spool_dir=os.environ["SPOOL"])
    stop_file = os.environ["STOP"]
    calls = []  # (wall clock, seconds the call took, id)
    for i in range(40_000):  # about 200 a second; bounded whatever happens
        if os.path.exists(stop_file):
            break
        started = time.perf_counter()
        event = meter.record(model=SEED_MODEL, prompt_tokens=i, completion_tokens=1, user="lock")
        calls.append((time.time(), time.perf_counter() - started, str(event.id)))
        time.sleep(0.005)
    flushed = meter.flush(timeout=120)
    stats = meter.stats()
    meter.close()
    json.dump({"calls": calls, "flushed": flushed, "stats": stats.__dict__,
               "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
              open(os.environ["OUT"], "w"))
    """
)

LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    print(f"locked {time.time()}", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    print(f"released {time.time()}", flush=True)
    conn.close()
    """
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


@pytest.mark.slow
def test_a_sqlite_file_locked_30_s_by_another_writer_loses_and_doubles_nothing(tmp_path: Path):
    db_path = tmp_path / "locked.db"
    url = f"sqlite:///{db_path}"
    out, stop = tmp_path / "out.json", tmp_path / "stop"
    env = {
        **os.environ,
        "URL": url,
        "SPOOL": str(tmp_path / "spool"),
        "STOP": str(stop),
        "OUT": str(out),
        "PYTHONPATH": str(REPO),
    }
    recorder = subprocess.Popen([PYTHON, "-c", RECORDER], env=env)
    locker: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 60  # the Meter creates the schema in the background
        while not (db_path.exists() and stored_ids(url)):
            assert recorder.poll() is None, "the recorder died"
            assert time.monotonic() < deadline, "nothing stored within 60 s"
            time.sleep(0.2)
        time.sleep(3)  # some normal traffic first
        locker = subprocess.Popen(
            [PYTHON, "-c", LOCKER, str(db_path), str(LOCK_S)], stdout=subprocess.PIPE, text=True
        )
        out_text, _ = locker.communicate(timeout=LOCK_S + 60)
        assert locker.returncode == 0
        marks = dict(line.split() for line in out_text.splitlines())
        locked_at, released_at = float(marks["locked"]), float(marks["released"])
        assert released_at - locked_at >= LOCK_S - 0.5
        time.sleep(5)  # traffic after the lock
        stop.write_text("stop")
        assert recorder.wait(timeout=180) == 0
    finally:
        for proc in (recorder, locker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    result = json.loads(out.read_text())
    assert result["flushed"] is True
    calls = result["calls"]
    ids = [c[2] for c in calls]
    stored = [str(i) for i in stored_ids(url)]
    assert len(stored) == len(ids) == len(set(stored))
    assert set(stored) == set(ids)
    stats = result["stats"]
    assert (stats["dropped"], stats["duplicates"], stats["rejected"]) == (0, 0, 0)
    assert stats["stored"] == len(ids)

    phases: dict[str, list[float]] = {"normal": [], "locked": [], "after": []}
    for wall, seconds, _ in calls:
        name = "normal" if wall < locked_at else "locked" if wall < released_at else "after"
        phases[name].append(seconds)
    assert len(phases["locked"]) > 1000  # the lock really was held under traffic
    assert max(seconds for _, seconds, _ in calls) < 2.0  # the liveness bound only
    for name, values in phases.items():
        print(
            f"record() sqlite {name}: n={len(values)} "
            f"p50={statistics.median(values) * 1e6:.0f}us "
            f"p99={percentile(values, 0.99) * 1e6:.0f}us max={max(values) * 1e6:.0f}us"
        )
    print(f"events={len(ids)} recorder peak RSS={result['peak_rss_kib'] / 1024:.0f} MiB")
