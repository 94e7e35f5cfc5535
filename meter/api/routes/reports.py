"""`GET /v1/reports/users/{user}`: one user's bill for a week, as JSON or CSV."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from meter._exceptions import InvalidRequest
from meter.api.auth import ReadPrincipal
from meter.api.deps import DbDep
from meter.api.routes.usage import query_error
from meter.reports import user_report
from meter.reports.csv_export import user_report_csv
from meter.reports.schemas import UserReport

router = APIRouter(tags=["reports"])


class UserReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    week: str | None = Field(None, description="YYYY-Www (default: this week)")
    format: Literal["json", "csv"] = Field("json", description="csv: the lines, header first")


@router.get(
    # `:path`: user ids may contain `/` (e.g. "org/alice").
    "/v1/reports/users/{user:path}",
    response_model=UserReport,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def get_user_report(
    user: str, db: DbDep, principal: ReadPrincipal, q: Annotated[UserReportQuery, Query()]
) -> UserReport | Response:
    """Per-model lines across the user's teams (a team-scoped key sees its team's rows only)."""
    try:
        report = user_report(db, user, week=q.week, team=principal.team)
    except InvalidRequest as exc:
        raise query_error(exc) from None
    if q.format == "csv":
        return Response(user_report_csv(report), media_type="text/csv; charset=utf-8")
    return report
