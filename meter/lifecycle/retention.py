"""Retention: purge the raw events of whole local days once they are rolled up, keeping every
total (SPEC section 10).

Why every answer is the same before and after a purge, and why nothing is lost or counted twice:

1. Every total meter answers with (reports, summaries, the billing report, budget spend, alerts,
   the gateway's budget state, reconciliation) is read from the roll-up tables, never from raw
   events; a week and a month are sums of days (meter.rollup.repository). Only the listings of
   raw events themselves (`GET /v1/events`, the export) lose the purged rows.
2. The cutoff moves under the roll-up's lease, so no roll-up chunk runs meanwhile, in a
   transaction that first updates the cutoff's row in `meter_meta`. Every writer takes a share
   lock on that row while it checks its events against the cutoff (meter.db.ledger.insert_events):
   the update waits for writers that read the old cutoff to commit, and writers that come after
   read the new one and answer `expired` for every event of a day before it (SQLite's BEGIN
   IMMEDIATE orders them the same way). No event of a day before the cutoff is stored after it
   moves, so a replayed spool of purged events cannot count them again.
3. In that transaction, after the update, the cutoff is held back to the Monday of the oldest
   week that still has a roll-up mark and to the oldest day with a generation lookup still due.
   Every writer that read the old cutoff has committed by then, so its marks are seen: every
   day before the cutoff is rolled up, and no lookup will change one of its events any more.
4. The roll-up never recounts a day before the cutoff (meter.rollup.repository._unfrozen): it
   keeps those days' rows. A late event inside the horizon for a week that is partly purged
   marks its group as usual; the chunk recounts that group's days from the cutoff on and sums
   its week again from all its days, the kept ones included: counted exactly once, on top of
   the purged totals.
5. Only after that commit are the raw events before the cutoff deleted, oldest first, in
   batches of a short transaction each, with pauses so ingest keeps going. Nothing reads them
   for a total any more, so a purge stopped halfway changes no answer; the next one finishes.

The cutoff never moves back. What a purge cannot keep: `meter tags add` backfills a new tag key
from the raw events kept, and `meter prices reprice` prices the unpriced events kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from meter._exceptions import MeterError
from meter.audit.operations import long_operation
from meter.db.ledger import CUTOFF_KEY, read_cutoff
from meter.db.models import UTCDateTime
from meter.db.session import Database
from meter.periods import as_date
from meter.rollup import lease
from meter.weeks import local_midnight_utc

log = logging.getLogger("meter.retention")

MIN_RETENTION_DAYS = 2
BATCH_SIZE = 10_000
# Pause after each batch for this share of the time the batch took. SQLite has one write lock:
# a writer gets it 3/4 of the time (ingest during a purge of 1M events at ratio 1: 53% of its
# rate alone, bench.purge). PostgreSQL's writers only meet the purge on index pages and I/O:
# ratio 1 kept 72%.
PAUSE_RATIO = {"sqlite": 3.0, "postgresql": 1.0}
LEASE_WAIT_SECONDS = 60.0

Progress = Callable[[int, int], None]  # (events deleted so far, events to delete)


class PurgeError(MeterError):
    pass


@dataclass(frozen=True)
class PurgePlan:
    """What a purge would do now: the cutoff (events of local days before it go), why it is
    where it is, and how many raw events lie before it."""

    cutoff: date | None
    requested: date
    # Why the cutoff is not the requested day: "unrolled" (a week still marked for the roll-up),
    # "lookups" (a pending generation lookup), "earlier purge" (one moved it further already).
    reason: str | None
    events: int


@dataclass(frozen=True)
class PurgeResult:
    cutoff: date | None
    deleted: int
    batches: int
    duration_ms: int


def target_cutoff(older_than_days: int, tz: ZoneInfo, now: datetime | None = None) -> date:
    """The first local day kept when purging days older than `older_than_days`: today's local
    date minus that many days (today counts as day 0, so N=30 keeps 31 local days)."""
    if older_than_days < MIN_RETENTION_DAYS:
        raise PurgeError(
            f"keep at least {MIN_RETENTION_DAYS} days of raw events, not {older_than_days}"
        )
    today = (now or datetime.now(UTC)).astimezone(tz).date()
    return today - timedelta(days=older_than_days)


def _held_back(conn: sa.Connection, requested: date, now: datetime) -> tuple[date, str | None]:
    """The requested cutoff held back to the oldest day not yet final (point 3 above). A lookup
    past its deadline is given up, not waited for (without OPENROUTER_API_KEY none runs)."""
    cutoff, reason = requested, None
    oldest_mark = conn.execute(sa.text("SELECT MIN(week_start) FROM rollup_dirty")).scalar()
    if oldest_mark is not None and as_date(oldest_mark) < cutoff:
        cutoff, reason = as_date(oldest_mark), "unrolled"
    oldest_lookup = conn.execute(
        sa.text(
            "SELECT MIN(e.day) FROM generation_lookups l JOIN events e ON e.id = l.event_id "
            "WHERE l.state = 'pending' AND l.deadline_at > :now"
        ).bindparams(sa.bindparam("now", type_=UTCDateTime())),
        {"now": now},
    ).scalar()
    if oldest_lookup is not None and as_date(oldest_lookup) < cutoff:
        cutoff, reason = as_date(oldest_lookup), "lookups"
    return cutoff, reason


def _count_before(conn: sa.Connection, bound: datetime) -> int:
    return int(
        conn.execute(
            sa.text("SELECT COUNT(*) FROM events WHERE occurred_at < :b").bindparams(
                sa.bindparam("b", type_=UTCDateTime())
            ),
            {"b": bound},
        ).scalar()
        or 0
    )


def _plan(conn: sa.Connection, requested: date, tz: ZoneInfo) -> PurgePlan:
    cutoff, reason = _held_back(conn, requested, datetime.now(UTC))
    old = read_cutoff(conn)
    if old is not None and old > cutoff:  # it never moves back
        cutoff, reason = old, "earlier purge"
    return PurgePlan(cutoff, requested, reason, _count_before(conn, local_midnight_utc(cutoff, tz)))


def plan_purge(db: Database, older_than_days: int, now: datetime | None = None) -> PurgePlan:
    """What `purge` would delete now (`--dry-run`): nothing is written."""
    requested = target_cutoff(older_than_days, db.tz, now)
    with db.engine.connect().execution_options(readonly=True) as conn, conn.begin():
        return _plan(conn, requested, db.tz)


def _move_cutoff(db: Database, holder: str, requested: date) -> PurgePlan:
    """Points 2 and 3: the cutoff stored, under the lease, before anything is deleted."""
    with db.engine.begin() as conn:
        lease.renew(conn, holder)
        # First the row lock (waiting for writers that read the old cutoff), then the checks.
        locked = conn.execute(
            sa.text("UPDATE meter_meta SET value = value WHERE key = :k"), {"k": CUTOFF_KEY}
        ).rowcount
        if locked != 1:
            raise PurgeError("this database has no purge cutoff yet: run `meter db upgrade`")
        plan = _plan(conn, requested, db.tz)
        assert plan.cutoff is not None
        conn.execute(
            sa.text("UPDATE meter_meta SET value = :v WHERE key = :k"),
            {"v": plan.cutoff.isoformat(), "k": CUTOFF_KEY},
        )
        return plan


def _delete_batch(db: Database, bound: datetime, size: int) -> int:
    """The oldest `size` raw events before `bound`, in one short transaction."""
    with db.engine.begin() as conn:
        result = conn.execute(
            sa.text(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE occurred_at < :b "
                "ORDER BY occurred_at, id LIMIT :n)"
            ).bindparams(sa.bindparam("b", type_=UTCDateTime())),
            {"b": bound, "n": size},
        )
        return int(result.rowcount or 0)


def _drop_lookups(db: Database, bound: datetime) -> None:
    """The generation lookups of the events about to go: finished, or past their deadline
    (lookups still due hold the cutoff back). Driven from the lookups, a small table, with one
    probe of the events' key each."""
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM generation_lookups WHERE (state <> 'pending' OR deadline_at <= :now) "
                "AND EXISTS (SELECT 1 FROM events e WHERE e.id = generation_lookups.event_id "
                "AND e.occurred_at < :b)"
            ).bindparams(
                sa.bindparam("b", type_=UTCDateTime()), sa.bindparam("now", type_=UTCDateTime())
            ),
            {"b": bound, "now": datetime.now(UTC)},
        )


