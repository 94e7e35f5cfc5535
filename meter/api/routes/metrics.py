"""`GET /metrics`: Prometheus text exposition, no key needed (hence no team or user labels)."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

import sqlalchemy as sa
from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from meter.api.deps import DbDep, SettingsDep
from meter.db import models
from meter.metrics import SPOOL_DEPTH, observe_rollup_lag, spool_bytes

router = APIRouter(tags=["metrics"])
log = logging.getLogger("meter.api")


def _registry() -> CollectorRegistry:
    # Several uvicorn workers: each writes its samples to PROMETHEUS_MULTIPROC_DIR, and a
    # scrape, whichever worker answers it, aggregates them all.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(db: DbDep, settings: SettingsDep) -> Response:
    SPOOL_DEPTH.set(spool_bytes(settings.spool_dir))
    try:
        with db.engine.connect().execution_options(readonly=True) as conn:
            last_run = conn.execute(
                sa.select(sa.func.max(models.RollupState.last_run_at))
            ).scalar_one_or_none()
        observe_rollup_lag(last_run, datetime.now(UTC))
    except sa.exc.SQLAlchemyError as exc:
        # Monitoring must keep working when the database does not: that is when it matters.
        log.warning("metrics: cannot read the roll-up state: %s", exc.__class__.__name__)
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)
