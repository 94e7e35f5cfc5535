"""Routes for alerts: what fired, and the state of each webhook delivery."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from meter import audit
from meter.api.auth import AdminPrincipal, ReadPrincipal
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.api.routes.budgets import visible_budget
from meter.budgets import repository as repo
from meter.budgets.audit import alert_details
from meter.budgets.schemas import AlertList, AlertOut
from meter.budgets.service import alert_view
from meter.periods import parse_any_period
from meter.weeks import parse_week

router = APIRouter(prefix="/v1", tags=["alerts"])


@router.get("/alerts", response_model=AlertList)
def list_alerts(
    principal: ReadPrincipal,
    db: DbDep,
    budget_id: int | None = None,
    week: Annotated[str | None, Query(description="YYYY-Www")] = None,
    period: Annotated[
        str | None,
        Query(
            description="a period's label: 2026-11-30 (day budgets' alerts), 2026-W49 (week) "
            "or 2026-11 (month)"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AlertList:
    """Alerts, newest first; a team-scoped key sees its team's budgets' alerts only."""
    week_start = None
    if week is not None:
        try:
            week_start = parse_week(week).start
        except ValueError as exc:
            raise invalid(("query", "week"), str(exc)) from None
    window = None
    if period is not None:
        try:
            window = parse_any_period(period)
        except ValueError as exc:
            raise invalid(("query", "period"), str(exc)) from None
    with db.engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        if budget_id is not None and principal.team is not None:
            visible_budget(conn, budget_id, principal)
        alerts = repo.list_alerts(
            conn,
            budget_id=budget_id,
            week_start=week_start,
            period=(window.kind, window.start) if window is not None else None,
            team=principal.team,
            limit=limit,
        )
    return AlertList(alerts=[alert_view(a) for a in alerts])


@router.post("/alerts/{alert_id}/redeliver", response_model=AlertOut)
def redeliver(alert_id: str, admin: AdminPrincipal, db: DbDep) -> AlertOut:
    """Queue a failed delivery again, with a fresh set of attempts."""
    with db.engine.begin() as conn:
        alert = repo.get_alert(conn, alert_id)
        if alert is None:
            raise HTTPException(404, detail=f"no alert {alert_id}")
        if not repo.requeue_failed(conn, alert_id, datetime.now(UTC)):
            raise HTTPException(
                409,
                detail=f"alert {alert_id} is {alert.delivery_status}: only a failed one can be "
                "redelivered",
            )
        requeued = repo.get_alert(conn, alert_id)
        audit.record(
            conn,
            audit.actor_of(admin),
            "alert.redeliver",
            f"alert:{alert_id}",
            alert_details(alert),
        )
    assert requeued is not None
    return alert_view(requeued)
