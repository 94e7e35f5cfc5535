"""`meter export events`: raw events to a file or stdout, in constant memory, with a progress bar
on stderr."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, TextIO

import typer

from meter.cli._app import app, database, err_console, fail, friendly_errors

export_app = typer.Typer(help="Export raw data.", no_args_is_help=True)
app.add_typer(export_app, name="export")


def _day(option: str, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: give a date as YYYY-MM-DD, not {value!r}") from None


@export_app.command("events")
@friendly_errors
def events_cmd(
    first: str | None = typer.Option(
        None, "--from", help="First local day (YYYY-MM-DD, the database's timezone), inclusive."
    ),
    last: str | None = typer.Option(None, "--to", help="Last local day, inclusive."),
    team: str | None = typer.Option(None, help="Only this team's events."),
    output_format: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    for_ingest: bool = typer.Option(
        False,
        "--for-ingest",
        help="Exactly the fields POST /v1/events takes, to load the export into another meter.",
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to this file (default: stdout)."
    ),
) -> None:
    """Stream raw events, oldest first: one JSON object a line, or CSV with a header row.

    Money is exact (decimal strings). Example: `meter export events --from 2026-11-01 --to
    2026-11-30 --for-ingest -o november.jsonl`, then POST its lines in batches to another
    meter's /v1/events."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from meter.export import count_events, csv_lines, event_filter, jsonl_lines, pages

    if output_format not in ("jsonl", "csv"):
        raise fail(f"--format: jsonl or csv, not {output_format!r}")
    db = database()
    try:
        try:
            flt = event_filter(db.tz, _day("--from", first), _day("--to", last), team)
        except ValueError as exc:
            raise fail(f"--{exc}") from None
        total = count_events(db, flt)
        render = csv_lines if output_format == "csv" else jsonl_lines
        written = 0
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        with contextlib.ExitStack() as stack:
            out: TextIO = (
                stack.enter_context(output.open("w", encoding="utf-8", newline=""))
                if output is not None
                else sys.stdout
            )
            stack.enter_context(progress)
            task = progress.add_task("events", total=total)

            def rows() -> Iterator[Any]:
                nonlocal written
                for page in pages(db, flt):
                    yield from page
                    written += len(page)
                    progress.update(task, completed=written, total=max(total, written))

            for line in render(rows(), for_ingest):
                out.write(line)
            out.flush()
    finally:
        db.dispose()
    where = f" to {output}" if output is not None else ""
    err_console.print(f"exported {written} events{where}", highlight=False)
