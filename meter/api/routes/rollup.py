"""`POST /v1/rollup`: run a roll-up now, synchronously (admin)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from meter.api.auth import AdminPrincipal
from meter.api.deps import DbDep
from meter.rollup import RollupBusy, run_rollup

router = APIRouter(tags=["rollup"])

# SPEC: wait this long for a run in progress (any process), then 409.
WAIT_SECONDS = 30.0


class RollupRun(BaseModel):
    events_rolled_up: int = Field(description="events counted for the first time by this run")
    weeks: list[str] = Field(
        description="weeks whose totals were recomputed", examples=[["2026-W48"]]
    )
    alerts_fired: int
    duration_ms: int


@router.post(
    "/v1/rollup",
    response_model=RollupRun,
    responses={409: {"description": "another roll-up is still running after 30 s"}},
)
def rollup_now(db: DbDep, _admin: AdminPrincipal) -> RollupRun:
    """Roll up every event stored so far and evaluate budgets. A plain `def`: FastAPI runs it
    in its thread pool, so waiting for the lease never blocks the event loop."""
    try:
        result = run_rollup(db, wait_seconds=WAIT_SECONDS)
    except RollupBusy as exc:
        raise HTTPException(409, detail=str(exc)) from None
    return RollupRun(
        events_rolled_up=result.events_rolled_up,
        weeks=result.week_labels,
        alerts_fired=result.alerts_fired,
        duration_ms=result.duration_ms,
    )
