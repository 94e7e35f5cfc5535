"""`meter report user|team`: the API's reports in the terminal (rich tables, JSON or CSV).

The numbers come from meter.reports, the same code path as the API; `--format json` prints
exactly the API's JSON.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from meter._exceptions import InvalidRequest
from meter.cli._app import app, console, database, fail, friendly_errors

if TYPE_CHECKING:
    from pydantic import BaseModel

report_app = typer.Typer(
    help="Per-user bills and team summaries from the weekly roll-up.", no_args_is_help=True
)
app.add_typer(report_app, name="report")

UNPRICED = "unpriced"


def _option_error(exc: InvalidRequest) -> typer.Exit:
    field = exc.param or "value"
    return fail(f"--{field}: {str(exc).removeprefix(f'{field}: ')}")


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise fail(f"{option}: must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _print_json(model: BaseModel) -> None:
    typer.echo(
        json.dumps(model.model_dump(mode="json", by_alias=True), indent=2, ensure_ascii=False)
    )


def _table(title: str, caption: str | None, *columns: str) -> Table:
    """Numbers right-aligned; on a narrow terminal cells wrap, never end in an ellipsis
    (a truncated amount of money would be a wrong one)."""
    table = Table(title=title, caption=caption)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    return table


def _usd(value: str | None) -> str:
    return UNPRICED if value is None else f"${value}"


@report_app.command("user")
@friendly_errors
def user_cmd(
    user: str = typer.Argument(..., help="The user id, as recorded (may contain '/')."),
    week: str | None = typer.Option(None, help="YYYY-Www, e.g. 2026-W48 (default: this week)."),
    day: str | None = typer.Option(None, help="A local date, YYYY-MM-DD."),
    month: str | None = typer.Option(None, help="YYYY-MM, e.g. 2026-11."),
    first: str | None = typer.Option(None, "--from", help="First local date (with --to)."),
    last: str | None = typer.Option(None, "--to", help="Last local date, inclusive."),
    fmt: str = typer.Option("table", "--format", help="table, json (the API's) or csv."),
) -> None:
    """One user's bill for a week, day, month or dates: one line per model, across teams."""
    from meter.reports import user_report
    from meter.reports.csv_export import user_report_csv

    _choice("--format", fmt, ("table", "json", "csv"))
    db = database()
    try:
        report = user_report(db, user, week=week, day=day, month=month, first=first, last=last)
    except InvalidRequest as exc:
        raise _option_error(exc) from None
    finally:
        db.dispose()
    if fmt == "json":
        _print_json(report)
        return
    if fmt == "csv":
        typer.echo(user_report_csv(report), nl=False)
        return
    table = _table(
        f"{report.user}: {report.week} (week of {report.week_start})"
        if report.week
        else f"{report.user}: {report.first} to {report.to}",
        f"roll-up as of {report.as_of or 'never: run `meter rollup`'}",
        "model", "requests", "prompt tok", "completion tok", "unpriced", "input", "output",
        "cost",
    )  # fmt: skip
    for line in report.lines:
        table.add_row(
            line.model,
            f"{line.requests:,}",
            f"{line.prompt_tokens:,}",
            f"{line.completion_tokens:,}",
            f"{line.unpriced:,}",
            _usd(line.input_cost_usd),
            _usd(line.output_cost_usd),
            _usd(line.cost_usd),
        )
    table.add_section()
    table.add_row("total", "", "", "", "", "", "", _usd(report.total_cost_usd))
    console.print(table)


@report_app.command("team")
@friendly_errors
def team_cmd(
    team: str = typer.Argument(..., help="The team, as recorded."),
    weeks: int = typer.Option(12, help="How many weeks, ending this week (1 to 260)."),
    fmt: str = typer.Option("table", "--format", help="table or json (the API's)."),
) -> None:
    """A team's weekly totals, this week's top users and its budgets."""
    from meter.reports import team_summary

    _choice("--format", fmt, ("table", "json"))
    db = database()
    try:
        summary = team_summary(db, team, weeks=weeks)
    except InvalidRequest as exc:
        raise _option_error(exc) from None
    finally:
        db.dispose()
    if fmt == "json":
        _print_json(summary)
        return
    as_of = summary.as_of or "never: run `meter rollup`"
    table = _table(
        f"team {summary.team}: last {len(summary.weeks)} weeks",
        f"roll-up as of {as_of}",
        "week", "week start", "requests", "prompt tok", "completion tok", "cost",
    )  # fmt: skip
    for w in summary.weeks:
        table.add_row(
            w.week,
            w.week_start,
            f"{w.requests:,}",
            f"{w.prompt_tokens:,}",
            f"{w.completion_tokens:,}",
            _usd(w.cost_usd),
        )
    console.print(table)
    if summary.top_users:
        top = _table("top users this week", None, "user", "cost")
        for u in summary.top_users:
            top.add_row(u.user or "(no user)", _usd(u.cost_usd))
        console.print(top)
    if summary.budgets:
        budgets = _table("budgets", None, "budget", "weekly limit", "spent this week", "ratio")
        for b in summary.budgets:
            budgets.add_row(str(b.id), f"${b.weekly_limit_usd}", f"${b.spend_usd}", b.ratio or "-")
        console.print(budgets)


