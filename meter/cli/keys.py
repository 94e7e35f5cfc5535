"""`meter keys create|list|revoke`: API keys. `create` prints only the key on stdout, so that
`KEY=$(meter keys create --role ingest)` captures it; everything else goes to stderr."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import typer
from rich.table import Table

from meter.cli._app import app, console, database, err_console, fail, friendly_errors
from meter.events import MAX_NAME_LENGTH, format_timestamp, parse_timestamp

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


_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def expiry(expires_in: str | None, expires_at: str | None, now: datetime) -> datetime | None:
    """--expires-in 30d (s, m, h, d or w) or --expires-at RFC 3339 -> when the key expires."""
    if expires_in is not None and expires_at is not None:
        raise fail("give --expires-in or --expires-at, not both")
    if expires_in is not None:
        match = _DURATION.fullmatch(expires_in.strip())
        if match is None or int(match[1]) == 0:
            raise fail(
                f"--expires-in: give a positive duration such as 30d, 12h or 2w, not {expires_in!r}"
            )
        return now + timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    if expires_at is not None:
        try:
            moment = parse_timestamp(expires_at)
        except ValueError as exc:
            raise fail(f"--expires-at: {exc}") from None
        if moment <= now:
            raise fail("--expires-at: must be in the future")
        return moment
    return None


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
    expires_in: str | None = typer.Option(
        None, help="Refuse the key after this long: e.g. 30d, 12h, 2w (s, m, h, d, w)."
    ),
    expires_at: str | None = typer.Option(
        None, help="Refuse the key from this RFC 3339 time, e.g. 2027-01-01T00:00:00Z."
    ),
) -> None:
    """Create a key and print it (only it) on stdout: it is shown this once.

    Example: `meter keys create --role gateway --team search --user alice --tag project=x`
    """
    from meter import audit
    from meter.api.routes.keys import key_details
    from meter.keys import check_key_fields, create_key

    if role not in ROLES:
        raise fail(f"--role: must be one of {', '.join(ROLES)}, not {role!r}")
    tags = _tags(tag)
    try:
        check_key_fields(role, team, user, tags)
    except ValueError as exc:
        raise fail(f"--{exc}") from None
    expires = expiry(expires_in, expires_at, datetime.now(UTC))
    team, name, user = _name("--team", team), _name("--name", name), _name("--user", user)
    db = database()
    try:
        with db.engine.begin() as conn:
            key_id, key, _ = create_key(
                conn, role, team, name, user=user, tags=tags, expires_at=expires
            )
            details = key_details(role, team, name, user, tags, expires)
            audit.record(conn, audit.CLI, "key.create", f"key:{key_id}", details)
    finally:
        db.dispose()
    bound = "".join(
        [f", team {team}" if team else "", f", user {user}" if user else ""]
        + [f", tag {k}={v}" for k, v in (tags or {}).items()]
        + ([f", expires {format_timestamp(expires)}"] if expires else [])
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
    """Every key: id, role, team, bound user and tags, name, creation time, expiry, last use
    (to the minute) and prefix (never the key)."""
    from meter.api.routes.keys import list_keys

    db = database()
    try:
        keys = list_keys(db)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps({"keys": [k.model_dump(mode="json") for k in keys]}, indent=2))
        return
    table = Table(
        "id", "role", "team", "user", "tags", "name", "created", "expires", "last used", "prefix"
    )
    now = datetime.now(UTC)
    for k in keys:
        expires = ""
        if k.expires_at is not None:
            expires = format_timestamp(k.expires_at) + (" (expired)" if k.expires_at <= now else "")
        table.add_row(
            str(k.id),
            k.role,
            k.team or "",
            k.user or "",
            ",".join(f"{t}={v}" for t, v in (k.tags or {}).items()),
            k.name or "",
            format_timestamp(k.created_at),
            expires,
            format_timestamp(k.last_used_at) if k.last_used_at else "never",
            k.prefix,
        )
    console.print(table)


@keys_app.command("revoke")
@friendly_errors
def revoke_cmd(
    key_id: int = typer.Argument(..., help="The key's id (see `meter keys list`)."),
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from meter import audit
    from meter.api.routes.keys import revoke_key

    db = database()
    try:
        revoked = revoke_key(db, key_id, audit.CLI)
    finally:
        db.dispose()
    if not revoked:
        raise fail(f"no key with id {key_id}", code=1)
    err_console.print(f"revoked key {key_id}")
