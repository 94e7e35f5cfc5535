"""The drain's in-memory hand-off: events this process just spooled are stored as the objects
that were appended, never parsed back, but only where the file holds exactly their line; the
file stays the source of truth, and the hand-off is bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from meter import Meter
from meter.db.engine import make_engine
from meter.events import EventRecord
from meter.recorder import drain as drain_mod
from meter.recorder import spool as spool_mod
from meter.recorder.drain import Drainer, parse_own_batch
from meter.recorder.meter import _encode_line
from meter.recorder.segments import read_lines
from meter.recorder.spool import SpoolWriter
from tests import factories


def _line(event: EventRecord) -> bytes:
    return _encode_line(event.to_wire()).encode() + b"\n"


def _setup(tmp_path: Path) -> tuple[SpoolWriter, Drainer]:
    writer = SpoolWriter(tmp_path / "spool", max_bytes=1 << 30)
    drainer = Drainer(writer, store=object())  # type: ignore[arg-type]  # never started
    return writer, drainer


def _read_all(writer: SpoolWriter, drainer: Drainer) -> drain_mod.ParsedBatch:
    seg = writer.snapshot()[-1]
    batch = read_lines(seg.fd, 0, max_lines=100_000, max_bytes=1 << 26, final=False)
    return parse_own_batch(batch.lines, seg, 0, writer, drainer)


def test_handed_off_events_are_not_parsed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, drainer = _setup(tmp_path)
    events = [factories.event(prompt_tokens=i) for i in range(1, 301)]
    for e in events:
        assert writer.append(_line(e), e)

    def no_parsing(*args: object) -> None:
        raise AssertionError("a handed-off line was parsed")

    monkeypatch.setattr(drain_mod, "parse_batch", no_parsing)
    parsed = _read_all(writer, drainer)
    assert parsed.skipped == 0
    assert all(a is b for a, b in zip(parsed.events, events, strict=True))
    assert parsed.raw == [_line(e)[:-1] for e in events]
    assert not writer.handoffs


def test_a_line_that_is_not_its_hand_off_is_parsed_from_the_file(tmp_path: Path) -> None:
    writer, drainer = _setup(tmp_path)
    events = [factories.event(prompt_tokens=i) for i in range(10, 20)]
    for e in events:
        writer.append(_line(e), e)
    # The file, not memory, is the truth: change event 3's line in place (same length) and
    # tear event 6's.
    seg = writer.snapshot()[-1]
    offsets = [0]
    for e in events:
        offsets.append(offsets[-1] + len(_line(e)))
    changed = _line(events[3]).replace(b'"prompt_tokens":13', b'"prompt_tokens":99')
    torn = b"{" + b" " * (len(_line(events[6])) - 2) + b"\n"
    fd = os.open(seg.path, os.O_WRONLY)
    try:
        os.pwrite(fd, changed, offsets[3])
        os.pwrite(fd, torn, offsets[6])
    finally:
        os.close(fd)
    parsed = _read_all(writer, drainer)
    assert parsed.skipped == 1
    tokens = [e.prompt_tokens for e in parsed.events]
    assert tokens == [10, 11, 12, 99, 14, 15, 17, 18, 19]
    assert parsed.events[3] is not events[3]
    assert all(parsed.events[i] is events[i] for i in (0, 1, 2, 4, 5))


def test_the_hand_off_is_bounded_and_the_rest_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_mod, "HANDOFF_EVENTS", 50)
    writer, drainer = _setup(tmp_path)
    events = [factories.event(prompt_tokens=i) for i in range(1, 121)]
    for e in events:
        writer.append(_line(e), e)  # never blocks: the oldest hand-offs are forgotten
    assert len(writer.handoffs) == 50
    parsed = _read_all(writer, drainer)
    assert [e.id for e in parsed.events] == [e.id for e in events]
    assert [e.prompt_tokens for e in parsed.events] == list(range(1, 121))
    assert sum(a is b for a, b in zip(parsed.events, events, strict=True)) == 50


def test_changing_what_record_returned_does_not_change_what_is_stored(
    db_url: str, tmp_path: Path
) -> None:
    with Meter(db_url, spool_dir=tmp_path / "spool") as meter:
        event = meter.record(
            model="openai/gpt-4o-mini",
            prompt_tokens=5,
            completion_tokens=6,
            tags={"env": "prod"},
        )
        assert event.tags is not None
        event.tags["env"] = "changed"
        event.prompt_tokens = 1000
        assert meter.flush(timeout=30)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT prompt_tokens, tags FROM events")).one()
    finally:
        engine.dispose()
    assert row[0] == 5
    assert "changed" not in str(row[1])
