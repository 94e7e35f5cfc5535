"""`meter reconcile ...`: replace estimates with the provider's own figures (SPEC section 9)."""

from __future__ import annotations

import time

import typer

from meter.cli._app import app, console, database, err_console, fail, friendly_errors, settings

reconcile_app = typer.Typer(
    help="Correct estimated usage with what the provider really billed.", no_args_is_help=True
)
app.add_typer(reconcile_app, name="reconcile")


@reconcile_app.command("lookups")
@friendly_errors
def lookups_cmd() -> None:
    """Look up every pending generation now, whatever its backoff.

    Calls cancelled by their client, cut, or ended by an error after some
    output are stored with estimated usage and their generation id.
    `meter serve` (with OPENROUTER_API_KEY set) asks the upstream,
    GET $METER_UPSTREAM_BASE_URL/generation?id=..., for each one's native
    token counts and cost, retrying 404s with backoff until
    METER_LOOKUP_WINDOW_SECONDS (default 86400) after the call. This
    command does it once, now, for every pending lookup.

    Found: the event becomes `reconciled`, its cost recomputed at its own
    price version, the estimate kept beside it; its week is counted again
    at the next roll-up. Not found: still pending, or unavailable once its
    window has passed (the event keeps its estimate). At most
    METER_LOOKUP_RPS (default 2) lookups a second; a 429 pauses them.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from meter.reconcile import LookupSummary, run_lookups
    from meter.reconcile.lookups import upstream_key

    cfg = settings()
    if upstream_key(cfg) is None:
        raise fail(
            "generation lookups need OPENROUTER_API_KEY (the upstream shows a generation only to "
            "the key that made it)"
        )
    db = database()
    bar = Progress(
        TextColumn("looking up"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("generations, {task.fields[reconciled]} reconciled"),
        console=err_console,
        transient=True,
    )
    task = bar.add_task("lookups", total=None, reconciled=0)

    def progress(done: int, total: int | None, so_far: LookupSummary) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total, reconciled=so_far.reconciled)

    started = time.perf_counter()
    try:
        summary = run_lookups(db, cfg, force=True, progress=progress)
    finally:
        if bar.live.is_started:
            bar.stop()
        db.dispose()
    seconds = time.perf_counter() - started
    console.print(
        f"reconciled {summary.reconciled}, still pending {summary.pending}, "
        f"unavailable {summary.unavailable} ({seconds:.1f} s)",
        highlight=False,
    )
    if summary.rate_limited:
        err_console.print(
            f"[yellow]the upstream answered 429 {summary.rate_limited} times"
            + ("; stopped early, run again later" if summary.stopped else "")
            + "[/]",
            highlight=False,
        )
