"""`GET /v1/reports/users/{user}` (a user's bill for a week, day, month or dates) and
`GET /v1/reports/billing` (every user's bill), as JSON or CSV."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from meter._exceptions import InvalidRequest
from meter.api.auth import ReadPrincipal, scoped_team
from meter.api.deps import DbDep
from meter.api.routes.usage import query_error
from meter.reports import user_report
from meter.reports.csv_export import billing_csv, user_report_csv
from meter.reports.period_service import billing_lines, billing_report
from meter.reports.schemas import BillingReport, UserReport

router = APIRouter(tags=["reports"])


class UserReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    week: str | None = Field(None, description="YYYY-Www (default: this week)")
    day: str | None = Field(None, description="a local date, YYYY-MM-DD")
    month: str | None = Field(None, description="YYYY-MM")
    first: str | None = Field(None, alias="from", description="first local date (with `to`)")
    to: str | None = Field(None, description="last local date, inclusive")
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
        report = user_report(
            db,
            user,
            week=q.week,
            day=q.day,
            month=q.month,
            first=q.first,
            last=q.to,
            team=principal.team,
        )
    except InvalidRequest as exc:
        raise query_error(exc) from None
    if q.format == "csv":
        return Response(user_report_csv(report), media_type="text/csv; charset=utf-8")
    return report


class BillingQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    month: str | None = Field(None, description="YYYY-MM (default: this month)")
    week: str | None = Field(None, description="YYYY-Www")
    first: str | None = Field(None, alias="from", description="first local date (with `to`)")
    to: str | None = Field(None, description="last local date, inclusive")
    team: str | None = None
    format: Literal["json", "csv"] = Field(
        "json", description="csv: one line per (team, user, model), header first"
    )


@router.get(
    "/v1/reports/billing",
    response_model=BillingReport,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def get_billing_report(
    db: DbDep, principal: ReadPrincipal, q: Annotated[BillingQuery, Query()]
) -> BillingReport | Response:
    """Every (user, team)'s bill for a month, a week or local dates, most expensive first;
    exact money (a team-scoped key sees its team)."""
    team = scoped_team(principal, q.team)
    try:
        if q.format == "csv":  # the lines alone: no entries to build
            bill = billing_lines(
                db, month=q.month, week=q.week, first=q.first, last=q.to, team=team
            )
            return Response(billing_csv(bill), media_type="text/csv; charset=utf-8")
        report, _ = billing_report(
            db, month=q.month, week=q.week, first=q.first, last=q.to, team=team
        )
    except InvalidRequest as exc:
        raise query_error(exc) from None
    # Serialized once, here: returned as a model, FastAPI would validate its ~1,000 entries
    # again on the way out (the response model still documents the shape).
    return Response(report.model_dump_json(by_alias=True), media_type="application/json")