@report_app.command("billing")
@friendly_errors
def billing_cmd(
    month: str | None = typer.Option(None, help="YYYY-MM (default: this month)."),
    week: str | None = typer.Option(None, help="YYYY-Www."),
    first: str | None = typer.Option(None, "--from", help="First local date (with --to)."),
    last: str | None = typer.Option(None, "--to", help="Last local date, inclusive."),
    team: str | None = typer.Option(None, help="Only this team."),
    fmt: str = typer.Option("table", "--format", help="table, json (the API's) or csv."),
) -> None:
    """Every user's bill for a month, a week or dates, most expensive first; exact money."""
    from meter.reports.csv_export import billing_csv
    from meter.reports.period_service import billing_lines, billing_report

    _choice("--format", fmt, ("table", "json", "csv"))
    db = database()
    try:
        if fmt == "csv":
            bill = billing_lines(db, month=month, week=week, first=first, last=last, team=team)
            typer.echo(billing_csv(bill), nl=False)
            return
        report, _ = billing_report(db, month=month, week=week, first=first, last=last, team=team)
    except InvalidRequest as exc:
        raise _option_error(exc) from None
    finally:
        db.dispose()
    if fmt == "json":
        _print_json(report)
        return
    table = _table(
        f"billing {report.first} to {report.to} ({report.timezone})",
        f"roll-up as of {report.as_of or 'never: run `meter rollup`'}",
        "user", "team", "requests", "prompt tok", "completion tok", "unpriced", "cost",
    )  # fmt: skip
    for e in report.users:
        table.add_row(
            e.user or "(no user)",
            e.team or "(no team)",
            f"{e.requests:,}",
            f"{e.prompt_tokens:,}",
            f"{e.completion_tokens:,}",
            f"{e.unpriced:,}",
            _usd(e.cost_usd),
        )
    table.add_section()
    table.add_row("total", "", "", "", "", "", _usd(report.total_cost_usd))
    console.print(table)


@report_app.command("reconcile")
@friendly_errors
def reconcile_cmd(
    period: str = typer.Option("week", help="day, week or month."),
    first: str | None = typer.Option(None, "--from", help="First period (a label of its kind)."),
    last: str | None = typer.Option(None, "--to", help="Last period, inclusive (default: now)."),
    fmt: str = typer.Option("table", "--format", help="table or json (the API's)."),
) -> None:
    """meter's cost against the provider's reported cost, per period and model.

    `cost` is meter's cost of the events that carry a provider cost, `provider` their sum of
    `usage.cost`, `drift` the difference (positive: meter counts more than the provider billed).
    """
    from meter.reports.reconciliation import reconciliation

    _choice("--format", fmt, ("table", "json"))
    db = database()
    try:
        report = reconciliation(db, period=period, first=first, last=last)
    except InvalidRequest as exc:
        raise _option_error(exc) from None
    finally:
        db.dispose()
    if fmt == "json":
        _print_json(report)
        return
    table = _table(
        f"reconciliation by {report.period}",
        f"roll-up as of {report.as_of or 'never: run `meter rollup`'}",
        "period", "model", "events", "with provider cost", "cost", "provider", "drift",
        "estimated", "reconciled", "lookups pending",
    )  # fmt: skip
    for r in report.rows:
        table.add_row(
            r.period,
            r.model,
            f"{r.events:,}",
            f"{r.events_with_provider_cost:,}",
            f"${r.cost_usd}",
            f"${r.provider_cost_usd}",
            f"${r.drift_usd}",
            f"{r.estimated:,}",
            f"{r.reconciled:,}",
            f"{r.lookups_pending:,}",
        )
    console.print(table)
