"""Shared helpers of the recorder, spool and outage tests: read what a Meter stored."""

from __future__ import annotations

import socket
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

from meter.db.engine import make_engine
from meter.events import EventRecord

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


def stored_ids(url: str) -> list[uuid.UUID]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ids = conn.execute(sa.text("SELECT id FROM events")).scalars().all()
    finally:
        engine.dispose()
    return [i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in ids]


def count_events(url: str) -> int:
    return len(stored_ids(url))


def write_dead_segment(spool_dir: Path, events: list[EventRecord], name: str) -> Path:
    """A segment as a killed process leaves it: complete lines, nobody holding its lock."""
    from meter.recorder.meter import _ENCODER

    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / name
    path.write_bytes(b"".join(_ENCODER.encode(e.to_wire()).encode() + b"\n" for e in events))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
