"""The scheduled purge of `meter serve` (METER_RAW_RETENTION_DAYS, off by default)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.base import BaseScheduler

from meter.audit.actors import SCHEDULER
from meter.db.session import Database
from meter.rollup.lease import RollupBusy
from meter.settings import Settings

log = logging.getLogger("meter.retention")

PURGE_JOB_ID = "meter-purge"
INTERVAL = timedelta(hours=1)  # a local day ends every 24 hours; an hour's lag is nothing
FIRST_RUN_DELAY = timedelta(minutes=1)  # not in the way of the server's start


def purge_job(db: Database, days: int) -> None:
    """One scheduled purge; every server runs it, and whoever comes second finds nothing left."""
    from meter.lifecycle.retention import purge

    try:
        purge(db, days, actor=SCHEDULER)
    except RollupBusy:
        log.info("purge: the roll-up is busy; the next run purges")
    except Exception:  # logged, never raised: the next run tries again
        log.exception("purge failed; the next run tries again")


def add_purge_job(scheduler: BaseScheduler, db: Database, settings: Settings) -> None:
    days = settings.raw_retention_days
    if days is None:
        return
    scheduler.add_job(
        purge_job,
        "interval",
        args=(db, days),
        seconds=INTERVAL.total_seconds(),
        id=PURGE_JOB_ID,
        name=f"purge of raw events older than {days} days",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=int(INTERVAL.total_seconds()),
        next_run_time=datetime.now(UTC) + FIRST_RUN_DELAY,
    )
