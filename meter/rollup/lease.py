"""The roll-up lease: one run at a time across every process, coordinated in the database.

The single `rollup_state` row names the holder and when its lease expires. A run takes it in a
short transaction, renews it at the start of every chunk transaction (the renewal is also the
fence: a holder whose lease was taken over fails its next chunk instead of writing), and
releases it at the end. A crashed holder's lease simply expires. It works the same on SQLite and
PostgreSQL, and unlike a session-level advisory lock it cannot leak through a connection pool or
PgBouncer; a transaction-level advisory lock would not outlive the per-chunk commits.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter._exceptions import MeterError
from meter.db import models
from meter.db.session import Database

LEASE = timedelta(seconds=120)
POLL_SECONDS = 0.1

Clock = Callable[[], datetime]


class RollupBusy(MeterError):
    """Another roll-up holds the lease and did not finish within the wait."""

    def __init__(self, holder: str | None, waited: float) -> None:
        super().__init__(
            f"another roll-up is running ({holder or 'unknown holder'}); "
            f"waited {waited:g} s for it to finish"
        )
        self.holder = holder


class LeaseLost(MeterError):
    """This run's lease expired and another run took it over; the run stops."""


@dataclass(frozen=True)
class RunStats:
    started_at: datetime
    events: int
    duration_ms: int


def new_holder_id() -> str:
    host = socket.gethostname()[:60]
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _try_acquire(db: Database, holder: str, now: datetime) -> str | None:
    """Take the lease if free or expired. Returns None on success, else the current holder."""
    s = models.RollupState
    with db.engine.begin() as conn:
        taken = conn.execute(
            sa.update(s)
            .where(
                s.id == 1,
                sa.or_(
                    s.holder.is_(None),
                    s.lease_expires_at.is_(None),
                    s.lease_expires_at < now,
                    s.holder == holder,
                ),
            )
            .values(holder=holder, lease_expires_at=now + LEASE)
        ).rowcount
        if taken:
            return None
        current = conn.execute(sa.select(s.holder).where(s.id == 1)).first()
        if current is None:  # the state row is missing: recreate it, held by us
            conn.execute(sa.insert(s).values(id=1, holder=holder, lease_expires_at=now + LEASE))
            return None
        return current.holder or "unknown holder"


def acquire(db: Database, holder: str, wait_seconds: float, clock: Clock = _utc_now) -> None:
    """Take the lease, waiting up to `wait_seconds` for a run in progress; else RollupBusy."""
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    while True:
        current = _try_acquire(db, holder, clock())
        if current is None:
            return
        if time.monotonic() >= deadline:
            raise RollupBusy(current, wait_seconds)
        time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))


def renew(conn: Connection, holder: str, clock: Clock = _utc_now) -> None:
    """Extend the lease inside a chunk's transaction, or fail that chunk if it was lost.

    On PostgreSQL the UPDATE also row-locks the state row until the chunk commits, so a
    takeover cannot slip in between this check and the chunk's writes.
    """
    s = models.RollupState
    renewed = conn.execute(
        sa.update(s).where(s.id == 1, s.holder == holder).values(lease_expires_at=clock() + LEASE)
    ).rowcount
    if not renewed:
        raise LeaseLost("the roll-up lease expired and another run took over; stopping")


def release(db: Database, holder: str, stats: RunStats | None) -> None:
    """Give the lease back; with `stats`, record a completed run (its start is the new as_of)."""
    s = models.RollupState
    values: dict[str, object] = {"holder": None, "lease_expires_at": None}
    if stats is not None:
        values.update(
            last_run_at=stats.started_at,
            last_run_events=stats.events,
            last_run_duration_ms=stats.duration_ms,
        )
    with db.engine.begin() as conn:
        conn.execute(sa.update(s).where(s.id == 1, s.holder == holder).values(**values))


def last_run_at(conn: Connection) -> datetime | None:
    """`as_of` of every report: when the last complete roll-up started."""
    s = models.RollupState
    return conn.execute(sa.select(s.last_run_at).where(s.id == 1)).scalar_one_or_none()
