"""API keys: random, shown once, stored as SHA-256 hashes; roles and an optional team scope.

With no key at all (none stored, no METER_ADMIN_KEY) meter serves loopback only and every
request is an admin: `meter serve` refuses to listen elsewhere in that state.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from meter.db import models
from meter.db.session import Database
from meter.settings import Settings

ROLES = ("admin", "ingest", "read")
KEY_PREFIX = "mtr_"


@dataclass(frozen=True)
class Principal:
    role: str
    team: str | None = None  # a scoped key sees only this team
    key_id: int | None = None

    def can(self, needed: str) -> bool:
        return self.role == "admin" or self.role == needed


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    conn: sa.Connection, role: str, team: str | None, name: str | None
) -> tuple[int, str, datetime]:
    """Store a new key's hash; return (id, the key itself, created_at). The key is not kept."""
    if role not in ROLES:
        raise ValueError(f"role: must be one of {', '.join(ROLES)}")
    if role == "admin" and team:
        raise ValueError("team: an admin key cannot be scoped to a team")
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


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


# Declares the scheme in OpenAPI (Swagger UI's "Authorize" button, schemathesis); the header is
# read below, so that a missing key can still mean open mode.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


def authenticate(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    """The caller of this request, from `Authorization: Bearer <key>`."""
    db: Database = request.app.state.db
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        if not any_keys(db, settings):
            return Principal(role="admin")  # open mode, loopback only (see meter serve)
        if request.method in ("GET", "HEAD"):
            # The dashboard's session cookie also reads the API (its CSV links); never for a
            # write, so a cross-site form can do nothing with it.
            from meter.dashboard.session import session_principal

            session = session_principal(request, db, settings)
            if session is not None:
                return session
        raise _unauthorized("missing bearer token: send `Authorization: Bearer <key>`")
    principal = principal_for_key(db, settings, token)
    if principal is None:
        raise _unauthorized("invalid API key")
    return principal


def principal_for_key(db: Database, settings: Settings, token: str) -> Principal | None:
    """Who a raw API key stands for (the bearer header, the dashboard's login); None if nobody."""
    if settings.admin_key is not None and hmac.compare_digest(
        token.encode(), settings.admin_key.get_secret_value().encode()
    ):
        return Principal(role="admin")
    digest = hash_key(token)
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(
                models.ApiKey.id, models.ApiKey.role, models.ApiKey.team, models.ApiKey.key_hash
            ).where(models.ApiKey.key_hash == digest)
        ).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return Principal(role=row.role, team=row.team, key_id=row.id)


def _requiring(role: str):  # type: ignore[no-untyped-def]
    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.can(role):
            raise HTTPException(403, detail=f"this key has role {principal.role}; {role} is needed")
        return principal

    return dependency


AdminPrincipal = Annotated[Principal, Depends(_requiring("admin"))]
ReadPrincipal = Annotated[Principal, Depends(_requiring("read"))]
IngestPrincipal = Annotated[Principal, Depends(_requiring("ingest"))]


def scoped_team(principal: Principal, team: str | None) -> str | None:
    """The team a request may see: a scoped key's own team; naming another team is a 403."""
    if principal.team is None:
        return team
    if team is not None and team != principal.team:
        raise HTTPException(403, detail=f"team: this key is scoped to team {principal.team!r}")
    return principal.team
