"""One roll-up at a time, exactly-once totals under concurrent writers, and the scheduler."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from meter.api.app import create_app
from meter.db import models
from meter.db.engine import make_engine
from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database
from meter.rollup import RollupBusy, lease, run_rollup
from meter.rollup.engine import rollup_chunk
from meter.rollup.repository import Chunk
from meter.rollup.scheduler import RollupJob
from meter.settings import get_settings
from meter.weeks import load_timezone
from tests.factories import event
from tests.test_rollup_helpers import (
    dirty_count,
    expected_days,
    expected_totals,
    months_from_days,
    rolled_up,
    rolled_up_days,
    rolled_up_months,
    store,
    weeks_from_days,
)

REPO = Path(__file__).resolve().parent.parent


def hold_lease(db: Database, holder: str, expires_at: datetime) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(models.RollupState)
            .where(models.RollupState.id == 1)
            .values(holder=holder, lease_expires_at=expires_at)
        )


def test_a_second_run_waits_for_the_first_then_runs(db: Database):
    store(db, [event(user="alice")])
    hold_lease(db, "other-host:123:abcd", datetime.now(UTC) + timedelta(minutes=2))
    with pytest.raises(RollupBusy, match="other-host:123:abcd"):
        run_rollup(db, wait_seconds=0.3)
    assert dirty_count(db) == 1  # nothing was done without the lease

    releaser = threading.Timer(0.3, lambda: lease.release(db, "other-host:123:abcd", None))
    releaser.start()
    try:
        result = run_rollup(db, wait_seconds=20)
    finally:
        releaser.join(timeout=5)
    assert result.events_rolled_up == 1


def test_two_runs_at_once_count_each_event_once(db: Database):
    store(db, [event(user=f"u{i}") for i in range(50)])
    results: list[int] = []

    def run() -> None:
        results.append(run_rollup(db, wait_seconds=30).events_rolled_up)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [0, 50]


def test_a_crashed_holders_lease_expires_and_is_taken_over(db: Database):
    store(db, [event()])
    hold_lease(db, "crashed:1:dead", datetime.now(UTC) - timedelta(seconds=1))
    assert run_rollup(db).events_rolled_up == 1


def test_a_run_whose_lease_was_taken_over_writes_nothing(db: Database):
    store(db, [event()])
    lease.acquire(db, "slow-run", 0)
    hold_lease(db, "slow-run", datetime.now(UTC) - timedelta(seconds=1))  # it stalled
    lease.acquire(db, "new-run", 0)
    week = rolled_up(db)
    with pytest.raises(lease.LeaseLost):
        rollup_chunk(db, "slow-run", Chunk((date(2026, 11, 23),)), datetime.now(UTC))
    assert rolled_up(db) == week == {}
    assert dirty_count(db) == 1


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_writer_holds_its_groups_marks_until_it_commits(db: Database):
    """The writer's `ON CONFLICT DO UPDATE ... WHERE false` writes nothing to an existing mark,
    but must still lock it: the roll-up's FOR UPDATE may not pass an uncommitted writer."""
    store(db, [event(user="alice")])  # the mark exists and is committed
    lock_it = sa.text(
        'SELECT team, "user", model FROM rollup_dirty WHERE "user" = \'alice\' FOR UPDATE NOWAIT'
    )
    writer = db.engine.connect()
    try:
        tx = writer.begin()
        insert_events(writer, [event(user="alice")], load_price_book(writer), db.tz)
        with db.engine.connect() as rollup, pytest.raises(sa.exc.OperationalError) as held:
            rollup.execute(lock_it)
        assert getattr(held.value.orig, "sqlstate", None) == "55P03"  # lock_not_available
        tx.commit()
    finally:
        writer.close()
    with db.engine.begin() as rollup:
        assert rollup.execute(lock_it).all() == [("", "alice", event().model)]
    assert run_rollup(db).events_rolled_up == 2


