"""The reports: validated inputs in, SPEC-shaped results out. The one code path for the numbers
behind `GET /v1/usage/weekly`, `/v1/reports/users/...`, `/v1/teams/.../summary`, the CLI and
the dashboard. "This week" is the week of now in the database's timezone."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from meter._exceptions import InvalidRequest
from meter.budgets import repository as budget_repo
from meter.budgets.rules import ratio
from meter.db.session import Database
from meter.events import format_timestamp
from meter.money import render_usd
from meter.reports import period_queries, queries
from meter.reports.queries import DIMENSIONS, Totals
from meter.reports.ranges import date_range
from meter.reports.schemas import (
    TeamBudget,
    TeamSummary,
    TeamWeek,
    TopUser,
    UserReport,
    UserReportLine,
    WeeklyUsage,
    WeeklyUsageRow,
)
from meter.rollup.lease import last_run_at
from meter.weeks import Week, now_utc, parse_week, week_of, weeks_back

DEFAULT_WEEKS = 12
MAX_WEEKS = 260
TOP_USERS = 10


def this_week(db: Database, now: datetime | None = None) -> Week:
    return week_of(now or now_utc(), db.tz)


def parse_week_param(value: str, field: str) -> Week:
    try:
        return parse_week(value.strip())
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}", field) from None


def parse_group_by(value: str | None) -> tuple[str, ...]:
    """`team,user` -> ("team", "user"); an empty value groups by week only."""
    if value is None:
        return DIMENSIONS
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise InvalidRequest(
            f"group_by: unknown dimension {unknown[0]!r}; use a comma-separated subset of "
            f"{','.join(DIMENSIONS)}",
            "group_by",
        )
    return tuple(d for d in DIMENSIONS if d in names)


def week_range(
    db: Database, first: str | None, last: str | None, now: datetime | None = None
) -> tuple[Week, Week]:
    """Inclusive `from`..`to`; by default the 12 weeks ending this week."""
    end = parse_week_param(last, "to") if last is not None else None
    start = parse_week_param(first, "from") if first is not None else None
    implicit_end = end is None
    if end is None:
        end = this_week(db, now)
    if start is None:
        start = weeks_back(end, DEFAULT_WEEKS)[0]
    if start > end:
        to = f"{end.label} (this week)" if implicit_end else end.label
        raise InvalidRequest(
            f"from: {start.label} is after to: {to}; the range is inclusive, oldest first",
            "from",
        )
    return start, end


def _costs(t: Totals) -> tuple[str | None, str | None, str | None]:
    """(input, output, total) rendered; None when every event counted is unpriced."""
    if t.all_unpriced:
        return None, None, None
    return render_usd(t.input_units), render_usd(t.output_units), render_usd(t.cost_units)


def rollup_as_of(conn: Connection) -> str | None:
    """When the roll-up last ran (RFC 3339 UTC), the `as_of` of every report; None: never."""
    moment = last_run_at(conn)
    return format_timestamp(moment) if moment is not None else None


def _blank_is_none(value: str | None) -> str | None:
    return value or None  # '' is how "no team" / "no user" is stored


def weekly_usage(
    db: Database,
    *,
    first: str | None = None,
    last: str | None = None,
    team: str | None = None,
    user: str | None = None,
    model: str | None = None,
    group_by: str | None = None,
    now: datetime | None = None,
) -> WeeklyUsage:
    dims = parse_group_by(group_by)
    start, end = week_range(db, first, last, now)
    with queries.reading(db) as conn:
        as_of = rollup_as_of(conn)
        found = queries.weekly_totals(
            conn, start.start, end.start, team=team, user=user, model=model, group_by=dims
        )
    rows = []
    for r in found:
        cost_in, cost_out, cost = _costs(r.totals)
        week = Week(r.week_start)
        rows.append(
            WeeklyUsageRow(
                week=week.label,
                week_start=week.start.isoformat(),
                team=_blank_is_none(r.team),
                user=_blank_is_none(r.user),
                model=r.model,
                requests=r.totals.requests,
                prompt_tokens=r.totals.prompt_tokens,
                completion_tokens=r.totals.completion_tokens,
                errors=r.totals.errors,
                estimated=r.totals.estimated,
                unpriced=r.totals.unpriced,
                input_cost_usd=cost_in,
                output_cost_usd=cost_out,
                cost_usd=cost,
            )
        )
    return WeeklyUsage(as_of=as_of, rows=rows)


def user_report(
    db: Database,
    user: str,
    *,
    week: str | None = None,
    day: str | None = None,
    month: str | None = None,
    first: str | None = None,
    last: str | None = None,
    team: str | None = None,
    now: datetime | None = None,
) -> UserReport:
    """A user's bill for a week (default this week), a day, a month or from/to local dates,
    per model, across teams (`team` limits it to one)."""
    span = date_range(
        db, day=day, week=week, month=month, first=first, last=last, default="week", now=now
    )
    target = span.window.week if span.window is not None else None
    with queries.reading(db) as conn:
        as_of = rollup_as_of(conn)
        if target is not None:
            found = queries.user_lines(conn, user, target.start, team)
        else:
            found = period_queries.user_lines(conn, user, span.first, span.last, team)
    lines = []
    priced = False
    total = 0
    for model, t in found:
        cost_in, cost_out, cost = _costs(t)
        lines.append(
            UserReportLine(
                model=model,
                requests=t.requests,
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                unpriced=t.unpriced,
                input_cost_usd=cost_in,
                output_cost_usd=cost_out,
                cost_usd=cost,
            )
        )
        if cost is not None:
            priced = True
            total += t.cost_units
    return UserReport(
        user=user,
        week=target.label if target else None,
        week_start=target.start.isoformat() if target else None,
        first=span.first.isoformat(),
        to=span.last.isoformat(),
        lines=lines,
        total_cost_usd=render_usd(total) if priced or not lines else None,
        as_of=as_of,
    )


def spend_ratio(spend_units: int, limit_units: int) -> str | None:
    """spend / limit, the same string the budgets API shows; None for a zero limit."""
    return ratio(spend_units, limit_units) if limit_units > 0 else None


def team_summary(
    db: Database, team: str, *, weeks: int = DEFAULT_WEEKS, now: datetime | None = None
) -> TeamSummary:
    if not 1 <= weeks <= MAX_WEEKS:
        raise InvalidRequest(f"weeks: must be between 1 and {MAX_WEEKS}, got {weeks}", "weeks")
    current = this_week(db, now)
    span = weeks_back(current, weeks)
    with queries.reading(db) as conn:
        as_of = rollup_as_of(conn)
        per_week = queries.team_weeks(conn, team, span[0].start, current.start)
        users = queries.team_users(conn, team, current.start)
        budgets = budget_repo.list_budgets(conn, team=team)
        spends = budget_repo.spend_now(conn, budgets, now or now_utc(), db.tz)
    week_rows = []
    for w in span:
        t = per_week.get(w.start, Totals())
        week_rows.append(
            TeamWeek(
                week=w.label,
                week_start=w.start.isoformat(),
                requests=t.requests,
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                cost_usd=_costs(t)[2] if t.requests else "0",
            )
        )
    users.sort(key=lambda u: (-u[1].cost_units, -u[1].requests, u[0]))
    top = [TopUser(user=_blank_is_none(u), cost_usd=_costs(t)[2]) for u, t in users[:TOP_USERS]]
    budget_rows = []
    for budget in budgets:
        window, spend = spends[budget.id]
        limit = render_usd(budget.limit_units) or "0"
        budget_rows.append(
            TeamBudget(
                id=budget.id,
                weekly_limit_usd=limit if budget.period == "week" else None,
                limit_usd=limit,
                period=window.label,
                period_start=window.start.isoformat(),
                spend_usd=render_usd(spend) or "0",
                ratio=spend_ratio(spend, budget.limit_units),
            )
        )
    return TeamSummary(team=team, as_of=as_of, weeks=week_rows, top_users=top, budgets=budget_rows)
