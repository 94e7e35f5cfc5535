"""`meter tags add|list|remove`: the tag keys rolled up by day (SPEC section 8)."""

from __future__ import annotations

import typer

from meter._exceptions import InvalidRequest
from meter.cli._app import app, console, database, err_console, fail, friendly_errors

tags_app = typer.Typer(
    help="Tag keys rolled up by day (for group_by=tag:<key> and tag budgets).",
    no_args_is_help=True,
)
app.add_typer(tags_app, name="tags")


@tags_app.command("add")
@friendly_errors
def add_cmd(key: str = typer.Argument(..., help="The tag key, e.g. feature.")) -> None:
    """Roll up KEY from now on, and its history from the raw events kept."""
    from meter.audit import CLI
    from meter.rollup import RollupBusy
    from meter.tags import add_tag_key

    db = database()
    try:
        rows = add_tag_key(db, key, actor=CLI)
    except InvalidRequest as exc:
        raise fail(str(exc)) from None
    except RollupBusy as exc:
        raise fail(str(exc), code=1) from None
    finally:
        db.dispose()
    if rows is None:
        err_console.print(f"tag key {key!r} is rolled up already", highlight=False)
        return
    console.print(
        f"tag key {key!r} added; {rows:,} daily rows from the events kept", highlight=False
    )


@tags_app.command("list")
@friendly_errors
def list_cmd() -> None:
    """The rolled-up tag keys, one a line."""
    from meter.tags import list_tag_keys

    db = database()
    try:
        keys = list_tag_keys(db)
    finally:
        db.dispose()
    for key in keys:
        typer.echo(key)


@tags_app.command("remove")
@friendly_errors
def remove_cmd(key: str = typer.Argument(..., help="The tag key.")) -> None:
    """Stop rolling up KEY and drop its rows (refused while a budget counts it)."""
    from meter.audit import CLI
    from meter.rollup import RollupBusy
    from meter.tags import TagInUse, remove_tag_key

    db = database()
    try:
        removed = remove_tag_key(db, key, actor=CLI)
    except (TagInUse, RollupBusy) as exc:
        raise fail(str(exc), code=1) from None
    finally:
        db.dispose()
    if not removed:
        raise fail(f"tag key {key!r} is not rolled up", code=1)
    console.print(f"tag key {key!r} removed", highlight=False)
