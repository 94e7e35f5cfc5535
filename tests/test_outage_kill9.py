"""`kill -9` while recording: every event whose `record` returned is stored, exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from meter import Meter
from tests.recorder_helpers import PYTHON, REPO, stored_ids

CHILD = textwrap.dedent(
    """
    import os, sys
    from meter import Meter
    meter = Meter(os.environ["URL"], spool_dir=os.environ["SPOOL"], segment_bytes=20_000)
    for i in range(int(os.environ["N"])):
        event = meter.record(model="mistralai/mistral-7b-instruct-v0.1",
                             prompt_tokens=i, completion_tokens=1, user="killed")
        # Printed only once `record` has returned: this id must never be lost.
        sys.stdout.write(f"{event.id}\\n")
        sys.stdout.flush()
    print("done", flush=True)
    """
)
ROUNDS = 5
N = 3_000


@pytest.mark.slow
def test_kill_9_loses_no_returned_event_and_counts_none_twice(db_url: str, tmp_path: Path):
    spool = tmp_path / "spool"
    rng = random.Random(1234)
    printed: list[uuid.UUID] = []
    for _ in range(ROUNDS):
        kill_after = rng.randrange(1, N - 1)
        proc = subprocess.Popen(
            [PYTHON, "-c", CHILD],
            env={
                **os.environ,
                "URL": db_url,
                "SPOOL": str(spool),
                "N": str(N),
                "PYTHONPATH": str(REPO),
            },
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            for _ in range(kill_after):
                line = proc.stdout.readline()
                if not line.strip() or line.strip() == b"done":
                    break
                printed.append(uuid.UUID(line.strip().decode()))
            proc.send_signal(signal.SIGKILL)
            # Whatever it printed before dying was also returned by `record`.
            for line in proc.stdout.read().splitlines():
                if line.strip() and line.strip() != b"done" and len(line.strip()) == 36:
                    printed.append(uuid.UUID(line.strip().decode()))
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    assert len(printed) >= ROUNDS
    # A new process on the same spool finishes the job.
    with Meter(db_url, spool_dir=spool) as meter:
        assert meter.flush(timeout=120)
    stored = stored_ids(db_url)
    assert len(stored) == len(set(stored))  # the primary key, but say it anyway
    assert set(printed) <= set(stored)
    assert len(stored) <= ROUNDS * N
    assert list(spool.glob("*.jsonl")) == []
