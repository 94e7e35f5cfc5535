"""`GET /v1/audit`: the audit log, newest first (admin only)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from meter import audit
from meter.api.auth import AdminPrincipal
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.api.schemas import AUTH_ERRORS, InputTimestamp, Timestamp

router = APIRouter(tags=["audit"])

# An exact action (budget.update) or a prefix of whole words ending in `.*` (budget.*).
ACTION_PATTERN = r"^[a-z][a-z_]*(\.[a-z][a-z_]*)*(\.\*)?$"
_CURSOR = re.compile(r"[1-9][0-9]{0,18}")


class AuditEntryOut(BaseModel):
    id: int
    at: Timestamp
    actor: str = Field(
        description="key:<id>:<name> (key:<id> for an unnamed key), admin-env, open, cli or "
        "scheduler"
    )
    action: str = Field(description="A dotted name: key.create, price.set, budget.update, ...")
    target: str | None = Field(description="What changed: key:3, budget:7, a model id")
    details: dict[str, Any] | None = Field(description="The change, without any secret")


class AuditPage(BaseModel):
    entries: list[AuditEntryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next, older page")


def entry_out(e: audit.AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(
        id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, details=e.details
    )


def parse_cursor(cursor: str) -> int:
    """A cursor this API returned (the id of the last entry of a page); ValueError otherwise."""
    if not _CURSOR.fullmatch(cursor):
        raise ValueError("not a cursor this API returned")
    return int(cursor)


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    summary="The audit log, newest first",
    responses=AUTH_ERRORS,
)
def get_audit(
    _: AdminPrincipal,
    db: DbDep,
    action: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=ACTION_PATTERN,
            description="Only this action (budget.update), or a family of them (budget.*)",
        ),
    ] = None,
    since: Annotated[
        InputTimestamp | None, Query(description="RFC 3339 with an offset: entries at or after it")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
    cursor: Annotated[
        str | None, Query(max_length=40, description="`next_cursor` of the previous page")
    ] = None,
) -> AuditPage:
    before_id = None
    if cursor is not None:
        try:
            before_id = parse_cursor(cursor)
        except ValueError as exc:
            raise invalid(("query", "cursor"), str(exc)) from None
    with db.engine.connect().execution_options(readonly=True) as conn:
        entries = audit.list_entries(
            conn, action=action, since=since, before_id=before_id, limit=limit + 1
        )
    next_cursor = str(entries[limit - 1].id) if len(entries) > limit else None
    return AuditPage(entries=[entry_out(e) for e in entries[:limit]], next_cursor=next_cursor)
