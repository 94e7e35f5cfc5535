"""`GET /v1/teams/{team}/summary`: a team's weeks, top users this week and budgets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from meter.api.auth import ReadPrincipal, scoped_team
from meter.api.deps import DbDep
from meter.reports import team_summary
from meter.reports.schemas import TeamSummary
from meter.reports.service import DEFAULT_WEEKS, MAX_WEEKS

router = APIRouter(tags=["reports"])


class TeamSummaryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weeks: int = Field(
        DEFAULT_WEEKS, ge=1, le=MAX_WEEKS, description="how many weeks, ending this week"
    )


@router.get("/v1/teams/{team:path}/summary", response_model=TeamSummary)
def get_team_summary(
    team: str, db: DbDep, principal: ReadPrincipal, q: Annotated[TeamSummaryQuery, Query()]
) -> TeamSummary:
    """Weeks oldest first (empty weeks as zeros), the top 10 users of this week by cost, and
    the team's budgets with this week's spend."""
    scoped = scoped_team(principal, team)
    assert scoped is not None
    return team_summary(db, scoped, weeks=q.weeks)