def test_post_rollup_answers_409_when_a_run_outlasts_the_wait(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    from meter.api.routes import rollup as rollup_route

    monkeypatch.setattr(rollup_route, "WAIT_SECONDS", 0.2)  # SPEC: 30 s; not in a test
    hold_lease(db, "busy:1:beef", datetime.now(UTC) + timedelta(minutes=2))
    client = TestClient(create_app(get_settings(), db, scheduler=False))
    response = client.post("/v1/rollup")
    assert response.status_code == 409
    assert "another roll-up is running (busy:1:beef)" in response.json()["detail"]


# --- processes ------------------------------------------------------------------------------

WRITER = """
    import random, sys, uuid
    from datetime import UTC, date, datetime, timedelta
    from meter.db.ledger import insert_events, load_price_book
    from meter.db.session import open_database
    from meter.events import EventRecord
    from meter.settings import get_settings

    db = open_database(get_settings(database_url=sys.argv[1]), upgrade=False)
    rng = random.Random(int(sys.argv[2]))
    base = datetime(2026, 11, 23, tzinfo=UTC)
    ids = []
    for _ in range(int(sys.argv[3])):
        batch = []
        for _ in range(rng.randint(1, 25)):
            batch.append(EventRecord(
                id=uuid.uuid4(),
                occurred_at=base - timedelta(weeks=rng.choice([0, 0, 0, 1, 6]),
                                             minutes=rng.randint(-3000, 3000)),
                model=rng.choice(["mistralai/mistral-7b-instruct-v0.1", "acme/unpriced"]),
                user=rng.choice(["alice", "bob", "carol", None]),
                team=rng.choice(["search", "ads"]),
                prompt_tokens=rng.randint(0, 10_000),
                completion_tokens=rng.randint(0, 10_000),
            ))
        with db.engine.begin() as conn:
            insert_events(conn, batch, load_price_book(conn), db.tz)
        ids.extend(str(e.id) for e in batch)
    print(len(ids))
"""

ROLLER = """
    import sys, time, json
    from meter.db.session import open_database
    from meter.rollup import run_rollup
    from meter.settings import get_settings

    db = open_database(get_settings(database_url=sys.argv[1]), upgrade=False)
    counted = 0
    for _ in range(int(sys.argv[2])):
        counted += run_rollup(db, wait_seconds=60).events_rolled_up
        time.sleep(0.02)
    print(counted)
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_four_writers_and_two_rollups_in_processes_give_exact_totals(db_url: str, backend: str):
    """Writers commit in any order while two roll-up processes run: every event is counted
    exactly once (the sum of every run's events_rolled_up), and the totals equal the events."""
    writers = [_spawn(WRITER, db_url, str(seed), "40") for seed in range(4)]
    rollers = [_spawn(ROLLER, db_url, "12") for _ in range(2)]
    outputs = []
    for proc in writers + rollers:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        outputs.append(int(out.strip().splitlines()[-1]))
    written, counted = sum(outputs[:4]), sum(outputs[4:])

    db = Database(make_engine(db_url), load_timezone("UTC"))
    try:
        counted += run_rollup(db).events_rolled_up
        assert counted == written
        totals = expected_totals(db)
        assert sum(t[0] for t in totals.values()) == written
        assert rolled_up(db) == totals
        days = rolled_up_days(db)
        assert days == expected_days(db)
        assert weeks_from_days(days) == totals
        assert months_from_days(days) == rolled_up_months(db)
        assert dirty_count(db) == 0
    finally:
        db.dispose()


# --- the scheduler --------------------------------------------------------------------------


def test_the_scheduler_rolls_up_on_its_interval_inside_the_app(db: Database):
    settings = get_settings(rollup_interval_seconds=0.2)
    app = create_app(settings, db, scheduler=True)
    with TestClient(app) as client:
        job = app.state.scheduler.get_job("meter-rollup")
        assert job is not None and job.coalesce and job.max_instances == 1
        store(db, [event(user="alice", occurred_at=datetime.now(UTC))])
        rows: list = []
        deadline = time.monotonic() + 20
        while not rows and time.monotonic() < deadline:
            rows = client.get("/v1/usage/weekly").json()["rows"]
            time.sleep(0.1)
        assert [(r["user"], r["requests"]) for r in rows] == [("alice", 1)]
        runs_then = app.state.scheduler.meter_rollup_job.runs
        deadline = time.monotonic() + 20
        while app.state.scheduler.meter_rollup_job.runs < runs_then + 2:
            assert time.monotonic() < deadline, "the job stopped running on its interval"
            time.sleep(0.05)
    assert not app.state.scheduler.running


def test_without_the_scheduler_nothing_runs_by_itself(db: Database):
    app = create_app(get_settings(rollup_interval_seconds=0.1), db, scheduler=False)
    with TestClient(app):
        store(db, [event()])
        time.sleep(0.5)
        assert not app.state.scheduler.running
    assert dirty_count(db) == 1


def test_a_failing_scheduled_run_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    broken = Database(make_engine(f"sqlite:///{tmp_path / 'no-schema.db'}"), load_timezone("UTC"))
    try:
        job = RollupJob(broken)
        job()  # no tables at all: the run fails
        job()
    finally:
        broken.dispose()
    assert job.runs == 0
    failures = [r for r in caplog.records if "scheduled roll-up failed" in r.getMessage()]
    assert len(failures) == 2
