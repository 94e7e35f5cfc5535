"""`meter users erase USER`: erase a user (SPEC section 10; meter.lifecycle.erasure)."""

from __future__ import annotations

import typer

from meter.cli._app import app, console, database, fail, friendly_errors

users_app = typer.Typer(
    help="Erase a user's id (or events) from the database.", no_args_is_help=True
)
app.add_typer(users_app, name="users")


@users_app.command("erase")
@friendly_errors
def erase_cmd(
    user: str = typer.Argument(..., help="The user id to erase."),
    delete_events: bool = typer.Option(
        False, "--delete-events", help="Delete the user's events and totals instead of renaming."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Replace USER's id by a pseudonym (erased-<16 hex>) in events, roll-ups, gateway holds,
    alerts and audit entries, and delete USER's budgets and the gateway keys bound to USER.
    Team, model and global totals stay the same.

    With --delete-events, USER's events and their totals are deleted instead (team totals drop
    by exactly their cost), and their ids are kept so that a replay cannot bring them back.
    Runs under the roll-up's lease; audited as user.erase.start and user.erase.finish."""
    from meter.audit import CLI
    from meter.lifecycle.erasure import check_user, erase_user
    from meter.rollup import RollupBusy

    check_user(user)  # before asking: a refused id is refused at once
    if not yes:
        what = (
            f"delete every event of user {user!r} (under that id and its pseudonym) and their "
            "totals"
            if delete_events
            else f"replace user {user!r} by a pseudonym everywhere"
        )
        typer.confirm(
            f"This will {what}, and delete the user's budgets and bound gateway keys; "
            "it cannot be undone. Go on?",
            abort=True,
        )
    db = database()
    try:
        result = erase_user(db, user, actor=CLI, delete_events=delete_events)
    except RollupBusy as exc:
        raise fail(str(exc), code=1) from None
    finally:
        db.dispose()
    verb = "deleted" if delete_events else "renamed"
    console.print(f"user erased; pseudonym {result.pseudonym}", highlight=False)
    console.print(
        f"events {verb}: {result.events:,}; roll-up rows {verb}: {result.daily_rows:,} daily, "
        f"{result.tag_rows:,} tag, {result.weekly_rows:,} weekly, {result.monthly_rows:,} monthly; "
        f"marks: {result.marks:,}; "
        f"gateway holds: {result.holds:,}",
        highlight=False,
    )
    console.print(
        f"budgets deleted: {_ids(result.budgets_deleted)}; "
        f"gateway keys deleted: {_ids(result.keys_deleted)}; "
        f"alerts rewritten: {result.alerts:,}; audit entries rewritten: {result.audit_entries:,}",
        highlight=False,
    )


def _ids(ids: list[int]) -> str:
    return f"{len(ids)} ({', '.join(map(str, ids))})" if ids else "0"
