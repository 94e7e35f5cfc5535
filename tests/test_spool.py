"""The spool: replay of dead segments, torn and corrupt lines, the size cap, `meter spool`."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meter import Meter
from meter.cli import app
from meter.pricing import SEED_MODEL
from meter.recorder.drain import replay_dead_segments
from meter.recorder.stores import DatabaseStore
from meter.settings import get_settings
from tests import factories
from tests.recorder_helpers import count_events, free_port, stored_ids, write_dead_segment

DEAD = "1700000000000000000-999999-deadbeef.jsonl"


def test_a_segment_replayed_twice_counts_once(db_url: str, tmp_path: Path):
    spool = tmp_path / "spool"
    events = [factories.event(prompt_tokens=i) for i in range(1, 251)]
    path = write_dead_segment(spool, events, DEAD)
    copy = tmp_path / "copy.jsonl"
    shutil.copy(path, copy)
    store = DatabaseStore(get_settings(database_url=db_url))
    try:
        first = replay_dead_segments(spool, store)
        assert (first.stored, first.duplicates, first.replayed_segments) == (250, 0, 1)
        assert not path.exists()  # a replayed segment is deleted
        shutil.copy(copy, path)  # the same segment again, e.g. restored from a backup
        second = replay_dead_segments(spool, store)
        assert (second.stored, second.duplicates, second.replayed_segments) == (0, 250, 1)
    finally:
        store.close()
    assert sorted(stored_ids(db_url)) == sorted(e.id for e in events)


def test_a_new_meter_replays_dead_segments_at_start(db_url: str, tmp_path: Path):
    spool = tmp_path / "spool"
    events = [factories.event() for _ in range(100)]
    write_dead_segment(spool, events[:60], DEAD)
    write_dead_segment(spool, events[40:], "1700000000000000001-999998-cafebabe.jsonl")
    with Meter(db_url, spool_dir=spool) as meter:
        assert meter.flush(timeout=30)  # flush also waits for what was found at start
        stats = meter.stats()
    assert (stats.stored, stats.duplicates, stats.replayed_segments) == (100, 20, 2)
    assert sorted(stored_ids(db_url)) == sorted(e.id for e in events)
    assert list(spool.iterdir()) == []


def test_torn_and_corrupt_lines_are_skipped_counted_and_warned(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    spool = tmp_path / "spool"
    good = [factories.event() for _ in range(5)]
    path = write_dead_segment(spool, good[:3], DEAD)
    torn = write_dead_segment(tmp_path, good[3:4], "x.jsonl").read_bytes()[:-40]
    with path.open("ab") as f:
        f.write(b"{not json at all\n")  # corrupt line in the middle
        f.write(b'["a", "list"]\n')  # valid JSON, not an event
        f.write(b'{"id": "nope"}\n')  # an object, not an event
        f.write(write_dead_segment(tmp_path, good[4:], "y.jsonl").read_bytes())
        f.write(torn)  # the last line, torn by a crash: no newline
    caplog.set_level(logging.WARNING, logger="meter.recorder")
    with Meter(db_url, spool_dir=spool) as meter:
        assert meter.flush(timeout=30)
        stats = meter.stats()
    assert (stats.stored, stats.skipped_lines, stats.replayed_segments) == (4, 4, 1)
    assert sorted(stored_ids(db_url)) == sorted([*(e.id for e in good[:3]), good[4].id])
    skipped = [r for r in caplog.records if "torn or corrupt" in r.getMessage()]
    assert len(skipped) == 4
    assert not path.exists()


def test_live_segments_are_left_to_their_owner(db_url: str, tmp_path: Path):
    spool = tmp_path / "spool"
    live = spool / "1700000000000000000-1-live.jsonl"
    write_dead_segment(spool, [factories.event() for _ in range(10)], live.name)
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as its writer process holds it
    try:
        with Meter(db_url, spool_dir=spool) as meter:
            meter.record(model=SEED_MODEL, prompt_tokens=1, completion_tokens=1)
            assert meter.flush(timeout=30)
            assert meter.stats().replayed_segments == 0
        assert count_events(db_url) == 1
        assert live.exists()
    finally:
        os.close(fd)  # the owner dies: its segment is now dead and replayable
    with Meter(db_url, spool_dir=spool) as meter:
        assert meter.flush(timeout=30)
    assert count_events(db_url) == 11
    assert not live.exists()


def test_a_full_spool_drops_new_events_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    settings = get_settings(database_url=down, spool_dir=tmp_path / "spool", spool_max_bytes=4000)
    caplog.set_level(logging.WARNING, logger="meter.recorder")
    meter = Meter(settings=settings)
    try:
        started = time.monotonic()
        for i in range(100):
            meter.record(model=SEED_MODEL, prompt_tokens=i, completion_tokens=1)
        assert time.monotonic() - started < 2.0  # liveness bound: a full spool never waits
        stats = meter.stats()
        assert stats.spooled + stats.dropped == 100
        assert 0 < stats.spooled < 100
        on_disk = sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.jsonl"))
        assert on_disk <= 4000
        full = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full) == 1  # at most one warning a minute
        assert "METER_SPOOL_MAX_BYTES" in full[0].getMessage()
    finally:
        meter.close(timeout=0)
    lines = sum(p.read_bytes().count(b"\n") for p in (tmp_path / "spool").glob("*.jsonl"))
    assert lines == stats.spooled  # what was accepted is kept for the next Meter


def cli(args: list[str], spool: Path, url: str) -> tuple[int, str]:
    env = {"METER_SPOOL_DIR": str(spool), "METER_DATABASE_URL": url, "COLUMNS": "200"}
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.output


def test_meter_spool_status_and_replay(db_url: str, tmp_path: Path):
    spool = tmp_path / "spool"
    write_dead_segment(spool, [factories.event() for _ in range(7)], DEAD)
    live = write_dead_segment(
        spool, [factories.event() for _ in range(3)], f"1800000000000000000-{os.getpid()}-a.jsonl"
    )
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        code, out = cli(["spool", "status"], spool, db_url)
        assert code == 0, out
        assert DEAD in out and "dead" in out and "alive" in out
        assert "total: 2 segments, 10 events" in out
        assert "dead (to replay): 1 segments, 7 events" in out

        code, out = cli(["spool", "replay"], spool, db_url)
        assert code == 0, out
        assert "replayed 1 segments" in out
        assert "7 inserted, 0 duplicates, 0 skipped lines, 0 rejected events" in out
        assert count_events(db_url) == 7
        assert live.exists()  # its owner is alive: not ours to replay

        code, out = cli(["spool", "status", "--json"], spool, db_url)
        assert code == 0, out
        assert '"dead_segments": 0' in out
    finally:
        os.close(fd)


def test_meter_spool_replay_with_the_database_down_loses_nothing(tmp_path: Path):
    spool = tmp_path / "spool"
    path = write_dead_segment(spool, [factories.event() for _ in range(3)], DEAD)
    down = f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{free_port()}/nothing"
    code, out = cli(["spool", "replay"], spool, down)
    assert code == 2
    assert "nothing was lost" in out
    assert "s3cret" not in out
    assert path.exists()


def test_a_stale_half_created_segment_is_cleaned_up(db_url: str, tmp_path: Path):
    spool = tmp_path / "spool"
    spool.mkdir()
    stale = spool / (DEAD + ".creating")
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = spool / ("1800000000000000000-1-b.jsonl" + ".creating")
    fresh.write_bytes(b"")  # may be another process publishing its segment right now
    with Meter(db_url, spool_dir=spool) as meter:
        assert meter.flush(timeout=30)
    assert not stale.exists()
    assert fresh.exists()


def test_an_unwritable_spool_never_fails_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    caplog.set_level(logging.WARNING, logger="meter.recorder")
    with Meter(f"sqlite:///{tmp_path / 'm.db'}", spool_dir=blocker / "spool") as meter:
        for i in range(50):
            meter.record(model=SEED_MODEL, prompt_tokens=i, completion_tokens=1)
        assert meter.stats().dropped == 50
    warnings = [r for r in caplog.records if "cannot write to the spool" in r.getMessage()]
    assert len(warnings) == 1  # at most one a minute, not one per call
    assert not [r for r in caplog.records if r.exc_info]  # and no tracebacks from the threads
