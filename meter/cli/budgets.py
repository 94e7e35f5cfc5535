"""`meter budgets list|create`: limits of a day, week or month with the current period's spend,
straight from the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from pydantic import ValidationError
from rich.table import Table

from meter.cli._app import app, console, database, err_console, fail, friendly_errors, settings

budgets_app = typer.Typer(
    help="List and create budgets (per day, week or month).", no_args_is_help=True
)
app.add_typer(budgets_app, name="budgets")


_OPTIONS = {"weekly_limit_usd": "--limit", "limit_usd": "--limit", "thresholds": "--threshold"}


def _option_error(field: str, message: str) -> str:
    """An error about a request field, told in the command's own option names."""
    option = _OPTIONS.get(field, "--" + field.replace("_", "-"))
    return f"{option}: {message.removeprefix(field + ': ')}"


@budgets_app.command("list")
@friendly_errors
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every budget with its current period's spend (from the last roll-up) and its ratio."""
    from meter.budgets import repository as repo
    from meter.budgets import service

    db = database()
    try:
        with db.engine.connect() as conn:
            conn = conn.execution_options(readonly=True)
            views = service.budget_views(
                conn, repo.list_budgets(conn), service.Clock(datetime.now(UTC), db.tz)
            )
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps({"budgets": [v.model_dump(mode="json") for v in views]}, indent=2))
        return
    table = Table(
        "id",
        "scope",
        "subject",
        "period",
        "spend (USD)",
        "limit (USD)",
        "ratio",
        "thresholds",
        "webhook",
        "enforce",
    )
    for v in views:
        table.add_row(
            str(v.id),
            v.scope,
            v.subject or "(everything)",
            v.period_label,
            v.spend_usd,
            v.limit_usd,
            v.ratio,
            ", ".join(v.thresholds),
            ("signed" if v.has_webhook_secret else "unsigned") if v.webhook_url else "-",
            "yes" if v.enforce else "no",
        )
    console.print(table)


@budgets_app.command("create")
@friendly_errors
def create_cmd(
    scope: str = typer.Option(..., help="team, user, global or tag."),
    subject: str | None = typer.Option(
        None, help="The team, the user or key=value of a rolled-up tag; none for global."
    ),
    limit: str = typer.Option(..., help="Limit of one period in USD, e.g. 50 or 12.50."),
    period: str = typer.Option("week", help="day, week or month (fixed once created)."),
    threshold: list[str] | None = typer.Option(
        None, "--threshold", help="A ratio of the limit that alerts; repeat it. Default 0.5 0.8 1."
    ),
    webhook_url: str | None = typer.Option(None, help="Where alerts are POSTed."),
    webhook_secret: str | None = typer.Option(
        None, help="Signs deliveries (HMAC-SHA256); stored, never shown again."
    ),
    enforce: bool = typer.Option(False, "--enforce", help="Block calls once over the limit."),
) -> None:
    """Create a budget; prints its id on stdout."""
    from meter import audit
    from meter.budgets import repository as repo
    from meter.budgets import service
    from meter.budgets.audit import budget_details
    from meter.budgets.schemas import BudgetCreate

    doc: dict[str, object] = {
        "scope": scope,
        "subject": subject,
        "period": period,
        "limit_usd": limit,
        "webhook_url": webhook_url,
        "webhook_secret": webhook_secret,
        "enforce": enforce,
    }
    if threshold:
        doc["thresholds"] = threshold
    try:
        data = BudgetCreate.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "scope"
        raise fail(_option_error(field, first["msg"].removeprefix("Value error, "))) from None
    cfg = settings()
    db = database()
    try:
        with db.engine.begin() as conn:
            clock = service.Clock(datetime.now(UTC), db.tz)
            budget_id = service.create_budget(conn, data, cfg, clock)
            budget = repo.get_budget(conn, budget_id)
            assert budget is not None
            view = service.budget_views(conn, [budget], clock)[0]
            audit.record(
                conn, audit.CLI, "budget.create", f"budget:{budget_id}", budget_details(view)
            )
    except service.BudgetInputError as exc:
        raise fail(_option_error(exc.field, str(exc))) from None
    finally:
        db.dispose()
    who = "everything" if view.scope == "global" else f"{view.scope} {view.subject}"
    err_console.print(
        f"budget {budget_id}: {who}, ${view.limit_usd} a {view.period} "
        f"(this {view.period} ${view.spend_usd}, ratio {view.ratio})",
        highlight=False,
    )
    typer.echo(budget_id)
