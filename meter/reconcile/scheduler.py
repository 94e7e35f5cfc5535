"""The generation-lookup job of `meter serve`, in the same APScheduler 3 scheduler as the roll-up.

Each process has its own scheduler; the claims in `generation_lookups` (meter.reconcile.lookups)
keep two processes from looking up the same generation at once. Added only when
OPENROUTER_API_KEY is set: the upstream shows a generation only to the key that made it.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from meter.db.session import Database
from meter.reconcile.lookups import run_lookups, upstream_key
from meter.rollup.scheduler import add_stop_event
from meter.settings import Settings

log = logging.getLogger("meter.reconcile")

LOOKUP_JOB_ID = "meter-generation-lookups"


class LookupJob:
    """The scheduled callable: one run over the lookups due now."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.stop = threading.Event()
        self.runs = 0  # completed runs, for tests and logs

    def __call__(self) -> None:
        try:
            summary = run_lookups(self.db, self.settings, stop=self.stop)
        except Exception:
            # Logged, never raised: the next tick retries; the server keeps serving.
            log.exception("generation lookups failed; retrying at the next tick")
            return
        self.runs += 1
        if summary.reconciled or summary.unavailable:
            log.info(
                "generation lookups: %d reconciled, %d unavailable, %d still pending",
                summary.reconciled,
                summary.unavailable,
                summary.pending,
            )


def add_lookup_job(
    scheduler: BackgroundScheduler, db: Database, settings: Settings
) -> LookupJob | None:
    """Add the job (first run right after start), unless OPENROUTER_API_KEY is unset."""
    if upstream_key(settings) is None:
        return None
    job = LookupJob(db, settings)
    interval = settings.lookup_interval_seconds
    scheduler.add_job(
        job,
        "interval",
        seconds=interval,
        id=LOOKUP_JOB_ID,
        name="generation lookups",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=max(int(interval), 1) * 2,
        next_run_time=datetime.now(UTC),
    )
    add_stop_event(scheduler, job.stop)
    scheduler.meter_lookup_job = job
    return job
