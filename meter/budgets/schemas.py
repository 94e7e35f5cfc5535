"""The API's budget and alert shapes. Money goes out as exact decimal strings (meter.money)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meter.budgets.rules import DEFAULT_THRESHOLDS, normalize_thresholds
from meter.budgets.url_policy import check_scheme
from meter.money import to_decimal, usd_to_units

Scope = Literal["team", "user", "global", "tag"]
Period = Literal["day", "week", "month"]


def parse_limit(value: object, field: str = "weekly_limit_usd") -> Decimal:
    """A limit: an exact, positive USD amount, given as a string (or an integer)."""
    d = to_decimal(value, field)
    if d <= 0:
        raise ValueError(f"{field}: must be greater than 0")
    usd_to_units(d, field)  # refuses more precision than 1e-12 USD
    return d


def check_subject(scope: str | None, subject: str | None) -> str | None:
    """team and user budgets name their subject, a tag budget its `key=value`; a global budget
    has none."""
    subject = subject.strip() if subject is not None else None
    if scope == "global":
        if subject:
            raise ValueError("subject: a global budget has no subject")
        return None
    if scope in ("team", "user") and not subject:
        raise ValueError(f"subject: a {scope} budget needs a subject (the {scope}'s name)")
    if scope == "tag" and (not subject or "=" not in subject or subject.startswith("=")):
        raise ValueError("subject: a tag budget needs key=value, e.g. feature=chat")
    if subject is not None and len(subject) > 200:
        raise ValueError("subject: at most 200 characters")
    if subject is not None and "\x00" in subject:
        raise ValueError("subject: must not contain NUL characters")
    return subject


class _BudgetFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("weekly_limit_usd", mode="before", check_fields=False)
    @classmethod
    def _limit(cls, value: object) -> object:
        return None if value is None else parse_limit(value)

    @field_validator("limit_usd", mode="before", check_fields=False)
    @classmethod
    def _period_limit(cls, value: object) -> object:
        return None if value is None else parse_limit(value, "limit_usd")

    @field_validator("thresholds", mode="before", check_fields=False)
    @classmethod
    def _thresholds(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise ValueError("thresholds: a list of ratios of the limit, e.g. [0.5, 0.8, 1.0]")
        try:
            return normalize_thresholds(value)
        except ValueError as exc:
            raise ValueError(f"thresholds: {exc}") from None

    @field_validator("webhook_url", check_fields=False)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if len(value) > 2000 or "\x00" in value:
            raise ValueError("webhook_url: at most 2000 characters, no NUL")
        return check_scheme(value)

    @field_validator("webhook_secret", check_fields=False)
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) > 500:
            raise ValueError("webhook_secret: at most 500 characters")
        return value


class BudgetCreate(_BudgetFields):
    scope: Scope
    subject: str | None = Field(default=None, validate_default=True)
    period: Period = "week"
    limit_usd: Decimal | None = None
    weekly_limit_usd: Decimal | None = None  # a week budget's limit_usd, as before periods
    thresholds: list[Decimal] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    enforce: bool = False

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_subject(info.data.get("scope"), value)

    @model_validator(mode="after")
    def _one_limit(self) -> BudgetCreate:
        self.limit_usd = resolve_limit(self.period, self.limit_usd, self.weekly_limit_usd)
        if self.period == "week":
            self.weekly_limit_usd = self.limit_usd
        return self


def resolve_limit(period: str, limit: Decimal | None, weekly: Decimal | None) -> Decimal:
    """limit_usd, or weekly_limit_usd for a week budget; both given must agree."""
    if weekly is not None and period != "week":
        raise ValueError(f"weekly_limit_usd: a {period} budget takes limit_usd")
    if limit is not None and weekly is not None and limit != weekly:
        raise ValueError("limit_usd: differs from weekly_limit_usd; give one of them")
    chosen = limit if limit is not None else weekly
    if chosen is None:
        raise ValueError("limit_usd (weekly_limit_usd for a week budget): required, in USD")
    return chosen


class BudgetPatch(_BudgetFields):
    """Only the fields sent change; `null` clears webhook_url or webhook_secret."""

    scope: Scope | None = None
    subject: str | None = None
    period: Period | None = None  # fixed at creation: only its current value is accepted
    limit_usd: Decimal | None = None
    weekly_limit_usd: Decimal | None = None
    thresholds: list[Decimal] | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    enforce: bool | None = None


class BudgetOut(BaseModel):
    id: int
    scope: Scope
    subject: str | None
    period: Period
    limit_usd: str
    weekly_limit_usd: str | None  # a week budget's limit; null for other periods
    thresholds: list[str]
    webhook_url: str | None
    has_webhook_secret: bool
    enforce: bool
    week: str | None  # the week spend_usd and ratio are for (this week), for week budgets
    period_label: str  # the period spend_usd and ratio are for (the current one)
    period_start: str
    spend_usd: str
    ratio: str
    created_at: str
    updated_at: str


class BudgetList(BaseModel):
    budgets: list[BudgetOut]


class TestDelivery(BaseModel):
    delivery_id: str
    delivered: bool
    status_code: int | None
    error: str | None


class DeliveryOut(BaseModel):
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None


class AlertOut(BaseModel):
    id: str
    budget_id: int
    type: str
    week: str | None  # week budgets' alerts; null for other periods
    week_start: str | None
    period: str  # the period's label: 2026-11-30, 2026-W49 or 2026-11
    period_start: str
    threshold: str | None
    spend_usd: str
    limit_usd: str
    projected_spend_usd: str | None
    fired_at: str
    delivery: DeliveryOut


class AlertList(BaseModel):
    alerts: list[AlertOut]


def field_error(field: str, message: str) -> dict[str, Any]:
    """One entry of a 422 body, in FastAPI's own shape, naming the field."""
    return {"loc": ["body", field], "msg": message, "type": "value_error"}