def purge(
    db: Database,
    older_than_days: int,
    *,
    actor: str,
    batch_size: int = BATCH_SIZE,
    pause_ratio: float | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
    lease_wait_seconds: float = LEASE_WAIT_SECONDS,
) -> PurgeResult:
    """Purge the raw events of local days older than `older_than_days` that are rolled up.

    Rolls up first (what is still marked would hold the cutoff back), stores the cutoff, then
    deletes in batches; `purge.start` and `purge.finish` (or `.abort`) go to the audit log.
    Raises PurgeError for a retention under the minimum, RollupBusy if a roll-up keeps the
    lease longer than `lease_wait_seconds`.
    """
    from meter.rollup.engine import run_rollup

    requested = target_cutoff(older_than_days, db.tz, now)
    if pause_ratio is None:
        pause_ratio = PAUSE_RATIO[db.engine.dialect.name]
    if batch_size < 1:
        raise PurgeError(f"batch size must be at least 1, not {batch_size}")
    t0 = time.perf_counter()
    details = {"older_than_days": older_than_days, "requested_cutoff": requested.isoformat()}
    with long_operation(db.engine, actor, "purge", f"before:{requested}", details) as operation:
        run_rollup(db, wait_seconds=lease_wait_seconds)
        holder = lease.new_holder_id()
        lease.acquire(db, holder, lease_wait_seconds)
        try:
            plan = _move_cutoff(db, holder, requested)
        finally:
            lease.release(db, holder, None)
        assert plan.cutoff is not None
        # `occurred_at < bound` is exactly `day < cutoff`, and uses the (occurred_at, id) index.
        bound = local_midnight_utc(plan.cutoff, db.tz)
        if plan.reason in ("unrolled", "lookups"):
            log.warning(
                "purge: cutoff held back to %s (%s): later days are not final yet",
                plan.cutoff,
                plan.reason,
            )
        _drop_lookups(db, bound)
        deleted = batches = 0
        if progress:
            progress(0, plan.events)
        while True:
            started = time.perf_counter()
            n = _delete_batch(db, bound, batch_size)
            if n == 0:
                break
            deleted += n
            batches += 1
            if progress:
                progress(deleted, max(plan.events, deleted))
            if n < batch_size:
                break
            if pause_ratio > 0:
                time.sleep((time.perf_counter() - started) * pause_ratio)
        with db.engine.begin() as conn:
            operation.finish(
                conn, {"cutoff": plan.cutoff.isoformat(), "deleted": deleted, "batches": batches}
            )
    duration_ms = round((time.perf_counter() - t0) * 1000)
    log.info("purge: %d raw events before %s deleted in %d ms", deleted, plan.cutoff, duration_ms)
    return PurgeResult(plan.cutoff, deleted, batches, duration_ms)
