"""`GET/POST /v1/keys`, `DELETE /v1/keys/{id}`: API keys, admin only.

A key is shown once, in the answer to its creation; the database keeps its SHA-256 hash and a
short prefix that tells keys apart in lists. Creating and revoking are audited (`key.create`,
`key.revoke`) in the change's own transaction.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from meter import audit
from meter.api.auth import AdminPrincipal
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.api.schemas import AUTH_ERRORS, InputTimestamp, Name, Problem, Tags, Timestamp
from meter.db import models
from meter.db.session import Database
from meter.events import format_timestamp
from meter.keys import check_key_fields, create_key

router = APIRouter(tags=["keys"])

Role = Literal["admin", "ingest", "read", "gateway"]
MAX_ID = 2**31 - 1  # api_keys.id is a 32-bit integer


class KeyIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"role": "read", "team": "search", "name": "dashboard"},
                {"role": "gateway", "team": "search", "user": "alice", "tags": {"project": "x"}},
            ]
        },
    )

    role: Role
    team: Name | None = Field(
        default=None,
        description="Scope a read or ingest key to a team; required for a gateway key",
    )
    name: Name | None = Field(default=None, description="What the key is for")
    user: Name | None = Field(
        default=None, description="Gateway keys: attribute every call to this user"
    )
    tags: Tags | None = Field(default=None, description="Gateway keys: tags on every call")
    expires_at: InputTimestamp | None = Field(
        default=None, description="RFC 3339, in the future: the key is refused from then on"
    )


class KeyOut(BaseModel):
    id: int
    role: str
    team: str | None
    name: str | None
    user: str | None = None
    tags: dict[str, str] | None = None
    created_at: Timestamp
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    expires_at: Timestamp | None = Field(default=None, description="null: never expires")
    last_used_at: Timestamp | None = Field(
        default=None, description="Its last use, to the minute (written at most once a minute)"
    )


class KeyCreated(BaseModel):
    id: int
    key: str = Field(description="The key itself: shown this once, stored only as a hash")
    role: str
    team: str | None
    name: str | None
    user: str | None = None
    tags: dict[str, str] | None = None
    created_at: Timestamp
    expires_at: Timestamp | None = None


class KeyList(BaseModel):
    keys: list[KeyOut]


def _tags(value: object) -> dict[str, str] | None:
    if isinstance(value, str):  # some drivers hand JSON back as text
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) and value else None


def list_keys(db: Database) -> list[KeyOut]:
    k = models.ApiKey
    with db.engine.connect().execution_options(readonly=True) as conn:
        rows = conn.execute(
            sa.select(
                k.id,
                k.role,
                k.team,
                k.name,
                k.user,
                k.tags,
                k.created_at,
                k.prefix,
                k.expires_at,
                k.last_used_at,
            ).order_by(k.id)
        ).all()
    return [
        KeyOut(
            id=r.id,
            role=r.role,
            team=r.team,
            name=r.name,
            user=r.user,
            tags=_tags(r.tags),
            created_at=r.created_at,
            prefix=r.prefix,
            expires_at=r.expires_at,
            last_used_at=r.last_used_at,
        )
        for r in rows
    ]


def key_details(
    role: str,
    team: str | None,
    name: str | None,
    user: str | None,
    tags: dict[str, str] | None,
    expires_at: datetime | None,
) -> dict[str, Any]:
    """A key as its audit entries describe it: everything but the key and its hash."""
    return {
        "role": role,
        "team": team,
        "name": name,
        "user": user,
        "tags": tags or None,
        "expires_at": None if expires_at is None else format_timestamp(expires_at),
    }


def revoke_key(db: Database, key_id: int, actor: str) -> bool:
    """Delete the key (requests with it get 401 from now on) and audit it, in one transaction."""
    if not 1 <= key_id <= MAX_ID:
        return False
    k = models.ApiKey
    with db.engine.begin() as conn:
        row = conn.execute(
            sa.delete(k)
            .where(k.id == key_id)
            .returning(k.role, k.team, k.name, k.user, k.tags, k.expires_at)
        ).first()
        if row is None:
            return False
        details = key_details(
            row.role, row.team, row.name, row.user, _tags(row.tags), row.expires_at
        )
        audit.record(conn, actor, "key.revoke", f"key:{key_id}", details)
    return True


@router.get(
    "/v1/keys", response_model=KeyList, summary="Every key, never its secret", responses=AUTH_ERRORS
)
def get_keys(_: AdminPrincipal, db: DbDep) -> KeyList:
    return KeyList(keys=list_keys(db))


@router.post(
    "/v1/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create a key (shown once)",
    responses=AUTH_ERRORS,
)
def post_key(admin: AdminPrincipal, db: DbDep, body: KeyIn) -> KeyCreated:
    try:
        check_key_fields(body.role, body.team, body.user, body.tags)
        if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
            raise ValueError("expires_at: must be in the future")
    except ValueError as exc:
        name, _, reason = str(exc).partition(": ")
        raise invalid(("body", name), reason) from None
    with db.engine.begin() as conn:
        key_id, key, created_at = create_key(
            conn,
            body.role,
            body.team,
            body.name,
            user=body.user,
            tags=body.tags,
            expires_at=body.expires_at,
        )
        details = key_details(
            body.role, body.team, body.name, body.user, body.tags, body.expires_at
        )
        audit.record(conn, audit.actor_of(admin), "key.create", f"key:{key_id}", details)
    return KeyCreated(
        id=key_id,
        key=key,
        role=body.role,
        team=body.team,
        name=body.name,
        user=body.user,
        tags=body.tags or None,
        created_at=created_at,
        expires_at=body.expires_at,
    )


@router.delete(
    "/v1/keys/{id}",
    status_code=204,
    response_class=Response,
    summary="Revoke a key",
    responses={**AUTH_ERRORS, 404: {"model": Problem, "description": "No such key"}},
)
def delete_key(admin: AdminPrincipal, db: DbDep, id: int) -> Response:
    if not revoke_key(db, id, audit.actor_of(admin)):
        raise HTTPException(404, detail=f"no key with id {id}")
    return Response(status_code=204)
