"""`meter rollup`: roll up every event stored so far, now, with a progress bar for big runs."""

from __future__ import annotations

import typer

from meter.cli._app import app, console, database, err_console, friendly_errors

# Below this many chunks (about one per dirty week) a run is quick: no bar, just the summary.
PROGRESS_MIN_CHUNKS = 4


@app.command()
@friendly_errors
def rollup(
    wait: float = typer.Option(
        30.0, min=0, help="Seconds to wait for a roll-up already running elsewhere."
    ),
) -> None:
    """Roll up every event stored so far into weekly totals, then evaluate budgets.

    Safe to run at any time, also while `meter serve` runs its own: the database lets one
    roll-up run at a time, and a second one waits for it (up to --wait seconds).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from meter.rollup import run_rollup

    db = database()
    bar = Progress(
        TextColumn("rolling up"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks, {task.fields[events]:,} new events"),
        console=err_console,
        transient=True,
    )
    task = bar.add_task("rollup", total=None, events=0)

    def progress(done: int, total: int, events: int) -> None:
        if total >= PROGRESS_MIN_CHUNKS and not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total, events=events)

    try:
        result = run_rollup(db, wait_seconds=wait, progress=progress)
    finally:
        if bar.live.is_started:  # rich prints a newline on stop() when not on a terminal
            bar.stop()
        db.dispose()
    weeks = ", ".join(result.week_labels) or "none"
    console.print(
        f"rolled up {result.events_rolled_up:,} new events; weeks: {weeks}; "
        f"alerts fired: {result.alerts_fired}; {result.duration_ms} ms",
        highlight=False,
        soft_wrap=True,
    )
