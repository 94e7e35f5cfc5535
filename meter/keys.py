"""API keys: random, shown once, stored as SHA-256 hashes, each with a role.

`read` and `ingest` keys may be scoped to one team; `gateway` keys (SPEC section 7) must name a
team and may be bound to one user and to fixed tags, which attribute every call made with them.
This module is the keys' domain (no HTTP): the API's auth (meter.api.auth) and the dashboard's
sessions (meter.dashboard.session) both build on it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from meter.db import models
from meter.db.session import Database
from meter.settings import Settings

ROLES = ("admin", "ingest", "read", "gateway")
KEY_PREFIX = "mtr_"


@dataclass(frozen=True)
class Principal:
    role: str
    team: str | None = None  # a scoped key sees only this team; a gateway key's calls go to it
    key_id: int | None = None
    user: str | None = None  # gateway keys: the user every call is attributed to
    tags: dict[str, str] | None = field(default=None, hash=False)  # gateway keys: fixed tags

    def can(self, needed: str) -> bool:
        """A gateway key may call the gateway's routes only; admin may call all the others."""
        return self.role == needed or (self.role == "admin" and needed != "gateway")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_key_fields(
    role: str, team: str | None, user: str | None = None, tags: dict[str, str] | None = None
) -> None:
    """ValueError naming the field ("field: reason") when the combination is not allowed."""
    if role not in ROLES:
        raise ValueError(f"role: must be one of {', '.join(ROLES)}")
    if role == "admin" and team:
        raise ValueError("team: an admin key cannot be scoped to a team")
    if role == "gateway" and not team:
        raise ValueError("team: a gateway key must name the team its calls are counted under")
    if role != "gateway" and user:
        raise ValueError("user: only a gateway key can be bound to a user")
    if role != "gateway" and tags:
        raise ValueError("tags: only a gateway key can carry fixed tags")


def create_key(
    conn: sa.Connection,
    role: str,
    team: str | None,
    name: str | None,
    *,
    user: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[int, str, datetime]:
    """Store a new key's hash; return (id, the key itself, created_at). The key is not kept."""
    check_key_fields(role, team, user, tags)
    key = new_key()
    now = datetime.now(UTC)
    key_id = conn.execute(
        sa.insert(models.ApiKey)
        .values(
            key_hash=hash_key(key),
            prefix=key[:8],
            role=role,
            team=team or None,
            name=name,
            user=user or None,
            tags=tags or None,
            created_at=now,
        )
        .returning(models.ApiKey.id)
    ).scalar_one()
    return key_id, key, now


def any_keys(db: Database, settings: Settings) -> bool:
    """Is there any way to authenticate? Without one, meter serves loopback only, open."""
    if settings.admin_key is not None:
        return True
    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(models.ApiKey)).scalar_one() > 0


def _tags(value: Any) -> dict[str, str] | None:
    if isinstance(value, str):  # some drivers hand JSON back as text
        value = json.loads(value)
    return dict(value) if value else None


def principal_of_row(row: Any) -> Principal:
    return Principal(
        role=row.role, team=row.team, key_id=row.id, user=row.user, tags=_tags(row.tags)
    )


KEY_COLUMNS = (
    models.ApiKey.id,
    models.ApiKey.role,
    models.ApiKey.team,
    models.ApiKey.user,
    models.ApiKey.tags,
    models.ApiKey.key_hash,
)


def principal_for_key(db: Database, settings: Settings, token: str) -> Principal | None:
    """Who a raw API key stands for (the bearer header, the dashboard's login); None if nobody.

    Read from the database on every request, never cached: a revoked key is refused at once by
    every server sharing the database."""
    if settings.admin_key is not None and hmac.compare_digest(
        token.encode(), settings.admin_key.get_secret_value().encode()
    ):
        return Principal(role="admin")
    digest = hash_key(token)
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(*KEY_COLUMNS).where(models.ApiKey.key_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return principal_of_row(row)
