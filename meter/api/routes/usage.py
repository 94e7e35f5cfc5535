"""`GET /v1/usage` (by day, week or month, and a tag) and `GET /v1/usage/weekly`: roll-up
totals by period and by team, user and model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from meter._exceptions import InvalidRequest
from meter.api.auth import ReadPrincipal, scoped_team
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.reports import weekly_usage
from meter.reports.period_service import usage
from meter.reports.schemas import PeriodUsage, WeeklyUsage

router = APIRouter(tags=["reports"])


class WeeklyUsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    first: str | None = Field(
        None,
        alias="from",
        description="first week, YYYY-Www (default: 11 weeks before `to`)",
        examples=["2026-W37"],
    )
    to: str | None = Field(
        None, description="last week, inclusive (default: this week)", examples=["2026-W48"]
    )
    team: str | None = None
    user: str | None = None
    model: str | None = None
    group_by: str | None = Field(
        None,
        description="comma-separated subset of team,user,model (default: all three)",
        examples=["team,model"],
    )


def query_error(exc: InvalidRequest) -> Exception:
    """A report's bad parameter as the API's 422, naming the query parameter."""
    field = exc.param or "query"
    message = str(exc).removeprefix(f"{field}: ")  # the 422 names the field itself
    return invalid(("query", field), message)


@router.get("/v1/usage/weekly", response_model=WeeklyUsage)
def get_weekly_usage(
    db: DbDep, principal: ReadPrincipal, q: Annotated[WeeklyUsageQuery, Query()]
) -> WeeklyUsage:
    """Totals per week (empty weeks omitted) grouped by `group_by`; dimensions not grouped
    are null. Money is exact, as decimal strings; cost is null when every event is unpriced."""
    team = scoped_team(principal, q.team)
    try:
        return weekly_usage(
            db,
            first=q.first,
            last=q.to,
            team=team,
            user=q.user,
            model=q.model,
            group_by=q.group_by,
        )
    except InvalidRequest as exc:
        raise query_error(exc) from None


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    period: str | None = Field(None, description="day, week or month (default day)")
    first: str | None = Field(
        None,
        alias="from",
        description="first period, a label of the period's kind: 2026-11-30, 2026-W49, 2026-11 "
        "(default: 31 days, 12 weeks or 12 months before `to`)",
    )
    to: str | None = Field(None, description="last period, inclusive (default: the current one)")
    team: str | None = None
    user: str | None = None
    model: str | None = None
    group_by: str | None = Field(
        None,
        description="comma-separated subset of team,user,model (default: all three), plus at "
        "most one tag:<key> of a rolled-up tag key",
        examples=["team,tag:feature"],
    )


@router.get("/v1/usage", response_model=PeriodUsage)
def get_usage(
    db: DbDep, principal: ReadPrincipal, q: Annotated[UsageQuery, Query()]
) -> PeriodUsage:
    """Totals per local day, ISO week or calendar month (empty periods omitted), grouped by
    `group_by`; a `tag:<key>` group adds `tags: {key: value}`, null for events without it, so
    that tag rows sum to the totals. Money is exact, as decimal strings."""
    team = scoped_team(principal, q.team)
    try:
        return usage(
            db,
            period=q.period,
            first=q.first,
            last=q.to,
            team=team,
            user=q.user,
            model=q.model,
            group_by=q.group_by,
        )
    except InvalidRequest as exc:
        raise query_error(exc) from None
