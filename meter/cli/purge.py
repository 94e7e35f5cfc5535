"""`meter purge`: delete raw events of old local days once rolled up; every total is kept."""

from __future__ import annotations

import typer

from meter.cli._app import app, console, database, err_console, friendly_errors

_REASONS = {
    "unrolled": "a week before it still waits for the roll-up",
    "lookups": "a generation lookup before it is still pending",
    "earlier purge": "an earlier purge moved it there already",
}


@app.command()
@friendly_errors
def purge(
    older_than_days: int = typer.Option(
        ...,
        "--older-than-days",
        min=2,
        help="Purge the raw events of local days older than this many days (today is day 0).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show the cutoff and how many events would go; change nothing."
    ),
    batch_size: int = typer.Option(
        10_000, min=1, help="Events deleted per transaction.", show_default=True
    ),
    pause_ratio: float | None = typer.Option(
        None,
        min=0,
        help="Pause after each batch for this share of the time it took, so ingest keeps going "
        "(0: no pauses; default 3 on SQLite, whose one write lock ingest shares, 1 on "
        "PostgreSQL).",
        show_default=False,
    ),
) -> None:
    """Delete the raw events of whole local days older than --older-than-days, once rolled up.

    Every report, summary, budget and alert answer stays the same: they read the daily totals,
    which are kept. Events for a purged day sent later are answered as `expired` and not
    stored. Rolls up first; deletes in short batches with pauses, so ingest keeps going; safe
    to stop and run again. Listed in the audit log as purge.start and purge.finish.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from meter.audit.actors import CLI
    from meter.lifecycle.retention import plan_purge
    from meter.lifecycle.retention import purge as run_purge

    db = database()
    try:
        if dry_run:
            plan = plan_purge(db, older_than_days)
            console.print(
                f"would purge {plan.events:,} raw events of local days before {plan.cutoff} "
                f"({db.tz.key}){_why(plan.cutoff, plan.requested, plan.reason)}; nothing changed",
                highlight=False,
            )
            return
        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        task = bar.add_task("purging", total=None)

        def progress(done: int, total: int) -> None:
            if not bar.live.is_started:
                bar.start()
            bar.update(task, completed=done, total=total)

        try:
            result = run_purge(
                db,
                older_than_days,
                actor=CLI,
                batch_size=batch_size,
                pause_ratio=pause_ratio,
                progress=progress,
            )
        finally:
            if bar.live.is_started:
                bar.stop()
    finally:
        db.dispose()
    console.print(
        f"purged {result.deleted:,} raw events of local days before {result.cutoff} "
        f"in {result.batches} batches, {result.duration_ms} ms; every total is kept",
        highlight=False,
    )


def _why(cutoff: object, requested: object, reason: str | None) -> str:
    if reason is None or cutoff == requested:
        return ""
    return f" (not {requested}: {_REASONS[reason]})"
