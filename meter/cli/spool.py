"""`meter spool status|replay`: look at the client spool, and store what dead processes left."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from meter._exceptions import StoreUnavailable
from meter.cli._app import app, console, fail, friendly_errors, settings
from meter.db.engine import normalize_url
from meter.recorder import segments
from meter.recorder.drain import replay_dead_segments
from meter.recorder.stores import DatabaseStore, HttpStore, Store

spool_app = typer.Typer(
    help="The client spool: events waiting to be stored (METER_SPOOL_DIR).",
    no_args_is_help=True,
)
app.add_typer(spool_app, name="spool")

SPOOL_DIR_HELP = "Spool directory (default: METER_SPOOL_DIR, else $XDG_STATE_HOME/meter/spool)."


def _spool_dir(option: Path | None) -> Path:
    return (option or settings().spool_dir).expanduser()


@spool_app.command("status")
@friendly_errors
def status(
    spool_dir: Path | None = typer.Option(None, "--spool-dir", help=SPOOL_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Each segment (its owner alive or gone, events, bytes) and the totals.

    Segments of live processes are being drained by them; dead ones wait for the next process
    using this spool, or for `meter spool replay`.
    """
    directory = _spool_dir(spool_dir)
    infos = list(segments.describe(directory))
    dead = [i for i in infos if not i.alive]
    totals = {
        "segments": len(infos),
        "events": sum(i.events for i in infos),
        "bytes": sum(i.bytes for i in infos),
        "dead_segments": len(dead),
        "dead_events": sum(i.events for i in dead),
        # Events the store answered as older than its purge cutoff: not stored, never counted.
        "expired_events": segments.expired_total(directory),
    }
    if as_json:
        doc = {
            "spool_dir": str(directory),
            "segments": [
                {
                    "name": i.path.name,
                    "pid": i.pid,
                    "owner": "alive" if i.alive else "dead",
                    "events": i.events,
                    "bytes": i.bytes,
                }
                for i in infos
            ],
            "totals": totals,
        }
        console.print_json(json.dumps(doc))
        return
    table = Table(title=f"spool {directory}")
    table.add_column("segment")
    table.add_column("pid", justify="right")
    table.add_column("owner")
    table.add_column("events", justify="right")
    table.add_column("bytes", justify="right")
    for i in infos:
        owner = "[green]alive[/]" if i.alive else "[yellow]dead[/]"
        table.add_row(i.path.name, str(i.pid or "?"), owner, str(i.events), str(i.bytes))
    console.print(table)
    console.print(
        f"total: {totals['segments']} segments, {totals['events']} events, "
        f"{totals['bytes']} bytes; dead (to replay): {totals['dead_segments']} segments, "
        f"{totals['dead_events']} events; expired (before the store's purge cutoff, not "
        f"stored): {totals['expired_events']} events",
        highlight=False,
    )


@spool_app.command("replay")
@friendly_errors
def replay(
    spool_dir: Path | None = typer.Option(None, "--spool-dir", help=SPOOL_DIR_HELP),
    api_url: str | None = typer.Option(
        None, help="Send to this meter server's POST /v1/events instead of the database."
    ),
    api_key: str | None = typer.Option(
        None, envvar="METER_API_KEY", help="Ingest key for --api-url.", show_default=False
    ),
) -> None:
    """Store the events of dead processes' segments, then delete those segments.

    Events already stored are recognised by id and counted as duplicates, so replaying twice
    never counts twice. Torn or corrupt lines are skipped and counted.
    """
    cfg = settings()
    directory = _spool_dir(spool_dir)
    pending = [i for i in segments.describe(directory) if not i.alive]
    store: Store = HttpStore(api_url, api_key) if api_url else DatabaseStore(cfg)
    # Never print a database password.
    target = api_url or normalize_url(cfg.database_url).render_as_string(hide_password=True)
    try:
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("replay", total=sum(i.bytes for i in pending))
            stats = replay_dead_segments(
                directory, store, on_progress=lambda n: progress.advance(task, n)
            )
    except StoreUnavailable as exc:
        raise fail(f"cannot store into {target}: {exc} (nothing was lost)") from None
    finally:
        store.close()
    console.print(
        f"replayed {stats.replayed_segments} segments into {target}: "
        f"{stats.stored} inserted, {stats.duplicates} duplicates, "
        f"{stats.skipped_lines} skipped lines, {stats.rejected} rejected events, "
        f"{stats.expired} expired (before the purge cutoff)",
        highlight=False,
    )
