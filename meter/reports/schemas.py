"""The shapes of the reports (SPEC section 4), shared by the API, the CLI and the dashboard.

Money fields are plain decimal strings rendered by meter.money.render_usd; `None` where every
event of a row is unpriced (never shown as $0).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class WeeklyUsageRow(BaseModel):
    week: str = Field(examples=["2026-W48"])
    week_start: str = Field(examples=["2026-11-23"])
    team: str | None = Field(description="null when not grouped by team, or no team")
    user: str | None = Field(description="null when not grouped by user, or no user")
    model: str | None = Field(description="null when not grouped by model")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    estimated: int
    unpriced: int
    input_cost_usd: str | None = Field(examples=["0.00011"])
    output_cost_usd: str | None = Field(examples=["0.00019"])
    cost_usd: str | None = Field(examples=["0.0003"])


class WeeklyUsage(BaseModel):
    as_of: str | None = Field(description="when the roll-up last ran (RFC 3339), null before")
    rows: list[WeeklyUsageRow]


class UserReportLine(BaseModel):
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    unpriced: int
    input_cost_usd: str | None
    output_cost_usd: str | None
    cost_usd: str | None


class UserReport(BaseModel):
    user: str
    week: str
    week_start: str
    lines: list[UserReportLine]
    total_cost_usd: str | None
    as_of: str | None


class TeamWeek(BaseModel):
    week: str
    week_start: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: str | None


class TopUser(BaseModel):
    user: str | None
    cost_usd: str | None


class TeamBudget(BaseModel):
    id: int
    weekly_limit_usd: str
    spend_usd: str
    ratio: str | None = Field(description="spend / limit as a decimal string")


class TeamSummary(BaseModel):
    team: str
    as_of: str | None
    weeks: list[TeamWeek]
    top_users: list[TopUser]
    budgets: list[TeamBudget]
