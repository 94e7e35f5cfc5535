"""`meter keys create|list|revoke`: API keys. `create` prints only the key on stdout, so that
`KEY=$(meter keys create --role ingest)` captures it; everything else goes to stderr."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from meter.cli._app import app, console, database, err_console, fail, friendly_errors
from meter.events import MAX_NAME_LENGTH, format_timestamp

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# The API modules (and FastAPI) are imported inside the commands: every `meter` command
# imports this module, and most never need them.
ROLES = ("admin", "ingest", "read")


def _name(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip() or len(value) > MAX_NAME_LENGTH or "\x00" in value:
        raise fail(f"{option}: give 1 to {MAX_NAME_LENGTH} characters")
    return value


@keys_app.command("create")
@friendly_errors
def create_cmd(
    role: str = typer.Option(..., help=f"One of {', '.join(ROLES)}."),
    team: str | None = typer.Option(None, help="Scope a read or ingest key to one team."),
    name: str | None = typer.Option(None, help="What the key is for."),
) -> None:
    """Create a key and print it (only it) on stdout: it is shown this once."""
    from meter.api.auth import create_key

    if role not in ROLES:
        raise fail(f"--role: must be one of {', '.join(ROLES)}, not {role!r}")
    if role == "admin" and team:
        raise fail("--team: an admin key cannot be scoped to a team")
    db = database()
    try:
        with db.engine.begin() as conn:
            key_id, key, _ = create_key(conn, role, _name("--team", team), _name("--name", name))
    finally:
        db.dispose()
    err_console.print(
        f"created key {key_id} ({role}{f', team {team}' if team else ''}); "
        "store it now: it is not shown again",
        highlight=False,
    )
    typer.echo(key)


@keys_app.command("list")
@friendly_errors
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every key: id, role, team, name, creation time and prefix (never the key)."""
    from meter.api.routes.keys import list_keys

    db = database()
    try:
        keys = list_keys(db)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps({"keys": [k.model_dump(mode="json") for k in keys]}, indent=2))
        return
    table = Table("id", "role", "team", "name", "created", "prefix")
    for k in keys:
        table.add_row(
            str(k.id),
            k.role,
            k.team or "",
            k.name or "",
            format_timestamp(k.created_at),
            k.prefix,
        )
    console.print(table)


@keys_app.command("revoke")
@friendly_errors
def revoke_cmd(
    key_id: int = typer.Argument(..., help="The key's id (see `meter keys list`)."),
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from meter.api.routes.keys import revoke_key

    db = database()
    try:
        revoked = revoke_key(db, key_id)
    finally:
        db.dispose()
    if not revoked:
        raise fail(f"no key with id {key_id}", code=1)
    err_console.print(f"revoked key {key_id}")
