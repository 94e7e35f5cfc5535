"""What each dashboard page shows, read through the same code as the API (meter.reports,
meter.budgets), so a number on the page is the number `GET /v1/...` answers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from markupsafe import Markup

from meter.budgets import repository as budget_repo
from meter.budgets.schemas import AlertOut
from meter.budgets.service import alert_view
from meter.dashboard.chart import Bar, budget_gauge, weekly_spend_chart
from meter.db.session import Database
from meter.money import render_usd, usd_to_units
from meter.periods import local_date, parse_period, window_at, window_of, windows_between
from meter.reports import team_summary, user_report, weekly_usage
from meter.reports.period_service import billing_report, usage
from meter.reports.ranges import parse_kind, parse_label
from meter.reports.reconciliation import Reconciliation, ReconciliationRow, reconciliation
from meter.reports.schemas import BillingReport, TeamSummary, TeamWeek, UserReport
from meter.reports.service import DEFAULT_WEEKS, this_week
from meter.weeks import now_utc, parse_week

RECENT_ALERTS = 10


@dataclass(frozen=True)
class BudgetView:
    id: int
    period: str  # day | week | month
    period_label: str  # the current period: what spend_usd is for
    limit_usd: str
    spend_usd: str
    ratio: str | None
    thresholds: list[str]
    enforce: bool
    has_webhook: bool
    gauge: Markup


@dataclass(frozen=True)
class ModelLine:
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: str | None


@dataclass(frozen=True)
class DayLine:
    day: str
    requests: int
    cost_usd: str | None


@dataclass(frozen=True)
class TeamPage:
    team: str
    summary: TeamSummary
    this_week: TeamWeek
    week_days: list[DayLine]  # this week, Monday to Sunday
    month_label: str
    month_days: list[DayLine]  # this month, its first day to today
    month_usd: str  # month to date, exact
    chart: Markup
    budgets: list[BudgetView]
    top_models: list[ModelLine]
    alerts: list[AlertOut]
    total_usd: str  # the chart's weeks together, exact


def _cost_key(usd: str | None) -> Decimal:
    return Decimal(usd) if usd is not None else Decimal(-1)  # unpriced sorts last


def visible_teams(db: Database, scoped_to: str | None, now: datetime | None = None) -> list[str]:
    """The teams a key may pick: its own, or every team with usage in the chart's weeks or a
    team budget."""
    if scoped_to is not None:
        return [scoped_to]
    usage = weekly_usage(db, group_by="team", now=now)
    teams = {row.team for row in usage.rows if row.team}
    with db.engine.connect() as conn:
        teams |= {b.subject for b in budget_repo.list_budgets(conn) if b.scope == "team"}
    return sorted(teams)


def team_page(db: Database, team: str, now: datetime | None = None) -> TeamPage:
    summary = team_summary(db, team, weeks=DEFAULT_WEEKS, now=now)
    current = summary.weeks[-1]
    chart = weekly_spend_chart(
        [
            Bar(
                week=w.week,
                week_start=date.fromisoformat(w.week_start),
                usd=w.cost_usd,
                current=w is current,
            )
            for w in summary.weeks
        ]
    )
    models = weekly_usage(
        db, first=current.week, last=current.week, team=team, group_by="model", now=now
    )
    top_models = sorted(
        (
            ModelLine(
                model=row.model or "",
                requests=row.requests,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                cost_usd=row.cost_usd,
            )
            for row in models.rows
        ),
        key=lambda m: (-_cost_key(m.cost_usd), -m.requests, m.model),
    )
    with db.engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        stored = {b.id: b for b in budget_repo.list_budgets(conn, team=team)}
        alerts = [
            alert_view(a) for a in budget_repo.list_alerts(conn, team=team, limit=RECENT_ALERTS)
        ]
    budgets = []
    for b in summary.budgets:
        row = stored.get(b.id)
        if row is None:  # deleted between the two reads
            continue
        thresholds = [format(t.normalize(), "f") for t in row.thresholds]
        budgets.append(
            BudgetView(
                id=b.id,
                period=row.period,
                period_label=b.period,
                limit_usd=b.limit_usd,
                spend_usd=b.spend_usd,
                ratio=b.ratio,
                thresholds=thresholds,
                enforce=row.enforce,
                has_webhook=bool(row.webhook_url),
                gauge=budget_gauge(b.spend_usd, b.limit_usd, thresholds),
            )
        )
    week_window = parse_period("week", current.week)
    today = local_date(now or now_utc(), db.tz)
    month = window_at("month", today)
    week_days = day_lines(db, team, week_window.start, week_window.last_day, now)
    month_days = day_lines(db, team, month.start, today, now)
    return TeamPage(
        team=team,
        summary=summary,
        this_week=current,
        week_days=week_days,
        month_label=month.label,
        month_days=month_days,
        month_usd=render_usd(sum(usd_to_units(Decimal(d.cost_usd or 0)) for d in month_days))
        or "0",
        chart=chart,
        budgets=budgets,
        top_models=top_models,
        alerts=alerts,
        total_usd=render_usd(sum(usd_to_units(Decimal(w.cost_usd or 0)) for w in summary.weeks))
        or "0",
    )


def day_lines(
    db: Database, team: str, first: date, last: date, now: datetime | None = None
) -> list[DayLine]:
    """A team's days first..last (local), empty days as zeros: `GET /v1/usage?period=day`."""
    found = usage(
        db, period="day", first=first.isoformat(), last=last.isoformat(), team=team,
        group_by="", now=now,
    ).rows  # fmt: skip
    by_day = {row.period: row for row in found}
    lines = []
    for window in windows_between(window_at("day", first), window_at("day", last)):
        row = by_day.get(window.label)
        lines.append(
            DayLine(window.label, row.requests, row.cost_usd)
            if row is not None
            else DayLine(window.label, 0, "0")
        )
    return lines


