"""`Meter(api_url=...)` against a real `meter serve`: delivery, and the server down a minute."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from meter import Meter
from meter.db.engine import make_engine
from meter.money import render_usd
from meter.pricing import SEED_MODEL
from tests.recorder_helpers import PYTHON, REPO, free_port, stored_ids

OUTAGE_S = 60.0
INTERVAL_S = 0.005
MAX_CALLS = 40_000
MAIN = "from meter.cli import main; main()"


class Server:
    """`meter serve --no-scheduler` on a free loopback port, over a SQLite file (or `db_url`)."""

    def __init__(self, tmp_path: Path, db_url: str | None = None) -> None:
        self.db_url = db_url or f"sqlite:///{tmp_path / 'server.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "METER_DATABASE_URL": self.db_url,
            "PYTHONPATH": str(REPO),
        }
        self.log = (tmp_path / "server.log").open("ab")
        self.proc: subprocess.Popen[bytes] | None = None

    def meter_cli(self, *args: str) -> str:
        done = subprocess.run(
            [PYTHON, "-c", MAIN, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-c", MAIN, "serve", "--port", str(self.port), "--no-scheduler"],
            env=self.env,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "meter serve exited"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("meter serve did not come up within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.meter_cli("db", "upgrade")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.log.close()


def test_events_reach_the_server_with_an_ingest_key(server: Server, tmp_path: Path):
    key = server.meter_cli("keys", "create", "--role", "ingest", "--name", "app")
    moment = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    with Meter(api_url=server.url, api_key=key, spool_dir=tmp_path / "spool") as meter:
        first = meter.record(
            model=SEED_MODEL,
            prompt_tokens=1_000,
            completion_tokens=500,
            user="alice",
            team="search",
            tags={"feature": "autocomplete"},
            occurred_at=moment,
        )
        ids = [first.id] + [
            meter.record(model=SEED_MODEL, prompt_tokens=i, completion_tokens=1).id
            for i in range(999)
        ]
        assert meter.flush(timeout=60)
        assert meter.stats().stored == 1_000
        # An ingest key may not read prices (403): the seed price answers instead.
        price = meter.price_at(SEED_MODEL, moment)
        assert price is not None and price.input_per_million_usd == Decimal("0.11")
        assert meter.database() is None
        assert key not in repr(meter)
    assert sorted(stored_ids(server.db_url)) == sorted(ids)
    engine = make_engine(server.db_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                'SELECT "user", team, tags, input_cost_units + output_cost_units AS cost '
                "FROM events WHERE prompt_tokens = 1000"
            )
        ).one()
    engine.dispose()
    assert (row.user, row.team) == ("alice", "search")
    assert render_usd(row.cost) == "0.000205"


def test_a_wrong_key_keeps_events_in_the_spool(server: Server, tmp_path: Path):
    server.meter_cli("keys", "create", "--role", "admin")  # from now on a key is required
    with Meter(api_url=server.url, api_key="mtr_wrong", spool_dir=tmp_path / "spool") as meter:
        meter.record(model=SEED_MODEL, prompt_tokens=1, completion_tokens=1)
        assert meter.flush(timeout=2) is False
    assert stored_ids(server.db_url) == []
    lines = sum(p.read_bytes().count(b"\n") for p in (tmp_path / "spool").glob("*.jsonl"))
    assert lines == 1


@pytest.mark.slow
def test_a_minute_with_the_server_down_loses_and_doubles_nothing(server: Server, tmp_path: Path):
    meter = Meter(api_url=server.url, spool_dir=tmp_path / "spool")
    phase = ["normal"]
    durations: dict[str, list[float]] = {"normal": [], "outage": [], "after": []}
    ids: list[uuid.UUID] = []
    stop = threading.Event()

    def record_steadily() -> None:
        for i in range(MAX_CALLS):
            if stop.is_set():
                return
            started = time.perf_counter()
            event = meter.record(model=SEED_MODEL, prompt_tokens=i, completion_tokens=1)
            durations[phase[0]].append(time.perf_counter() - started)
            ids.append(event.id)
            time.sleep(INTERVAL_S)

    recorder = threading.Thread(target=record_steadily)
    recorder.start()
    try:
        time.sleep(3)
        assert meter.flush(timeout=30)
        phase[0] = "outage"
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()
        phase[0] = "after"
        time.sleep(3)
    finally:
        stop.set()
        recorder.join(timeout=30)
    assert meter.flush(timeout=60), meter.stats()
    stats = meter.stats()
    meter.close()
    stored = stored_ids(server.db_url)
    assert len(stored) == len(ids)
    assert set(stored) == set(ids)
    assert stats.duplicates == 0
    assert max(max(d) for d in durations.values()) < 2.0  # liveness bound only
    for name, values in durations.items():
        ordered = sorted(values)
        print(
            f"record() via api_url, {name}: n={len(values)} "
            f"p50={statistics.median(values) * 1e6:.0f}us "
            f"p99={ordered[int(len(ordered) * 0.99)] * 1e6:.0f}us"
        )
