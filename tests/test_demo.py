"""`meter demo --exit` as a user runs it: a subprocess with no API key and no way off this
machine (every proxy variable points at a closed loopback port), bounded in time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

DEMO_TIMEOUT_S = 120


def test_meter_demo_runs_offline_and_leaves_nothing_behind(tmp_path: Path) -> None:
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "OPENROUTER_API_KEY" and not k.startswith("METER_") and "proxy" not in k.lower()
    }
    dead_end = "http://127.0.0.1:9"  # nothing listens there: any non-loopback call fails
    env.update(
        HOME=str(home),
        XDG_STATE_HOME=str(home / "state"),
        TMPDIR=str(scratch),
        HTTP_PROXY=dead_end,
        HTTPS_PROXY=dead_end,
        ALL_PROXY=dead_end,
        NO_PROXY="127.0.0.1,localhost",
        COLUMNS="120",
    )
    result = subprocess.run(
        [sys.executable, "-c", "from meter.cli import main; main()", "demo", "--exit"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"metered calls\s.*240/240", out)
    assert re.search(r"busy hour for search\s.*60/60", out)
    for team in ("ads", "search", "support"):
        assert re.search(rf"│ {team}\s+│\s+[\d,]+ │\s+[\d,]+ │\s+\d+\.\d+ │", out), team
    assert re.search(r"threshold_crossed 0\.5 .*│ delivered\s+│ 1", out)
    assert "pending" not in out and "failed" not in out
    url = re.search(r"Dashboard\s+(http://127\.0\.0\.1:\d+/)", out)
    assert url is not None
    assert re.search(r"admin key\s+mtr_[A-Za-z0-9_-]{43}", out)
    # provider truth: the mock bills the large model 10 % above meter's price, the rest at it
    drifts = dict(
        (m[0], [Decimal(v) for v in m[2:]])
        for m in re.findall(
            r"│ (\S+)\s+│\s+([\d,]+) │\s+([\d.]+) │\s+([\d.]+) │\s+(-?[\d.]+) │", out
        )
    )
    assert sorted(drifts) == ["demo/large-model", "mistralai/mistral-7b-instruct-v0.1"]
    cost, provider, drift = drifts["demo/large-model"]
    assert cost > 0 and provider == cost * Decimal("1.1") and drift == cost - provider
    assert drift == -cost / 10 and drift < 0
    cost, provider, drift = drifts["mistralai/mistral-7b-instruct-v0.1"]
    assert cost > 0 and provider == cost and drift == 0
    assert re.search(rf"drift\s+{re.escape(url.group(1))}reconciliation", out)
    assert "meter report reconcile" in out
    assert "its temporary files are removed" in out
    # nothing left behind: the temporary directory, spool included, is gone
    assert list(scratch.iterdir()) == []
    assert [p for p in home.rglob("*") if p.is_file()] == []
    assert not (tmp_path / "meter.db").exists()