@dataclass(frozen=True)
class BillingPage:
    report: BillingReport
    month: str
    previous_month: str
    next_month: str | None  # None: the report is for this month (or later)


def billing_page(
    db: Database, month: str | None, team: str | None, now: datetime | None = None
) -> BillingPage:
    """Every user's bill for a month (`team`: what a team-scoped key may see)."""
    report, _ = billing_report(db, month=month, team=team, now=now)
    shown = window_at("month", date.fromisoformat(report.first))
    current = window_at("month", local_date(now or now_utc(), db.tz))
    return BillingPage(
        report=report,
        month=shown.label,
        previous_month=shown.previous().label,
        next_month=shown.next().label if shown < current else None,
    )


@dataclass(frozen=True)
class UserPage:
    report: UserReport
    previous_week: str
    next_week: str | None  # None: the report is for this week (or later)


def user_page(
    db: Database,
    user: str,
    week: str | None,
    team: str | None,
    now: datetime | None = None,
) -> UserPage:
    """A user's bill for a week by model (`team`: what a team-scoped key may see)."""
    report = user_report(db, user, week=week, team=team, now=now)
    assert report.week is not None  # a week was asked for
    shown = parse_week(report.week)
    current = this_week(db, now)
    return UserPage(
        report=report,
        previous_week=shown.previous().label,
        next_week=shown.next().label if shown < current else None,
    )


@dataclass(frozen=True)
class ReconciliationPage:
    report: Reconciliation  # the API's rows for one period
    period: str  # day | week | month
    label: str  # the period shown
    first_day: str
    last_day: str
    previous: str
    next: str | None  # None: the period shown is the current one (or later)
    cost_usd: str  # the rows together, exact
    provider_cost_usd: str
    drift_usd: str
    events_with_provider_cost: int
    lookups_pending: int
    drifting: list[ReconciliationRow]  # the models whose drift is not zero


def reconciliation_page(
    db: Database,
    period: str | None,
    at: str | None,
    team: str | None,
    now: datetime | None = None,
) -> ReconciliationPage:
    """meter's cost against the provider's, by model, for one day, week or month (default: the
    current week), as `GET /v1/reconciliation` answers it (`team`: what a team-scoped key sees)."""
    kind = parse_kind(period or "week")
    current = window_of(kind, now or now_utc(), db.tz)
    shown = parse_label(kind, at, "at") if at else current
    report = reconciliation(
        db, period=kind, first=shown.label, last=shown.label, team=team, now=now
    )

    def total(usd: list[str]) -> str:
        return render_usd(sum(usd_to_units(Decimal(u)) for u in usd)) or "0"

    rows = report.rows
    return ReconciliationPage(
        report=report,
        period=kind,
        label=shown.label,
        first_day=shown.start.isoformat(),
        last_day=shown.last_day.isoformat(),
        previous=shown.previous().label,
        next=shown.next().label if shown < current else None,
        cost_usd=total([r.cost_usd for r in rows]),
        provider_cost_usd=total([r.provider_cost_usd for r in rows]),
        drift_usd=total([r.drift_usd for r in rows]),
        events_with_provider_cost=sum(r.events_with_provider_cost for r in rows),
        lookups_pending=sum(r.lookups_pending for r in rows),
        drifting=[r for r in rows if Decimal(r.drift_usd) != 0],
    )
