"""End to end: events -> roll-up -> alerts -> signed webhooks, in-process and with two
`meter serve` processes rolling up every second on one PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from meter.budgets import service
from meter.budgets.delivery import DeliveryWorker, RetryPolicy
from meter.budgets.schemas import BudgetCreate
from meter.budgets.signing import verify
from meter.db import models
from meter.db.engine import make_engine
from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database
from meter.rollup import run_rollup
from meter.weeks import Week, load_timezone, week_of
from tests.budget_helpers import Receiver, loopback_settings
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.recorder_helpers import free_port

SECRET = "e2e-secret"


def last_week(db: Database) -> Week:
    # Last week: judged for thresholds, never for a projection, whatever day the test runs.
    return week_of(datetime.now(UTC), db.tz).previous()


def make_budget(db: Database, url: str) -> int:
    week = last_week(db)
    doc = BudgetCreate(
        scope="team",
        subject="search",
        weekly_limit_usd="1.2",  # type: ignore[arg-type]
        webhook_url=url,
        webhook_secret=SECRET,  # type: ignore[arg-type]
    )
    with db.engine.begin() as conn:
        return service.create_budget(
            conn, doc, loopback_settings(), service.Clock(week.bounds(db.tz)[0], db.tz)
        )


def record(db: Database, n: int) -> None:
    """n calls of 1M prompt + 1M completion tokens: $0.30 each at the seed price."""
    at = last_week(db).bounds(db.tz)[0] + timedelta(days=1)
    events = [
        event(occurred_at=at, team="search", prompt_tokens=10**6, completion_tokens=10**6)
        for _ in range(n)
    ]
    with db.engine.begin() as conn:
        insert_events(conn, events, load_price_book(conn), db.tz)


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    """Liveness bound only: poll until true or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached within {seconds} s")


def test_events_roll_up_into_alerts_and_signed_webhooks(db: Database):
    receiver = Receiver()
    try:
        bid = make_budget(db, receiver.url)
        worker = DeliveryWorker(db, loopback_settings(), policy=RetryPolicy(base_delay=0.01))
        record(db, 2)  # $0.60 of $1.20
        assert run_rollup(db).alerts_fired == 1
        record(db, 2)  # $1.20: 0.8 and 1 in the same run
        assert run_rollup(db).alerts_fired == 2
        assert run_rollup(db).alerts_fired == 0
        for _ in range(10):
            if worker.run_once() == 0:
                break
        got = [(d.json["threshold"], d.json["spend_usd"]) for d in receiver.deliveries]
        assert got == [("0.5", "0.6"), ("0.8", "1.2"), ("1", "1.2")]
        week = last_week(db)
        assert {
            (d.json["budget_id"], d.json["week"], d.json["limit_usd"]) for d in receiver.deliveries
        } == {(bid, week.label, "1.2")}
        for d in receiver.deliveries:
            assert verify(
                SECRET, d.headers["x-meter-timestamp"], d.body, d.headers["x-meter-signature"]
            )
        worker.stop()
    finally:
        receiver.close()


@pytest.fixture
def shared(databases: DatabaseFactory) -> Iterator[tuple[str, Database]]:
    """One database for several servers: PostgreSQL, and SQLite too (one file, one machine)."""
    url = databases.url()
    engine = make_engine(url)
    yield url, Database(engine, load_timezone("UTC"))
    engine.dispose()


def serve(url: str, port: int, log: Any) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "METER_DATABASE_URL": url,
        "METER_ROLLUP_INTERVAL_SECONDS": "1",
        "METER_WEBHOOK_ALLOW_PRIVATE": "1",
        "METER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1,localhost",
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from meter.cli import main; main()", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_two_servers_rolling_up_every_second_never_duplicate_an_alert(
    shared: tuple[str, Database], tmp_path: Any
):
    url, db = shared
    receiver = Receiver()
    ports = [free_port(), free_port()]
    logs = [open(tmp_path / f"serve-{p}.log", "wb") for p in ports]  # noqa: SIM115
    servers = [serve(url, p, log) for p, log in zip(ports, logs, strict=True)]
    try:
        bid = make_budget(db, receiver.url)
        for port in ports:
            wait_for(lambda port=port: _healthy(port), 60)
        # Usage arrives in small steps while both servers roll up and evaluate every second.
        for _ in range(8):
            record(db, 1)  # $0.30 each: 25%, 50%, 75%, 100%, ... of $1.20
            time.sleep(0.3)
        wait_for(lambda: len(receiver.deliveries) >= 3, 60)
        # A few more rounds of both servers: nothing new may fire or be sent.
        runs = _last_run(db)
        wait_for(lambda: _last_run(db) > runs + timedelta(seconds=3), 60)
        with db.engine.connect() as conn:
            fired = conn.execute(
                sa.select(models.Alert.threshold, models.Alert.delivery_status)
                .where(models.Alert.budget_id == bid)
                .order_by(models.Alert.id)
            ).all()
        assert [tuple(r) for r in fired] == [
            ("0.5", "delivered"),
            ("0.8", "delivered"),
            ("1", "delivered"),
        ]
        ids = [d.headers["x-meter-delivery"] for d in receiver.requests]
        assert len(ids) == 3 and len(set(ids)) == 3
        assert [d.json["threshold"] for d in receiver.deliveries] == ["0.5", "0.8", "1"]
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in logs:
            log.close()
        receiver.close()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _last_run(db: Database) -> datetime:
    with db.engine.connect() as conn:
        value = conn.execute(sa.select(sa.func.max(models.RollupState.last_run_at))).scalar_one()
    return value or datetime(1970, 1, 1, tzinfo=UTC)
