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
ROLES = ("admin", "ingest", "read", "gateway")


def _tags(pairs: list[str]) -> dict[str, str] | None:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise fail(f"--tag: give KEY=VALUE, not {pair!r}")
        tags[key] = value
    return tags or None


def _name(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip() or len(value) > MAX_NAME_LENGTH or "\x00" in value:
        raise fail(f"{option}: give 1 to {MAX_NAME_LENGTH} characters")
    return value


@keys_app.command("create")
@friendly_errors
def create_cmd(
    role: str = typer.Option(
        ...,
        help="admin (everything), read (GET), ingest (POST /v1/events), or gateway "
        "(only the OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models).",
    ),
    team: str | None = typer.Option(
        None, help="Scope a read or ingest key to one team; a gateway key's calls count here."
    ),
    name: str | None = typer.Option(None, help="What the key is for."),
    user: str | None = typer.Option(
        None, help="Gateway keys: every call is this user's (else the body's `user`)."
    ),
    tag: list[str] = typer.Option(
        [], "--tag", help="Gateway keys: a fixed tag KEY=VALUE on every call (repeatable)."
    ),
) -> None:
    """Create a key and print it (only it) on stdout: it is shown this once.

    Example: `meter keys create --role gateway --team search --user alice --tag project=x`
    """
    from meter.keys import check_key_fields, create_key

    if role not in ROLES:
        raise fail(f"--role: must be one of {', '.join(ROLES)}, not {role!r}")
    tags = _tags(tag)
    try:
        check_key_fields(role, team, user, tags)
    except ValueError as exc:
        raise fail(f"--{exc}") from None
    db = database()
    try:
        with db.engine.begin() as conn:
            key_id, key, _ = create_key(
                conn,
                role,
                _name("--team", team),
                _name("--name", name),
                user=_name("--user", user),
                tags=tags,
            )
    finally:
        db.dispose()
    bound = "".join(
        [f", team {team}" if team else "", f", user {user}" if user else ""]
        + [f", tag {k}={v}" for k, v in (tags or {}).items()]
    )
    err_console.print(
        f"created key {key_id} ({role}{bound}); store it now: it is not shown again",
        highlight=False,
    )
    typer.echo(key)


@keys_app.command("list")
@friendly_errors
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every key: id, role, team, bound user and tags, name, creation time and prefix (never
    the key)."""
    from meter.api.routes.keys import list_keys

    db = database()
    try:
        keys = list_keys(db)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps({"keys": [k.model_dump(mode="json") for k in keys]}, indent=2))
        return
    table = Table("id", "role", "team", "user", "tags", "name", "created", "prefix")
    for k in keys:
        table.add_row(
            str(k.id),
            k.role,
            k.team or "",
            k.user or "",
            ",".join(f"{t}={v}" for t, v in (k.tags or {}).items()),
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
