"""`meter serve`: the API (and the roll-up scheduler) under uvicorn."""

from __future__ import annotations

import gc
import ipaddress

import typer
import uvicorn

from meter.cli._app import app, database, err_console, fail, friendly_errors, settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
@friendly_errors
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    no_scheduler: bool = typer.Option(
        False, "--no-scheduler", help="Serve the API only; run roll-ups elsewhere."
    ),
) -> None:
    """Serve the HTTP API and dashboard; creates or upgrades the schema first."""
    from meter.api.app import create_app
    from meter.keys import any_keys

    cfg = settings()
    db = database(upgrade=True)
    if not any_keys(db, cfg):
        if not is_loopback(host):
            db.dispose()
            raise fail(
                f"refusing to listen on {host} without API keys: create one with "
                "`meter keys create --role admin` or set METER_ADMIN_KEY"
            )
        err_console.print(
            f"[yellow]no API keys: listening on {host} (loopback only) without authentication[/]"
        )
    err_console.print(
        f"meter serving {db.engine.url.render_as_string()} on http://{host}:{port} "
        f"(roll-up {'off' if no_scheduler else f'every {cfg.rollup_interval_seconds:g} s'})"
    )
    api = create_app(cfg, db, scheduler=not no_scheduler, gateway_at_start=True)
    # Everything loaded so far (modules, schemas, the app) lives as long as the process: keep it
    # out of the garbage collector's full passes. A batch of 1,000 events allocates enough to
    # trigger them, and each one walked these ~180,000 objects (~100 ms, measured in process).
    gc.freeze()
    uvicorn.run(api, host=host, port=port, log_level="info")
