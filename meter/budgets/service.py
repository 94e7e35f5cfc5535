"""Budget operations shared by the API and the CLI. Services never commit: the caller's
transaction does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy.engine import Connection

from meter.budgets import repository as repo
from meter.budgets.delivery import RetryPolicy, new_client, send
from meter.budgets.evaluate import evaluate_current
from meter.budgets.payload import TEST, build_payload
from meter.budgets.rules import budget_window, ratio, threshold_key
from meter.budgets.schemas import (
    AlertOut,
    BudgetCreate,
    BudgetOut,
    BudgetPatch,
    DeliveryOut,
    TestDelivery,
    check_subject,
    parse_limit,
    resolve_limit,
)
from meter.budgets.url_policy import RefusedUrl, check_for_storage
from meter.events import format_timestamp
from meter.ids import uuid7
from meter.money import render_usd, usd_to_units
from meter.periods import Window, window_at
from meter.settings import Settings
from meter.weeks import Week, week_of


class BudgetInputError(ValueError):
    """Input the schema alone could not judge (it needs settings or the stored budget)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Clock:
    now: datetime
    tz: ZoneInfo

    @property
    def week(self) -> Week:
        return week_of(self.now, self.tz)


def _stored_url(url: str | None, settings: Settings) -> str | None:
    if url is None:
        return None
    try:
        return check_for_storage(url, settings)
    except RefusedUrl as exc:
        raise BudgetInputError("webhook_url", str(exc)) from None


def _check_tag(conn: Connection, scope: str, subject: str | None) -> None:
    """A tag budget counts a rolled-up key: its spend is read from the tag roll-up."""
    if scope != "tag" or not subject:
        return
    from meter.tags.repository import list_keys

    key = subject.partition("=")[0]
    if key not in list_keys(conn):
        raise BudgetInputError(
            "subject",
            f"subject: tag key {key!r} is not rolled up; add it first with `meter tags add {key}`",
        )


def create_budget(conn: Connection, data: BudgetCreate, settings: Settings, clock: Clock) -> int:
    """Store a budget and judge its current period's spend against it at once (it may already
    be over)."""
    assert data.limit_usd is not None  # BudgetCreate resolves it
    _check_tag(conn, data.scope, data.subject)
    budget_id = repo.insert_budget(
        conn,
        {
            "scope": data.scope,
            "subject": data.subject or "",
            "period": data.period,
            "weekly_limit_units": usd_to_units(data.limit_usd, "limit_usd"),
            "thresholds": [threshold_key(t) for t in data.thresholds],
            "webhook_url": _stored_url(data.webhook_url, settings),
            "webhook_secret": data.webhook_secret.get_secret_value()
            if data.webhook_secret
            else None,
            "enforce": data.enforce,
            "created_at": clock.now,
            "updated_at": clock.now,
        },
    )
    _evaluate_now(conn, budget_id, clock)
    return budget_id


def update_budget(
    conn: Connection, budget_id: int, patch: BudgetPatch, settings: Settings, clock: Clock
) -> bool:
    """Apply the fields sent; False if there is no such budget.

    A changed limit or thresholds is judged against this week's spend at once. Thresholds that
    already fired this week stay fired (each (budget, week, threshold) fires once), even if a
    raised limit puts spend back under them; the others fire when spend crosses them under the
    new limit.
    """
    current = repo.get_budget(conn, budget_id)
    if current is None:
        return False
    sent = patch.model_fields_set
    values: dict[str, object] = {"updated_at": clock.now}
    scope = patch.scope if "scope" in sent and patch.scope else current.scope
    subject = patch.subject if "subject" in sent else (current.subject or None)
    if "scope" in sent and patch.scope is None:
        raise BudgetInputError("scope", "scope: must be team, user, global or tag")
    if "period" in sent and patch.period != current.period:
        raise BudgetInputError(
            "period",
            f"period: a budget's period is fixed at creation (this one is {current.period}); "
            "create another budget for another period",
        )
    try:
        subject = check_subject(scope, subject)
    except ValueError as exc:
        raise BudgetInputError("subject", str(exc)) from None
    if "scope" in sent or "subject" in sent:
        _check_tag(conn, scope, subject)
    values["scope"], values["subject"] = scope, subject or ""
    for field in ("limit_usd", "weekly_limit_usd"):
        if field in sent and getattr(patch, field) is None:
            raise BudgetInputError(field, f"{field}: cannot be null")
    if "limit_usd" in sent or "weekly_limit_usd" in sent:
        try:
            limit = resolve_limit(current.period, patch.limit_usd, patch.weekly_limit_usd)
        except ValueError as exc:
            field = str(exc).partition(":")[0].split(" ")[0]
            raise BudgetInputError(field, str(exc)) from None
        values["weekly_limit_units"] = usd_to_units(parse_limit(limit, "limit_usd"), "limit_usd")
    if "thresholds" in sent:
        if patch.thresholds is None:
            raise BudgetInputError("thresholds", "thresholds: cannot be null (use [])")
        values["thresholds"] = [threshold_key(t) for t in patch.thresholds]
    if "webhook_url" in sent:
        values["webhook_url"] = _stored_url(patch.webhook_url, settings)
    if "webhook_secret" in sent:
        secret = patch.webhook_secret
        values["webhook_secret"] = secret.get_secret_value() if secret else None
    if "enforce" in sent:
        if patch.enforce is None:
            raise BudgetInputError("enforce", "enforce: must be true or false")
        values["enforce"] = patch.enforce
    repo.update_budget(conn, budget_id, values)
    _evaluate_now(conn, budget_id, clock)
    return True


