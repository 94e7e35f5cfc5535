"""`DELETE /v1/users/{user}`: erase a user (admin only; meter.lifecycle.erasure)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from meter import audit
from meter._exceptions import InvalidRequest
from meter.api.auth import AdminPrincipal
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.api.schemas import AUTH_ERRORS, Problem
from meter.lifecycle.erasure import erase_user
from meter.rollup import RollupBusy

router = APIRouter(tags=["users"])


class UserErased(BaseModel):
    pseudonym: str = Field(description="erased- and 16 hex digits: the user's id from now on")
    delete_events: bool
    events: int = Field(description="Events renamed to the pseudonym, or deleted")
    daily_rows: int = Field(description="Daily roll-up rows moved to the pseudonym, or deleted")
    tag_rows: int = Field(description="Daily tag rows moved to the pseudonym, or deleted")
    weekly_rows: int = Field(description="Weekly roll-up rows moved to the pseudonym, or deleted")
    monthly_rows: int = Field(description="Monthly roll-up rows moved to the pseudonym, or deleted")
    marks: int = Field(description="Pending roll-up marks moved, or deleted")
    holds: int = Field(description="Gateway holds moved, or deleted")
    alerts: int = Field(description="Alert payloads rewritten")
    audit_entries: int = Field(description="Audit entries rewritten")
    budgets_deleted: list[int] = Field(description="Ids of the user's budgets, deleted")
    keys_deleted: list[int] = Field(description="Ids of the gateway keys bound to the user")


@router.delete(
    # `:path`: user ids may contain `/` (e.g. "org/alice").
    "/v1/users/{user:path}",
    response_model=UserErased,
    summary="Erase a user",
    responses={
        **AUTH_ERRORS,
        409: {"model": Problem, "description": "A roll-up ran for longer than 30 s"},
    },
)
def delete_user(
    user: str,
    admin: AdminPrincipal,
    db: DbDep,
    delete_events: Annotated[
        bool, Query(description="Delete the user's events (their ids are kept) and totals")
    ] = False,
) -> UserErased:
    """Replace the user's id by a pseudonym in events, roll-ups, holds, alerts and audit
    entries (team, model and global totals unchanged), delete the user's budgets and the
    gateway keys bound to the user; with `delete_events`, delete the user's events and their
    totals instead. Runs under the roll-up's lease; audited as `user.erase.start`/`.finish`."""
    if admin.team is not None:  # admin keys are never scoped today; refuse one if they ever are
        raise HTTPException(
            403, detail=f"team: this key is scoped to team {admin.team!r}; erasure is for all teams"
        )
    try:
        result = erase_user(db, user, actor=audit.actor_of(admin), delete_events=delete_events)
    except InvalidRequest as exc:
        raise invalid(("path", "user"), str(exc).removeprefix("user: ")) from None
    except RollupBusy as exc:
        raise HTTPException(409, detail=str(exc)) from None
    return UserErased(**result.details(), pseudonym=result.pseudonym)
