"""Everything at once on one PostgreSQL: 4 writer processes (two `Meter(database_url)`, two
`Meter(api_url=...)` through the servers), 2 roll-up processes in a loop and 2 `meter serve`
processes rolling up every second, with a team budget whose webhook is a loopback receiver.

The weekly totals equal the sums over the events (and what the writers say they wrote), each
alert is delivered exactly once, and no process logged a deadlock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest
import sqlalchemy as sa

from meter.db import models
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.weeks import load_timezone
from tests.budget_helpers import Receiver
from tests.conftest import DatabaseFactory
from tests.recorder_helpers import REPO, free_port
from tests.test_rollup_helpers import dirty_count, expected_totals, rolled_up

SEARCH_EVENTS_PER_WRITER = 250  # 1M + 1M tokens each: $0.30 at the seed price
OTHER_EVENTS_PER_WRITER = 750
LIMIT_USD = "250"  # 4 x 250 x $0.30 = $300: every threshold (0.5, 0.8, 1) is crossed

WRITER = textwrap.dedent(
    """
    import json, os, random, sys, time
    from datetime import UTC, datetime, timedelta
    from meter import Meter
    from meter.pricing import SEED_MODEL

    target, seed = sys.argv[1], int(sys.argv[2])
    kind = "api_url" if target.startswith("http") else "database_url"
    meter = Meter(api_url=target) if kind == "api_url" else Meter(target)
    rng = random.Random(seed)
    now = datetime.now(UTC)
    plan = ["search"] * int(sys.argv[3]) + ["other"] * int(sys.argv[4])
    rng.shuffle(plan)
    written = {"count": 0, "prompt": 0, "completion": 0}
    for n, what in enumerate(plan):
        if what == "search":
            prompt = completion = 1_000_000
            meter.record(model=SEED_MODEL, prompt_tokens=prompt, completion_tokens=completion,
                         user=rng.choice(["alice", "bob"]), team="search",
                         occurred_at=now - timedelta(seconds=rng.randint(1, 60)))
        else:
            prompt, completion = rng.randint(0, 5000), rng.randint(0, 5000)
            meter.record(model=rng.choice([SEED_MODEL, "acme/unpriced"]),
                         prompt_tokens=prompt, completion_tokens=completion,
                         user=rng.choice(["carol", "dave", None]), team=rng.choice(["ads", None]),
                         status=rng.choice(["ok", "ok", "error"]),
                         occurred_at=now - timedelta(weeks=rng.choice([0, 1, 3]),
                                                     seconds=rng.randint(1, 600)))
        written["count"] += 1
        written["prompt"] += prompt
        written["completion"] += completion
        if n % 25 == 24:
            time.sleep(0.02)  # bursts, so that commits interleave with the roll-ups
    written["flushed"] = meter.flush(timeout=120)
    meter.close()
    print(json.dumps(written))
    """
)

ROLLER = textwrap.dedent(
    """
    import os, sys, time
    from meter.db.session import open_database
    from meter.rollup import run_rollup
    from meter.settings import get_settings

    db = open_database(get_settings(database_url=sys.argv[1]), upgrade=False)
    runs = counted = 0
    deadline = time.monotonic() + 180
    while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
        counted += run_rollup(db, wait_seconds=60).events_rolled_up
        runs += 1
        time.sleep(0.05)
    print(runs, counted)
    """
)


def spawn(script: str, args: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def serve(url: str, port: int, log: IO[bytes], spool: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "METER_DATABASE_URL": url,
        "METER_ROLLUP_INTERVAL_SECONDS": "1",
        "METER_WEBHOOK_ALLOW_PRIVATE": "1",
        "METER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1,localhost",
        "METER_SPOOL_DIR": str(spool),
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from meter.cli import main; main()", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    """Liveness bound only: poll until true or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not reached within {seconds} s")


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def alerts(db: Database) -> list[tuple[str, str, str, str]]:
    a = models.Alert
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(a.id, a.type, a.threshold, a.delivery_status).order_by(a.fired_at, a.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_writers_rollups_and_servers_at_once_give_exact_totals_and_single_alerts(
    databases: DatabaseFactory, tmp_path: Path
):
    url = databases.url()
    db = Database(make_engine(url), load_timezone("UTC"))
    receiver = Receiver()
    stop_file = tmp_path / "stop-rollers"
    logs: dict[str, IO[bytes]] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports = [free_port(), free_port()]
    started = time.monotonic()
    try:
        for n, port in enumerate(ports):
            logs[f"serve-{n}"] = open(tmp_path / f"serve-{n}.log", "wb")  # noqa: SIM115
            procs[f"serve-{n}"] = serve(url, port, logs[f"serve-{n}"], tmp_path / f"spool-s{n}")
        for port in ports:
            wait_for(lambda port=port: healthy(port), 60)
        r = httpx.post(
            f"http://127.0.0.1:{ports[0]}/v1/budgets",
            json={
                "scope": "team",
                "subject": "search",
                "weekly_limit_usd": LIMIT_USD,
                "webhook_url": receiver.url,
                "webhook_secret": "concurrency-secret",
            },
            timeout=30,
        )
        assert r.status_code == 201, r.text

        targets = [url, url, f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"]
        for n, target in enumerate(targets):
            logs[f"writer-{n}"] = open(tmp_path / f"writer-{n}.log", "wb")  # noqa: SIM115
            procs[f"writer-{n}"] = spawn(
                WRITER,
                [target, str(n), str(SEARCH_EVENTS_PER_WRITER), str(OTHER_EVENTS_PER_WRITER)],
                logs[f"writer-{n}"],
            )
        for n in range(2):
            logs[f"roller-{n}"] = open(tmp_path / f"roller-{n}.log", "wb")  # noqa: SIM115
            procs[f"roller-{n}"] = spawn(ROLLER, [url, str(stop_file)], logs[f"roller-{n}"])

        written = {"count": 0, "prompt": 0, "completion": 0}
        for n in range(4):
            out, _ = procs[f"writer-{n}"].communicate(timeout=240)
            assert procs[f"writer-{n}"].returncode == 0, (tmp_path / f"writer-{n}.log").read_text()
            doc = json.loads(out.decode().strip().splitlines()[-1])
            assert doc["flushed"] is True
            for k in written:
                written[k] += doc[k]
        stop_file.write_text("stop")
        runs = []
        for n in range(2):
            out, _ = procs[f"roller-{n}"].communicate(timeout=120)
            assert procs[f"roller-{n}"].returncode == 0
            runs.append(tuple(int(x) for x in out.split()))

        # The servers' own scheduled roll-ups consume what is left.
        wait_for(lambda: dirty_count(db) == 0, 60)
        expected = expected_totals(db)
        assert rolled_up(db) == expected
        assert sum(t[0] for t in expected.values()) == written["count"]
        assert sum(t[1] for t in expected.values()) == written["prompt"]
        assert sum(t[2] for t in expected.values()) == written["completion"]
        search_cost = sum(
            t[6] + t[7] for k, t in expected.items() if k[1] == "search"
        )  # units of 1e-12 USD
        assert search_cost == 4 * SEARCH_EVENTS_PER_WRITER * 300_000 * 10**6

        # Every alert fired once and was delivered once, in ascending threshold order.
        wait_for(lambda: all(a[3] == "delivered" for a in alerts(db)) and len(alerts(db)) >= 3, 60)
        time.sleep(4)  # a few more rounds of both servers: nothing new may fire or be sent
        fired = alerts(db)
        thresholds = [a[2] for a in fired if a[1] == "budget.threshold_crossed"]
        assert thresholds == ["0.5", "0.8", "1"]
        assert len([a for a in fired if a[1] == "budget.projected_overspend"]) <= 1
        assert {a[3] for a in fired} == {"delivered"}
        delivered_ids = [d.headers["x-meter-delivery"] for d in receiver.deliveries]
        assert sorted(delivered_ids) == sorted(a[0] for a in fired)  # each exactly once
        assert len(receiver.requests) == len(fired)
        elapsed = time.monotonic() - started
    finally:
        stop_file.write_text("stop")
        for name, proc in procs.items():
            if proc.poll() is None:
                if name.startswith("serve"):
                    proc.terminate()
                else:
                    proc.kill()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        for log in logs.values():
            log.close()
        receiver.close()
        db.dispose()

    texts = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in logs}
    assert {n: t.lower().count("deadlock") for n, t in texts.items()} == dict.fromkeys(texts, 0)
    print(
        f"events={written['count']} groups={len(expected)} alerts={[a[1:3] for a in fired]} "
        f"roller runs/events={runs} elapsed={elapsed:.1f}s "
        f"server log errors={[t.count(' ERROR') + t.count('Traceback') for t in texts.values()]}"
    )
