"""`meter db ...`: schema management."""

from __future__ import annotations

import typer

from meter.cli._app import app, console, friendly_errors, settings
from meter.db import migrate
from meter.db.engine import check_reachable, make_engine

db_app = typer.Typer(help="Create or upgrade the database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
@friendly_errors
def upgrade() -> None:
    """Create the schema, or upgrade it to the current version (SQLite or PostgreSQL)."""
    cfg = settings()
    engine = make_engine(cfg.database_url)
    try:
        check_reachable(engine)
        before, head = migrate.schema_status(engine)
        migrate.upgrade(engine, cfg.timezone)
    finally:
        engine.dispose()
    url = engine.url.render_as_string()
    if before == head:
        console.print(f"{url} is already at schema {head}.")
    else:
        console.print(f"{url}: schema {before or 'empty'} -> {head}, timezone {cfg.timezone}.")
