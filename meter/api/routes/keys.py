"""`GET/POST /v1/keys`, `DELETE /v1/keys/{id}`: API keys, admin only.

A key is shown once, in the answer to its creation; the database keeps its SHA-256 hash and a
short prefix that tells keys apart in lists.
"""

from __future__ import annotations

import json
from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from meter.api.auth import AdminPrincipal
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.api.schemas import AUTH_ERRORS, Name, Problem, Tags, Timestamp
from meter.db import models
from meter.db.session import Database
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


class KeyOut(BaseModel):
    id: int
    role: str
    team: str | None
    name: str | None
    user: str | None = None
    tags: dict[str, str] | None = None
    created_at: Timestamp
    prefix: str = Field(description="The key's first characters, to tell keys apart")


class KeyCreated(BaseModel):
    id: int
    key: str = Field(description="The key itself: shown this once, stored only as a hash")
    role: str
    team: str | None
    name: str | None
    user: str | None = None
    tags: dict[str, str] | None = None
    created_at: Timestamp


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
                k.id, k.role, k.team, k.name, k.user, k.tags, k.created_at, k.prefix
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
        )
        for r in rows
    ]


def revoke_key(db: Database, key_id: int) -> bool:
    if not 1 <= key_id <= MAX_ID:
        return False
    with db.engine.begin() as conn:
        result = conn.execute(sa.delete(models.ApiKey).where(models.ApiKey.id == key_id))
    return result.rowcount > 0


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
def post_key(_admin: AdminPrincipal, db: DbDep, body: KeyIn) -> KeyCreated:
    try:
        check_key_fields(body.role, body.team, body.user, body.tags)
    except ValueError as exc:
        name, _, reason = str(exc).partition(": ")
        raise invalid(("body", name), reason) from None
    with db.engine.begin() as conn:
        key_id, key, created_at = create_key(
            conn, body.role, body.team, body.name, user=body.user, tags=body.tags
        )
    return KeyCreated(
        id=key_id,
        key=key,
        role=body.role,
        team=body.team,
        name=body.name,
        user=body.user,
        tags=body.tags or None,
        created_at=created_at,
    )


@router.delete(
    "/v1/keys/{id}",
    status_code=204,
    response_class=Response,
    summary="Revoke a key",
    responses={**AUTH_ERRORS, 404: {"model": Problem, "description": "No such key"}},
)
def delete_key(_: AdminPrincipal, db: DbDep, id: int) -> Response:
    if not revoke_key(db, id):
        raise HTTPException(404, detail=f"no key with id {id}")
    return Response(status_code=204)
