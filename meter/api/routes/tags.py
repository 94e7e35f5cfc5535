"""`GET, POST /v1/tags`, `DELETE /v1/tags/{key}`: the tag keys rolled up by day."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict

from meter import audit
from meter._exceptions import InvalidRequest
from meter.api.auth import AdminPrincipal, ReadPrincipal
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.db import models
from meter.events import format_timestamp
from meter.rollup import RollupBusy
from meter.tags import TagInUse, add_tag_key, remove_tag_key

router = APIRouter(prefix="/v1", tags=["tags"])


class TagKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str


class TagKeyOut(BaseModel):
    key: str
    created_at: str


class TagKeyAdded(TagKeyOut):
    rows_backfilled: int


class TagKeyList(BaseModel):
    tags: list[TagKeyOut]


def _created_at(db: DbDep, key: str) -> datetime:
    with db.engine.connect() as conn:
        value = conn.execute(
            sa.select(models.TagKey.created_at).where(models.TagKey.key == key)
        ).scalar_one()
    assert isinstance(value, datetime)
    return value


@router.get("/tags", response_model=TagKeyList)
def list_tags(_: ReadPrincipal, db: DbDep) -> TagKeyList:
    """The tag keys rolled up by day (what `group_by=tag:<key>` and tag budgets can use)."""
    t = models.TagKey
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(t.key, t.created_at).order_by(t.key)).all()
    return TagKeyList(
        tags=[TagKeyOut(key=r.key, created_at=format_timestamp(r.created_at)) for r in rows]
    )


@router.post("/tags", response_model=TagKeyAdded, status_code=201)
def add_tag(data: TagKeyIn, admin: AdminPrincipal, db: DbDep) -> TagKeyAdded:
    """Roll up a tag key from now on, and its history from the raw events kept; 409 if it is
    rolled up already."""
    try:
        rows = add_tag_key(db, data.key, actor=audit.actor_of(admin))
    except InvalidRequest as exc:
        raise invalid(("body", "key"), str(exc).removeprefix("key: ")) from None
    except RollupBusy as exc:
        raise HTTPException(409, detail=str(exc)) from None
    key = data.key.strip()
    if rows is None:
        raise HTTPException(409, detail=f"tag key {key!r} is rolled up already")
    return TagKeyAdded(
        key=key, created_at=format_timestamp(_created_at(db, key)), rows_backfilled=rows
    )


@router.delete("/tags/{key:path}", status_code=204, response_class=Response)
def delete_tag(key: str, admin: AdminPrincipal, db: DbDep) -> Response:
    """Stop rolling up a key and drop its rows; 409 while a budget counts it."""
    try:
        removed = remove_tag_key(db, key, actor=audit.actor_of(admin))
    except (TagInUse, RollupBusy) as exc:
        raise HTTPException(409, detail=str(exc)) from None
    if not removed:
        raise HTTPException(404, detail=f"tag key {key!r} is not rolled up")
    return Response(status_code=204)
