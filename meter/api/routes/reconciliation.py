"""`GET /v1/reconciliation`: meter's cost against the provider's per period and model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from meter._exceptions import InvalidRequest
from meter.api.auth import ReadPrincipal, scoped_team
from meter.api.deps import DbDep
from meter.api.routes.usage import query_error
from meter.reports.reconciliation import Reconciliation, reconciliation

router = APIRouter(tags=["reports"])


class ReconciliationQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    period: str | None = Field(None, description="day, week or month (default week)")
    first: str | None = Field(
        None, alias="from", description="first period, a label of the period's kind"
    )
    to: str | None = Field(None, description="last period, inclusive (default: the current one)")


@router.get("/v1/reconciliation", response_model=Reconciliation)
def get_reconciliation(
    db: DbDep, principal: ReadPrincipal, q: Annotated[ReconciliationQuery, Query()]
) -> Reconciliation:
    """Per period and model: meter's cost of the events that carry a provider cost, the sum of
    those provider costs, and the drift between them; estimated and reconciled events and the
    generation lookups still pending. Read from the roll-up; money as exact decimal strings.
    A team-scoped key sees its own team's events only."""
    try:
        return reconciliation(
            db,
            period=q.period or "week",
            first=q.first,
            last=q.to,
            team=scoped_team(principal, None),
        )
    except InvalidRequest as exc:
        raise query_error(exc) from None
