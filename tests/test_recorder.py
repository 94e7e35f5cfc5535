"""Meter.record -> spool -> drain -> database, on SQLite and PostgreSQL."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from meter import InvalidRequest, Meter
from meter.db import migrate, models
from meter.db.engine import make_engine
from meter.db.ledger import _SecondCache
from meter.db.prices import add_price
from meter.money import render_usd
from meter.pricing import SEED_MODEL, make_price
from meter.recorder import stores
from tests.conftest import DatabaseFactory
from tests.recorder_helpers import PYTHON, REPO, count_events, free_port, stored_ids


def rows(url: str) -> list[models.Event]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return list(session.scalars(sa.select(models.Event)).all())
    finally:
        engine.dispose()


def test_record_then_flush_stores_exact_values(db_url: str, tmp_path: Path):
    moment = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    with Meter(db_url, spool_dir=tmp_path / "spool") as meter:
        event = meter.record(
            model=SEED_MODEL,
            prompt_tokens=1_000,
            completion_tokens=500,
            user="alice",
            team="search",
            tags={"feature": "autocomplete"},
            occurred_at=moment,
            latency_ms=812,
            generation_id="gen-123",
            provider_cost_usd="0.000205",
        )
        assert meter.flush(timeout=30) is True
        stored = rows(db_url)
        assert meter.stats().stored == 1
    assert len(stored) == 1
    row = stored[0]
    assert row.id == event.id
    assert (row.prompt_tokens, row.completion_tokens) == (1_000, 500)
    assert (row.user, row.team, row.tags) == ("alice", "search", {"feature": "autocomplete"})
    assert (row.status, row.usage_source, row.latency_ms) == ("ok", "provider", 812)
    assert row.generation_id == "gen-123"
    assert row.occurred_at == moment
    # 1000 x $0.11/1M + 500 x $0.19/1M, exactly
    assert render_usd(row.input_cost_units) == "0.00011"
    assert render_usd(row.output_cost_units) == "0.000095"
    assert render_usd(row.input_cost_units + row.output_cost_units) == "0.000205"
    assert render_usd(row.provider_cost_units) == "0.000205"
    # A closed Meter whose events are all stored leaves nothing behind in the spool.
    assert list((tmp_path / "spool").iterdir()) == []


def test_many_records_are_all_stored_once(db_url: str, tmp_path: Path):
    with Meter(db_url, spool_dir=tmp_path / "spool", segment_bytes=50_000) as meter:
        ids = {
            meter.record(
                model=SEED_MODEL, prompt_tokens=i, completion_tokens=1, user=f"u{i % 7}"
            ).id
            for i in range(3_000)
        }
        assert meter.flush(timeout=60)
        # 3,000 lines of ~200 bytes rotate through about a dozen 50 kB segments; drained ones go.
        assert len(list((tmp_path / "spool").glob("*.jsonl"))) <= 1
    assert sorted(stored_ids(db_url)) == sorted(ids)


BAD_ARGUMENTS = [
    ({"prompt_tokens": -1}, "prompt_tokens"),
    ({"prompt_tokens": True}, "prompt_tokens"),
    ({"completion_tokens": 1.5}, "completion_tokens"),
    ({"completion_tokens": "3"}, "completion_tokens"),
    ({"status": "done"}, "status"),
    ({"occurred_at": datetime(2026, 11, 24, 9, 30)}, "occurred_at"),
    ({"occurred_at": datetime.now(UTC) + timedelta(hours=1)}, "occurred_at"),
    ({"event_id": "not-a-uuid"}, "event_id"),
    ({"model": ""}, "model"),
    ({"user": "x" * 201}, "user"),
    ({"tags": {"feature": 1}}, "tags"),
    ({"usage_source": "guess"}, "usage_source"),
    ({"cached_tokens": -3}, "cached_tokens"),
    ({"provider_cost_usd": 0.1}, "provider_cost_usd"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_ARGUMENTS, ids=[f for _, f in BAD_ARGUMENTS])
def test_invalid_record_arguments_raise_naming_the_field_and_store_nothing(
    bad: dict, field: str, tmp_path: Path
):
    # One backend is enough here: nothing may even reach the spool.
    url = f"sqlite:///{tmp_path / 'm.db'}"
    args = {"model": SEED_MODEL, "prompt_tokens": 1, "completion_tokens": 1} | bad
    with Meter(url, spool_dir=tmp_path / "spool") as meter:
        with pytest.raises(InvalidRequest) as info:
            meter.record(**args)
        assert info.value.param == field
        assert field in str(info.value)
        assert isinstance(info.value, ValueError)
        assert meter.flush(timeout=30)
        assert meter.stats().spooled == 0
    assert count_events(url) == 0


def test_an_explicit_event_id_is_the_idempotency_key(db_url: str, tmp_path: Path):
    event_id = str(uuid.uuid4())
    with Meter(db_url, spool_dir=tmp_path / "spool") as meter:
        meter.record(model=SEED_MODEL, prompt_tokens=5, completion_tokens=5, event_id=event_id)
        meter.record(model=SEED_MODEL, prompt_tokens=9, completion_tokens=9, event_id=event_id)
        assert meter.flush(timeout=30)
        stats = meter.stats()
    assert (stats.stored, stats.duplicates) == (1, 1)
    assert stored_ids(db_url) == [uuid.UUID(event_id)]
    assert rows(db_url)[0].prompt_tokens == 5


def test_price_at_reads_the_database_price_book(databases: DatabaseFactory, tmp_path: Path):
    url = databases.url()
    engine = make_engine(url)
    with engine.begin() as conn:
        add_price(conn, make_price("acme/model", "1.5", "2", datetime(2026, 1, 1, tzinfo=UTC)))
    engine.dispose()
    with Meter(url, spool_dir=tmp_path / "spool") as meter:
        price = meter.price_at("acme/model", datetime(2026, 6, 1, tzinfo=UTC))
        assert price is not None
        assert (price.input_per_million_usd, price.output_per_million_usd) == (
            Decimal("1.5"),
            Decimal("2"),
        )
        assert meter.price_at("acme/model", datetime(2025, 6, 1, tzinfo=UTC)) is None
        assert meter.price_at("nobody/priced", datetime(2026, 6, 1, tzinfo=UTC)) is None
        seed = meter.price_at(SEED_MODEL, datetime(2026, 6, 1, tzinfo=UTC))
        assert seed is not None and seed.input_per_million_usd == Decimal("0.11")
        assert meter.database() is not None


def test_a_down_database_delays_neither_meter_nor_record(tmp_path: Path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    meter = Meter(url, spool_dir=tmp_path / "spool")
    for i in range(200):
        meter.record(model=SEED_MODEL, prompt_tokens=i, completion_tokens=1)
    elapsed = time.monotonic() - started
    try:
        assert elapsed < 2.0  # a liveness bound: nothing on the caller's path waits for it
        assert meter.flush(timeout=0.5) is False
        assert meter.stats().spooled == 200
        # Without a price book the seed price still answers.
        assert meter.price_at(SEED_MODEL, datetime.now(UTC)) is not None
        assert meter.database() is None
    finally:
        meter.close(timeout=0)
    # Nothing was lost: the events wait in the spool for the next Meter.
    lines = sum(p.read_bytes().count(b"\n") for p in (tmp_path / "spool").glob("*.jsonl"))
    assert lines == 200


def test_postgres_with_an_old_schema_keeps_events_and_warns_once(
    databases: DatabaseFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    if databases.backend != "postgresql":
        pytest.skip("SQLite: Meter brings the schema to head itself")
    monkeypatch.setattr(stores, "SCHEMA_RECHECK_S", 0.3)
    url = databases.url(migrated=False)
    caplog.set_level(logging.WARNING, logger="meter.recorder")
    with Meter(url, spool_dir=tmp_path / "spool") as meter:
        event = meter.record(model=SEED_MODEL, prompt_tokens=3, completion_tokens=4)
        assert meter.flush(timeout=2) is False
        warnings = [r.getMessage() for r in caplog.records if "meter db upgrade" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert str(tmp_path / "spool") in warnings[0]
        engine = make_engine(url)
        migrate.upgrade(engine, "UTC")  # what `meter db upgrade` does
        engine.dispose()
        assert meter.flush(timeout=30) is True
    assert stored_ids(url) == [event.id]
    warnings = [r.getMessage() for r in caplog.records if "meter db upgrade" in r.getMessage()]
    assert len(warnings) == 1


def test_sqlite_schema_is_created_by_meter(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with Meter(url, spool_dir=tmp_path / "spool") as meter:
        meter.record(model=SEED_MODEL, prompt_tokens=1, completion_tokens=2)
        assert meter.flush(timeout=30)
    assert count_events(url) == 1


def run_script(
    script: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(script)],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_events_are_stored_at_interpreter_exit(db_url: str, tmp_path: Path):
    spool = tmp_path / "spool"
    done = run_script(
        """
        import os
        from meter import Meter
        meter = Meter(os.environ["URL"], spool_dir=os.environ["SPOOL"])
        for i in range(500):
            meter.record(model="m", prompt_tokens=i, completion_tokens=1)
        # no flush, no close: atexit does it
        """,
        {"URL": db_url, "SPOOL": str(spool)},
    )
    assert done.returncode == 0, done.stderr
    assert count_events(db_url) == 500
    assert list(spool.glob("*.jsonl")) == []


def test_sigterm_flushes_then_dies_of_sigterm(db_url: str, tmp_path: Path):
    proc = subprocess.Popen(
        [
            PYTHON,
            "-c",
            textwrap.dedent(
                """
                import os, sys, time
                from meter import Meter
                meter = Meter(os.environ["URL"], spool_dir=os.environ["SPOOL"])
                for i in range(300):
                    meter.record(model="m", prompt_tokens=i, completion_tokens=1)
                print("ready", flush=True)
                time.sleep(60)
                """
            ),
        ],
        env={
            **os.environ,
            "URL": db_url,
            "SPOOL": str(tmp_path / "spool"),
            "PYTHONPATH": str(REPO),
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.terminate()
        assert proc.wait(timeout=30) == -15  # still dies of SIGTERM, as without meter
    finally:
        proc.kill()
        proc.wait()
    assert count_events(db_url) == 300


def test_a_forked_child_records_through_its_own_segment(db_url: str, tmp_path: Path):
    done = run_script(
        """
        import os
        from meter import Meter
        meter = Meter(os.environ["URL"], spool_dir=os.environ["SPOOL"])
        meter.record(model="m", prompt_tokens=1, completion_tokens=1, user="parent")
        assert meter.flush(30)
        pid = os.fork()
        if pid == 0:
            meter.record(model="m", prompt_tokens=2, completion_tokens=2, user="child")
            ok = meter.flush(30)
            meter.close()
            os._exit(0 if ok else 3)
        meter.record(model="m", prompt_tokens=3, completion_tokens=3, user="parent")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert meter.flush(30)
        meter.close()
        """,
        {"URL": db_url, "SPOOL": str(tmp_path / "spool")},
    )
    assert done.returncode == 0, done.stderr
    users = sorted(r.user for r in rows(db_url))
    assert users == ["child", "parent", "parent"]
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


@given(
    moments=st.lists(
        st.datetimes(
            min_value=datetime(1970, 1, 2),
            max_value=datetime(2200, 1, 1),
            timezones=st.sampled_from(
                [UTC, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]
            ),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_ledgers_fast_sqlite_timestamps_are_exactly_sqlalchemys(moments: list[datetime]):
    # The drain's hot path formats SQLite datetimes itself: they must be byte-identical to what
    # SQLAlchemy writes, or range queries would compare text that sorts differently.
    cache = _SecondCache()
    for moment in sorted(moments) + moments:
        expected = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        assert cache.text(moment) == expected


def meter_threads() -> int:
    return sum(t.name in ("meter-drain", "meter-fsync") for t in threading.enumerate())


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_meter_dropped_without_close_stops_its_threads_and_loses_nothing(
    databases: DatabaseFactory, tmp_path: Path
):
    url = databases.url()
    spool = tmp_path / "spool"
    before = meter_threads()
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    meter = Meter(down, spool_dir=spool)
    event = meter.record(model=SEED_MODEL, prompt_tokens=1, completion_tokens=1)
    assert meter_threads() == before + 2
    del meter
    gc.collect()
    assert wait_until(lambda: meter_threads() == before)
    # Its unstored event was left in an unlocked segment: the next Meter stores it.
    with Meter(url, spool_dir=spool) as again:
        assert again.flush(timeout=30)
    assert stored_ids(url) == [event.id]
    assert list(spool.glob("*.jsonl")) == []
