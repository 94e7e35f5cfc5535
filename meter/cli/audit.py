"""`meter audit list`: the audit log, newest first, straight from the database."""

from __future__ import annotations

import json
import re

import typer
from rich.table import Table
from rich.text import Text

from meter.cli._app import app, console, database, fail, friendly_errors
from meter.events import format_timestamp, parse_timestamp

audit_app = typer.Typer(help="Read the audit log of changes.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("list")
@friendly_errors
def list_cmd(
    action: str | None = typer.Option(
        None, help="Only this action (budget.update), or a family of them (budget.*)."
    ),
    since: str | None = typer.Option(None, help="Only entries at or after this RFC 3339 time."),
    limit: int = typer.Option(100, min=1, max=1000, help="How many entries (a page)."),
    cursor: str | None = typer.Option(None, help="Continue after a page (its next cursor)."),
    output: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Entries newest first: when, who (actor), what (action, target) and the change."""
    from meter import audit
    from meter.api.routes.audit import ACTION_PATTERN, entry_out, parse_cursor

    if output not in ("table", "json"):
        raise fail(f"--format: table or json, not {output!r}")
    if action is not None and not re.fullmatch(ACTION_PATTERN, action):
        raise fail(f"--action: a dotted name such as budget.update or budget.*, not {action!r}")
    try:
        moment = None if since is None else parse_timestamp(since)
    except ValueError as exc:
        raise fail(f"--since: {exc}") from None
    try:
        before_id = None if cursor is None else parse_cursor(cursor)
    except ValueError as exc:
        raise fail(f"--cursor: {exc}") from None
    db = database()
    try:
        with db.engine.connect() as conn:
            conn = conn.execution_options(readonly=True)
            entries = audit.list_entries(
                conn, action=action, since=moment, before_id=before_id, limit=limit + 1
            )
    finally:
        db.dispose()
    next_cursor = str(entries[limit - 1].id) if len(entries) > limit else None
    entries = entries[:limit]
    if output == "json":
        doc = {
            "entries": [entry_out(e).model_dump(mode="json") for e in entries],
            "next_cursor": next_cursor,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table("id", "at", "actor", "action", "target", "details")
    for e in entries:
        details = "" if e.details is None else json.dumps(e.details, separators=(",", ":"))
        # Text, not markup: names and details are anyone's text, brackets included.
        table.add_row(
            str(e.id),
            format_timestamp(e.at),
            Text(e.actor),
            e.action,
            Text(e.target or ""),
            Text(details),
        )
    console.print(table)
    if next_cursor is not None:
        console.print(f"more: --cursor {next_cursor}", highlight=False)
