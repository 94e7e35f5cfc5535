"""The roll-up: consume dirty marks, recompute their (week, team, user, model) groups.

A group's days (daily_usage, per local date), its rolled-up tags' days (daily_tag_usage) and its
week (weekly_usage, the sum of its days) are recomputed together, in the chunk that takes its
mark: a day always lies in one week, so the weekly marks drive the days too, and a week and a
month are exact sums of the same daily rows.

Months (monthly_usage) follow at the end of the run: a chunk marks the months its days lie in
(rollup_dirty_months, in its own transaction), and the month step rewrites each marked month
from its whole weeks and edge days, then unmarks it, in one transaction per month. A month
changed by several chunks is summed once, from its final days; a run that stops or fails
before its month step leaves the marks for the next run. Readers never use a marked month's
rows (meter.reports.period_queries reads its weeks and days instead), so a report is exact
at every moment.

Why it counts every committed event exactly once, whatever order writers commit in:

1. A writer inserts its events and, in the same transaction, upserts the mark of every group
   it touched with `INSERT ... ON CONFLICT DO UPDATE ... WHERE false`. The DO UPDATE matters:
   even when its WHERE leaves the row as it is, it row-locks an existing mark until the writer
   commits (DO NOTHING would not), and a new mark is a row that only becomes visible when the
   writer commits.
2. A chunk locks its marks (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite's BEGIN IMMEDIATE
   excludes every writer anyway). A writer still holding one of them makes us wait until it
   commits. Under READ COMMITTED the next statement takes a fresh snapshot, which therefore
   contains the events of every writer that held those marks.
3. The chunk deletes exactly the marks it locked (on PostgreSQL in the statement that locks
   them), recomputes each of their groups from the raw events (a full recount, not an
   increment: idempotent, and a repriced event just changes the group's cost), and commits;
   if it fails, the deletion is rolled back with the rest. Days before the purge cutoff are
   the exception: final, never recounted, their rows kept (meter.lifecycle.retention).
4. A writer whose events are not in our snapshot either (a) marked a group we did not lock (a
   new row, invisible to us, or outside this chunk): that mark survives for the next run; or
   (b) reaches its upsert while we hold the mark, or after we deleted it: it waits for our
   commit, then finds no conflicting row and inserts a fresh mark. In both cases its group is
   recomputed later. So a mark exists for every group whose committed events are not yet in
   weekly_usage and daily_usage.

Why it cannot deadlock: writers take mark locks in sorted order (meter.db.ledger)
and so does a chunk (`ORDER BY ... COLLATE "C"`, the same code-point order); a chunk takes no
lock a writer could hold besides the marks (events are only read; the roll-up tables and the
lease row are written by the lease holder alone). Ordered acquisition of one kind of lock cannot
form a cycle. A deadlock or serialization failure would still only abort the chunk (retried).

Cost: consecutive dirty weeks share a chunk up to CHUNK_GROUPS marks (a week with more is
split into key ranges). A chunk whose marks cover most of its rows recomputes its range with one
GROUP BY; a few dirty groups in big weeks are recomputed group by group, so an incremental run
costs what its new events touch, not the history, and late events scattered over a year cost a
few chunks, not one per week. Each chunk is its own short transaction: SQLite's single write
lock is never held for a whole roll-up (a chunk of 20,000 groups: ~0.5 s here).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import sqlalchemy as sa

from meter.db.ledger import read_cutoff
from meter.db.session import Database
from meter.rollup import lease
from meter.rollup import repository as repo
from meter.rollup.repository import Chunk
from meter.weeks import Week

log = logging.getLogger("meter.rollup")

CHUNK_GROUPS = 20_000
# Recompute a key range whole when its dirty groups are at least this share of its rows.
WHOLE_RANGE_SHARE = 0.5
CHUNK_ATTEMPTS = 3
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialization failure

Progress = Callable[[int, int, int], None]  # (chunks done, chunks planned, events so far)


@dataclass(frozen=True)
class RollupResult:
    events_rolled_up: int
    weeks: list[Week]
    alerts_fired: int
    duration_ms: int
    started_at: datetime
    groups: int = 0
    chunks: int = 0
    stopped: bool = False  # asked to stop between chunks; the remaining marks wait

    @property
    def week_labels(self) -> list[str]:
        return [w.label for w in self.weeks]


@dataclass
class _Totals:
    events: int = 0
    groups: int = 0
    weeks: set[date] = field(default_factory=set)


def plan(db: Database) -> list[Chunk]:
    """Chunks covering every mark present now, oldest week first: consecutive dirty weeks
    together up to CHUNK_GROUPS marks, a bigger week alone and split into key ranges."""
    with db.engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        with conn.begin():
            chunks: list[Chunk] = []
            run: list[date] = []  # weeks gathered for the next chunk
            marks = 0

            def close_run() -> None:
                nonlocal run, marks
                if run:
                    chunks.append(Chunk(tuple(run)))
                run, marks = [], 0

            for week_start, count in repo.dirty_weeks(conn):
                if count > CHUNK_GROUPS:
                    close_run()
                    bounds: list[repo.Key | None] = [
                        None,
                        *repo.week_boundaries(conn, week_start, CHUNK_GROUPS),
                        None,
                    ]
                    chunks.extend(
                        Chunk((week_start,), lo, hi) for lo, hi in itertools.pairwise(bounds)
                    )
                    continue
                if marks + count > CHUNK_GROUPS:
                    close_run()
                run.append(week_start)
                marks += count
            close_run()
    return chunks


def rollup_chunk(db: Database, holder: str, chunk: Chunk, now: datetime) -> tuple[int, int]:
    """One chunk in one transaction -> (new events counted, groups consumed)."""
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        try:
            with db.engine.begin() as conn:
                repo.prepare_transaction(conn)
                lease.renew(conn, holder)
                existing = repo.existing_rows(conn, chunk)
                taken = repo.take_marks(conn, chunk, keep_keys=existing > 0)
                if not taken:
                    return 0, 0
                whole = taken >= WHOLE_RANGE_SHARE * existing
                repo.drop_counted_holds(conn, chunk, whole)
                tags = bool(repo.rolled_up_tag_keys(conn))
                # Read after the marks are locked: a purge moves the cutoff only under the lease
                # we hold, so it is the same for every statement of this chunk.
                cutoff = read_cutoff(conn)
                before = 0
                if existing:  # else nothing is rolled up in this range yet: nothing to drop
                    before = repo.requests_in_scope(conn, chunk, whole)
                    repo.delete_days(conn, chunk, whole, tags, cutoff)
                repo.write_days(conn, chunk, now, whole, tags, cutoff)
                if existing:
                    repo.delete_emptied(conn, chunk)
                if whole:
                    repo.recompute_range(conn, chunk, now, empty=not existing)
                else:
                    repo.recompute_groups(conn, chunk, now)
                after = repo.requests_in_scope(conn, chunk, whole)
                repo.mark_months(conn, chunk)
                repo.consume_marks(conn, chunk)
                return after - before, taken
        except sa.exc.DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if sqlstate not in _RETRYABLE_SQLSTATES or attempt == CHUNK_ATTEMPTS:
                raise
            log.warning("roll-up chunk %s retried after %s", chunk, sqlstate)
    raise AssertionError("unreachable")


def roll_months(db: Database, holder: str, stop: threading.Event | None = None) -> int:
    """The month step: every month a chunk marked (this run's, or a run's that stopped or
    failed before its month step) rewritten from its weeks and days, one transaction each
    -> months rewritten. Runs after the chunks, so a month the run changes in several chunks
    is summed once, from its final days."""
    with db.engine.connect() as conn:
        months = repo.dirty_months(conn)
    for done, month in enumerate(months):
        if stop is not None and stop.is_set():
            return done
        with db.engine.begin() as conn:
            lease.renew(conn, holder)
            repo.recompute_month(conn, month, datetime.now(UTC))
    return len(months)


def run_rollup(
    db: Database,
    *,
    wait_seconds: float = 0.0,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> RollupResult:
    """Roll up every dirty group, then evaluate budgets. One run at a time (see lease).

    Raises RollupBusy if another run still holds the lease after `wait_seconds`.
    """
    holder = lease.new_holder_id()
    lease.acquire(db, holder, wait_seconds)
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    totals = _Totals()
    stopped = False
    try:
        chunks = plan(db)
        if progress:
            progress(0, len(chunks), 0)
        for i, chunk in enumerate(chunks, 1):
            if stop is not None and stop.is_set():
                stopped = True
                break
            events, groups = rollup_chunk(db, holder, chunk, datetime.now(UTC))
            totals.events += events
            totals.groups += groups
            if groups:
                totals.weeks.update(chunk.weeks)
            if progress:
                progress(i, len(chunks), totals.events)
        if not stopped:
            roll_months(db, holder, stop)
        weeks = [Week(w) for w in sorted(totals.weeks)]
        alerts = 0 if stopped else _evaluate_budgets(db, weeks)
    except BaseException:
        lease.release(db, holder, None)
        raise
    duration_ms = round((time.perf_counter() - t0) * 1000)
    stats = None if stopped else lease.RunStats(started_at, totals.events, duration_ms)
    lease.release(db, holder, stats)
    _observe(duration_ms)
    log.info(
        "roll-up: %d events in %d groups, weeks %s, %d alerts, %d ms",
        totals.events,
        totals.groups,
        ",".join(w.label for w in weeks) or "-",
        alerts,
        duration_ms,
    )
    return RollupResult(
        events_rolled_up=totals.events,
        weeks=weeks,
        alerts_fired=alerts,
        duration_ms=duration_ms,
        started_at=started_at,
        groups=totals.groups,
        chunks=len(chunks),
        stopped=stopped,
    )


def _evaluate_budgets(db: Database, weeks: list[Week]) -> int:
    """Budgets read the fresh roll-up. Their failure must not undo or fail the roll-up."""
    from meter.budgets.evaluate import evaluate_after_rollup

    try:
        return int(evaluate_after_rollup(db, weeks, datetime.now(UTC)))
    except Exception:
        log.exception("budget evaluation after the roll-up failed; it runs again next time")
        return 0


def _observe(duration_ms: int) -> None:
    """Feed Prometheus (the lag is read from rollup_state when /metrics is scraped)."""
    from meter.metrics import ROLLUP_DURATION

    ROLLUP_DURATION.observe(duration_ms / 1000)
