"""The client's memory stays flat while the store is down: events wait in the spool files, not
in memory. A process recording 20x more events against a down database ends with about the
same peak RSS (measured in fresh processes; the figures go to RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.recorder_helpers import PYTHON, REPO, free_port

SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys
    from meter import Meter
    from meter.pricing import SEED_MODEL

    meter = Meter(os.environ["URL"], spool_dir=os.environ["SPOOL"])
    warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = int(sys.argv[1])
    for i in range(n):
        meter.record(model=SEED_MODEL, prompt_tokens=i, completion_tokens=1, user="outage",
                     team="memory", tags={"run": "long" if n > 50_000 else "short"})
    stats = meter.stats()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    meter.close(timeout=0)
    print(json.dumps({"warm_kib": warm, "peak_kib": peak, "spooled": stats.spooled,
                      "dropped": stats.dropped, "stored": stats.stored}))
    """
)
SHORT, LONG = 10_000, 200_000


def run(n: int, tmp_path: Path) -> dict[str, int]:
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/down"
    done = subprocess.run(
        [PYTHON, "-c", SCRIPT, str(n)],
        env={
            **os.environ,
            "URL": down,
            "SPOOL": str(tmp_path / f"spool-{n}"),
            "PYTHONPATH": str(REPO),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_memory_stays_flat_however_long_the_store_is_down(tmp_path: Path):
    short, long = run(SHORT, tmp_path), run(LONG, tmp_path)
    for n, r in ((SHORT, short), (LONG, long)):
        assert (r["spooled"], r["dropped"], r["stored"]) == (n, 0, 0)
    spooled_bytes = sum(p.stat().st_size for p in (tmp_path / f"spool-{LONG}").glob("*.jsonl"))
    growth_mib = (long["peak_kib"] - short["peak_kib"]) / 1024
    print(
        f"store down: {SHORT} events peak RSS {short['peak_kib'] / 1024:.0f} MiB, "
        f"{LONG} events peak RSS {long['peak_kib'] / 1024:.0f} MiB "
        f"(+{growth_mib:.1f} MiB for {spooled_bytes / 2**20:.0f} MiB waiting in the spool)"
    )
    # Loose bound: an in-memory queue would hold the 190,000 extra events (~60 MiB on disk,
    # several times that as Python objects).
    assert growth_mib < 25
