"""The API's authentication: FastAPI dependencies over meter.keys (the keys' domain).

With no key at all (none stored, no METER_ADMIN_KEY) meter serves loopback only and every
request is an admin: `meter serve` refuses to listen elsewhere in that state.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from meter.dashboard.session import session_principal
from meter.db.session import Database
from meter.keys import Principal, any_keys, create_key, principal_for_key
from meter.settings import Settings

# `create_key` stays importable from here, where earlier releases defined it.
__all__ = [
    "AdminPrincipal",
    "IngestPrincipal",
    "Principal",
    "ReadPrincipal",
    "authenticate",
    "create_key",
    "scoped_team",
]


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
            return Principal(role="admin", open_mode=True)  # loopback only (see meter serve)
        if request.method in ("GET", "HEAD"):
            # The dashboard's session cookie also reads the API (its CSV links); never for a
            # write, so a cross-site form can do nothing with it.
            session = session_principal(request, db, settings)
            if session is not None:
                return session
        raise _unauthorized("missing bearer token: send `Authorization: Bearer <key>`")
    principal = principal_for_key(db, settings, token)
    if principal is None:
        raise _unauthorized("invalid API key")
    return principal


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
