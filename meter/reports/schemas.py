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
    model_config = {"populate_by_name": True}

    user: str
    week: str | None = Field(description="the week reported; null for a day, month or range")
    week_start: str | None
    first: str = Field(alias="from", description="first local date covered")
    to: str = Field(description="last local date covered, inclusive")
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
    weekly_limit_usd: str | None = Field(description="a week budget's limit; null for others")
    limit_usd: str
    period: str = Field(description="the current period's label: 2026-11-30, 2026-W49, 2026-11")
    period_start: str
    spend_usd: str
    ratio: str | None = Field(description="spend / limit as a decimal string")


class TeamSummary(BaseModel):
    team: str
    as_of: str | None
    weeks: list[TeamWeek]
    top_users: list[TopUser]
    budgets: list[TeamBudget]


class PeriodUsageRow(BaseModel):
    period: str = Field(examples=["2026-11-30", "2026-W49", "2026-11"])
    period_start: str = Field(examples=["2026-11-30"], description="its first local date")
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


class TaggedPeriodUsageRow(PeriodUsageRow):
    tags: dict[str, str | None] = Field(
        description="the grouped tag's value; null for events without that tag"
    )


class PeriodUsage(BaseModel):
    as_of: str | None = Field(description="when the roll-up last ran (RFC 3339), null before")
    period: str = Field(examples=["day"])
    rows: list[TaggedPeriodUsageRow] | list[PeriodUsageRow]


class BillingEntry(BaseModel):
    user: str | None = Field(description="null for events recorded without a user")
    team: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    unpriced: int
    cost_usd: str | None


class BillingReport(BaseModel):
    model_config = {"populate_by_name": True}

    first: str = Field(alias="from", examples=["2026-11-01"], description="first local date")
    to: str = Field(examples=["2026-11-30"], description="last local date, inclusive")
    timezone: str
    as_of: str | None
    users: list[BillingEntry]
    total_cost_usd: str
