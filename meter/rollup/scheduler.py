"""The in-process roll-up job: an APScheduler 3 BackgroundScheduler started by `meter serve`.

Each process has its own scheduler (`max_instances` and `coalesce` are per process); the
database lease (meter.rollup.lease) is what keeps runs of different processes apart. The job
runs in the scheduler's thread pool, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from meter.db.session import Database
from meter.rollup.engine import run_rollup
from meter.rollup.lease import RollupBusy

log = logging.getLogger("meter.rollup")

ROLLUP_JOB_ID = "meter-rollup"


class RollupJob:
    """The scheduled callable. A busy lease means another process is rolling up: skip."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.stop = threading.Event()
        self.runs = 0  # completed runs, for tests and logs

    def __call__(self) -> None:
        try:
            run_rollup(self.db, wait_seconds=0, stop=self.stop)
        except RollupBusy as exc:
            log.debug("scheduled roll-up skipped: %s", exc)
        except Exception:
            # Logged, never raised: the next tick retries; the server keeps serving.
            log.exception("scheduled roll-up failed; retrying at the next tick")
        else:
            self.runs += 1


def build_scheduler(db: Database, interval_seconds: float) -> BackgroundScheduler:
    """A scheduler (not started) with the roll-up job, first run right after start."""
    scheduler = BackgroundScheduler(timezone=UTC)
    job = RollupJob(db)
    scheduler.add_job(
        job,
        "interval",
        seconds=interval_seconds,
        id=ROLLUP_JOB_ID,
        name="weekly roll-up",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=max(int(interval_seconds), 1) * 2,
        next_run_time=datetime.now(UTC),
    )
    scheduler.meter_rollup_job = job
    add_stop_event(scheduler, job.stop)  # so shutdown can ask a long run to stop between chunks
    return scheduler


def add_stop_event(scheduler: BackgroundScheduler, stop: threading.Event) -> None:
    """Register a job's stop flag: set at shutdown so a long run ends early, cleared at start.
    Other jobs of `meter serve` (meter.reconcile's lookups) share this scheduler."""
    events: list[threading.Event] = getattr(scheduler, "meter_stop_events", [])
    events.append(stop)
    scheduler.meter_stop_events = events


def start_scheduler(scheduler: BackgroundScheduler) -> None:
    for stop in getattr(scheduler, "meter_stop_events", []):
        stop.clear()
    if not scheduler.running:
        scheduler.start()


def stop_scheduler(scheduler: BackgroundScheduler) -> None:
    """Ask running jobs to stop (a roll-up after its current chunk), then wait for them."""
    for stop in getattr(scheduler, "meter_stop_events", []):
        stop.set()
    if scheduler.running:
        scheduler.shutdown(wait=True)