def _evaluate_now(conn: Connection, budget_id: int, clock: Clock) -> None:
    budget = repo.get_budget(conn, budget_id)
    if budget is not None:
        evaluate_current(conn, clock.tz, clock.now, [budget])


def budget_view(budget: repo.BudgetRow, spend_units: int, window: Window) -> BudgetOut:
    limit = render_usd(budget.limit_units) or "0"
    week = window.week
    return BudgetOut(
        id=budget.id,
        scope=budget.scope,  # type: ignore[arg-type]
        subject=budget.subject or None,
        period=budget.period,  # type: ignore[arg-type]
        limit_usd=limit,
        weekly_limit_usd=limit if budget.period == "week" else None,
        thresholds=[threshold_key(t) for t in budget.thresholds],
        webhook_url=budget.webhook_url,
        has_webhook_secret=budget.has_webhook_secret,
        enforce=budget.enforce,
        week=week.label if week else None,
        period_label=window.label,
        period_start=window.start.isoformat(),
        spend_usd=render_usd(spend_units) or "0",
        ratio=ratio(spend_units, budget.limit_units),
        created_at=format_timestamp(budget.created_at),
        updated_at=format_timestamp(budget.updated_at),
    )


def budget_views(conn: Connection, budgets: list[repo.BudgetRow], clock: Clock) -> list[BudgetOut]:
    """Budgets with their current period's spend, read from the roll-up."""
    spends = repo.spend_now(conn, budgets, clock.now, clock.tz)
    return [budget_view(b, spends[b.id][1], spends[b.id][0]) for b in budgets]


def alert_view(alert: repo.AlertRow) -> AlertOut:
    # Amounts as sent: the payload holds them exactly (the int64 columns saturate at $9.2M).
    sent = json.loads(alert.payload) if alert.payload else {}
    window = window_at(alert.period, alert.week_start)  # type: ignore[arg-type]
    week = window.week
    return AlertOut(
        id=alert.id,
        budget_id=alert.budget_id,
        type=alert.type,
        week=week.label if week else None,
        week_start=week.start.isoformat() if week else None,
        period=window.label,
        period_start=window.start.isoformat(),
        threshold=alert.threshold or None,
        spend_usd=sent.get("spend_usd") or render_usd(alert.spend_units) or "0",
        limit_usd=sent.get("limit_usd") or render_usd(alert.limit_units) or "0",
        projected_spend_usd=sent.get("projected_spend_usd") or render_usd(alert.projected_units),
        fired_at=format_timestamp(alert.fired_at),
        delivery=DeliveryOut(
            status=alert.delivery_status,  # type: ignore[arg-type]
            attempts=alert.attempts,
            last_error=alert.last_error,
        ),
    )


def test_delivery(
    budget: repo.BudgetRow,
    spend_units: int,
    settings: Settings,
    clock: Clock,
    client: httpx.Client | None = None,
) -> TestDelivery:
    """Send a signed `budget.test` delivery now, outside the outbox (nothing is stored)."""
    if not budget.webhook_url:
        raise BudgetInputError("webhook_url", "webhook_url: this budget has no webhook to test")
    delivery_id = str(uuid7())
    body = build_payload(
        type=TEST,
        alert_id=delivery_id,
        budget=budget,
        window=budget_window(budget, clock.now, clock.tz),
        threshold=None,
        limit_units=budget.limit_units,
        spend_units=spend_units,
        fired_at=clock.now,
    ).encode("utf-8")
    own = client is None
    http = client or new_client(RetryPolicy())
    try:
        result = send(http, settings, budget.webhook_url, delivery_id, body, budget.webhook_secret)
    finally:
        if own:
            http.close()
    return TestDelivery(
        delivery_id=delivery_id,
        delivered=result.ok,
        status_code=result.status_code,
        error=result.error,
    )
