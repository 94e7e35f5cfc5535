"""The dashboard's login session: a signed, expiring cookie standing for one API key.

The cookie never holds the key itself. It is `<key id>.<expiry>.<mac>`, the MAC an HMAC-SHA256
keyed with the key's stored SHA-256 hash (`admin` and the hash of METER_ADMIN_KEY for that key),
so revoking a key ends its sessions at once and no server-side session store is needed, which
keeps several `meter serve` processes in agreement. Whoever can read the api_keys table can mint a
session; they could as well insert a key of their own.

Forms (login, logout) carry a token that must equal the `meter_csrf` cookie (double submit), and a
cross-origin `Origin` header is refused: with the SameSite cookies, a foreign page cannot post.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import Response

from meter.db import models
from meter.db.session import Database
from meter.keys import Principal, hash_key, is_expired, note_use
from meter.settings import Settings

SESSION_COOKIE = "meter_session"
CSRF_COOKIE = "meter_csrf"
SESSION_SECONDS = 12 * 3600
ENV_ADMIN_ID = "admin"  # the key id of METER_ADMIN_KEY, which has no row
_CONTEXT = b"meter-dashboard-session.v1."
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")


def _mac(secret: str, key_id: str, expires: int) -> str:
    message = _CONTEXT + f"{key_id}.{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def issue_session(principal: Principal, key: str, now: float | None = None) -> str:
    """A cookie value for a key that just logged in (`key` is the raw key, hashed here)."""
    key_id = ENV_ADMIN_ID if principal.key_id is None else str(principal.key_id)
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{key_id}.{expires}.{_mac(hash_key(key), key_id, expires)}"


def verify_session(
    token: str, db: Database, settings: Settings, now: float | None = None
) -> Principal | None:
    """The principal of a valid, unexpired session of a key that still exists and has not
    expired; else None."""
    key_id, _, rest = token.partition(".")
    expires_text, _, mac = rest.partition(".")
    if not (expires_text.isdigit() and mac):
        return None
    expires = int(expires_text)
    if expires <= int(now if now is not None else time.time()):
        return None
    if key_id == ENV_ADMIN_ID:
        if settings.admin_key is None:
            return None
        secret = hash_key(settings.admin_key.get_secret_value())
        principal = Principal(role="admin")
    elif key_id.isdigit():
        k = models.ApiKey
        moment = datetime.now(UTC)
        with db.engine.connect() as conn:
            row = conn.execute(
                sa.select(k.key_hash, k.role, k.team, k.name, k.expires_at, k.last_used_at).where(
                    k.id == int(key_id)
                )
            ).first()
            if row is None or is_expired(row.expires_at, moment):
                return None
            if hmac.compare_digest(mac, _mac(row.key_hash, key_id, expires)):
                note_use(conn, int(key_id), row.last_used_at, moment)
        secret = row.key_hash
        principal = Principal(role=row.role, team=row.team, key_id=int(key_id), name=row.name)
    else:
        return None
    if not hmac.compare_digest(mac, _mac(secret, key_id, expires)):
        return None
    if not principal.can("read"):  # an ingest key never gets a session
        return None
    return principal


def session_principal(request: Request, db: Database, settings: Settings) -> Principal | None:
    token = request.cookies.get(SESSION_COOKIE)
    return verify_session(token, db, settings) if token else None


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="lax",  # lax: a link from a chat or an e-mail still opens the dashboard
        secure=is_https(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=is_https(request)
    )


# -- CSRF ---------------------------------------------------------------------------------------


def csrf_token(request: Request) -> tuple[str, bool]:
    """The form token: the browser's existing one, or a new one (True: set the cookie)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if _TOKEN.fullmatch(current):
        return current, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def same_origin(request: Request) -> bool:
    """False when the browser says the form came from another origin."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin on every POST; `null` comes from privacy-sensitive contexts, and
        # the double-submit token still has to match.
        return True
    parts = urlsplit(origin)
    return parts.scheme == request.url.scheme and parts.netloc == request.headers.get("host")


def form_allowed(request: Request, form_token: str) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return (
        same_origin(request)
        and bool(cookie)
        and bool(form_token)
        and hmac.compare_digest(cookie.encode(), form_token.encode())
    )
