"""The scheduled price check of `meter serve` (METER_PRICE_SYNC_INTERVAL_SECONDS, off by
default): it logs the difference with the upstream's catalogue and never applies it; a person
reviews it and runs `meter prices sync --apply` (or `POST /v1/prices/sync`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.base import BaseScheduler

from meter.db.session import Database
from meter.price_sync.diff import PriceDiff
from meter.price_sync.service import plan
from meter.price_sync.upstream import fetch_catalogue
from meter.settings import Settings

log = logging.getLogger("meter.prices")

PRICE_CHECK_JOB_ID = "meter-price-check"
FIRST_RUN_DELAY_S = 10.0  # not in the way of the server's start


def check_prices(db: Database, settings: Settings) -> PriceDiff | None:
    """One check: log the difference (a warning when there is something to apply)."""
    try:
        catalogue = fetch_catalogue(settings)
        with db.engine.connect().execution_options(readonly=True) as conn:
            diff = plan(conn, catalogue, datetime.now(UTC))
    except Exception as exc:  # logged, never raised: the next tick tries again
        log.warning("price check: %s", exc)
        return None
    summary = (
        f"price check: {len(diff.new)} new, {len(diff.changed)} changed, {diff.unchanged} "
        f"unchanged, {len(diff.skipped)} skipped, {len(diff.gone)} no longer listed"
    )
    if not diff.has_changes:
        log.info(summary)
        return diff
    models = [e.model for e in diff.new] + [c.entry.model for c in diff.changed]
    shown = ", ".join(models[:20]) + (f" and {len(models) - 20} more" if len(models) > 20 else "")
    log.warning(
        "%s; review with `meter prices sync`, apply with `meter prices sync --apply`: %s",
        summary,
        shown,
    )
    return diff


def add_price_check(scheduler: BaseScheduler, db: Database, settings: Settings) -> None:
    interval = settings.price_sync_interval_seconds
    if not interval:
        return
    scheduler.add_job(
        check_prices,
        "interval",
        args=(db, settings),
        seconds=interval,
        id=PRICE_CHECK_JOB_ID,
        name="price check against the upstream catalogue",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=max(int(interval), 1) * 2,
        next_run_time=datetime.now(UTC) + timedelta(seconds=min(FIRST_RUN_DELAY_S, interval)),
    )
