"""API keys: random, shown once, stored as SHA-256 hashes, each with a role.

`read` and `ingest` keys may be scoped to one team; `gateway` keys (SPEC section 7) must name a
team and may be bound to one user and to fixed tags, which attribute every call made with them.
This module is the keys' domain (no HTTP): the API's auth (meter.api.auth) and the dashboard's
sessions (meter.dashboard.session) both build on it.

A key may expire (`expires_at`): from then on it is refused like an unknown key, its dashboard
sessions included. `last_used_at` is written at most once a minute per key: the lookup that
authenticates a request already reads it, and only when it is a minute old does that same
connection write it, with a conditional UPDATE that another process's write makes a no-op.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from meter.db import fast, models
from meter.db.fast import FastSelect
from meter.db.session import Database
from meter.settings import Settings

ROLES = ("admin", "ingest", "read", "gateway")
KEY_PREFIX = "mtr_"
LAST_USED_INTERVAL = timedelta(seconds=60)  # last_used_at is written at most this often

log = logging.getLogger("meter.keys")


@dataclass(frozen=True)
class Principal:
    role: str
    team: str | None = None  # a scoped key sees only this team; a gateway key's calls go to it
    key_id: int | None = None
    user: str | None = None  # gateway keys: the user every call is attributed to
    tags: dict[str, str] | None = field(default=None, hash=False)  # gateway keys: fixed tags
    name: str | None = None  # the key's name, for the audit log's actor
    open_mode: bool = False  # no key exists: loopback only, without auth (see meter serve)

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
    expires_at: datetime | None = None,
) -> tuple[int, str, datetime]:
    """Store a new key's hash; return (id, the key itself, created_at). The key is not kept."""
    check_key_fields(role, team, user, tags)
    key = new_key()
    now = datetime.now(UTC)
    if expires_at is not None and expires_at <= now:
        raise ValueError("expires_at: must be in the future")
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
            expires_at=expires_at,
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
        role=row.role,
        team=row.team,
        key_id=row.id,
        user=row.user,
        tags=_tags(row.tags),
        name=row.name,
    )


KEY_COLUMNS = (
    models.ApiKey.id,
    models.ApiKey.role,
    models.ApiKey.team,
    models.ApiKey.user,
    models.ApiKey.tags,
    models.ApiKey.key_hash,
    models.ApiKey.name,
    models.ApiKey.expires_at,
    models.ApiKey.last_used_at,
)


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


# What this process last wrote, per engine (a test process opens many databases whose keys share
# ids): concurrent requests of one key then write once, not once each.
_written: weakref.WeakKeyDictionary[sa.Engine, dict[int, datetime]] = weakref.WeakKeyDictionary()


def use_is_due(
    engine: sa.Engine, key_id: int, last_used_at: datetime | None, now: datetime
) -> bool:
    """Is the key's last_used_at (as just read) a minute old, and not written since by this
    process?"""
    cutoff = now - LAST_USED_INTERVAL
    if last_used_at is not None and last_used_at > cutoff:
        return False
    previous = _written.setdefault(engine, {}).get(key_id)
    return previous is None or previous <= cutoff


def note_use(
    conn: sa.Connection, key_id: int, last_used_at: datetime | None, now: datetime
) -> None:
    """Write the key's last_used_at if it is a minute old, in `conn` (committed here).

    `last_used_at` is the value the caller just read with the key. Never raises: this is
    bookkeeping, and a request must not fail for it."""
    if not use_is_due(conn.engine, key_id, last_used_at, now):
        return
    cutoff = now - LAST_USED_INTERVAL
    _written.setdefault(conn.engine, {})[key_id] = now
    k = models.ApiKey
    try:
        conn.execute(
            sa.update(k)
            .where(k.id == key_id, sa.or_(k.last_used_at.is_(None), k.last_used_at <= cutoff))
            .values(last_used_at=now)
        )
        conn.commit()
    except sa.exc.SQLAlchemyError:
        log.warning("could not record the use of key %s", key_id, exc_info=True)
        conn.rollback()


# Built once: building the statement at each request cost SQLAlchemy about three times what
# running it does (0.34 vs 0.11 ms CPU per lookup, measured for bench.gateway), on every call.
_BY_HASH = FastSelect(
    sa.select(*KEY_COLUMNS).where(models.ApiKey.key_hash == sa.bindparam("digest"))
)


def principal_for_key(
    db: Database,
    settings: Settings,
    token: str,
    reader: fast.Reader | None = None,
    later: list[Callable[[], None]] | None = None,
) -> Principal | None:
    """Who a raw API key stands for (the bearer header, the dashboard's login); None if nobody,
    or if the key has expired.

    Read from the database on every request, never cached: a revoked key is refused at once by
    every server sharing the database. `reader`: a connection the caller reads more with (the
    gateway's admission). Its last use is noted, once a minute, in a connection of its own:
    with `later`, that write is handed to the caller to run (where it may wait) instead."""
    if settings.admin_key is not None and hmac.compare_digest(
        token.encode(), settings.admin_key.get_secret_value().encode()
    ):
        return Principal(role="admin")
    digest = hash_key(token)
    now = datetime.now(UTC)
    with fast.reading(db.engine, reader) as own:
        rows = _BY_HASH.rows(own, {"digest": digest})
    row = rows[0] if rows else None
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    if is_expired(row.expires_at, now):
        return None
    note = use_note(db.engine, row.id, row.last_used_at, now)
    if note is not None:
        if later is None:
            note()
        else:
            later.append(note)
    return principal_of_row(row)


def use_note(
    engine: sa.Engine, key_id: int, last_used_at: datetime | None, now: datetime
) -> Callable[[], None] | None:
    """The write of a key's last use in a connection of its own (`note_use`), when it is due;
    for the caller to run where it may wait. `last_used_at`: as just read (None: unknown)."""
    if not use_is_due(engine, key_id, last_used_at, now):
        return None

    def note() -> None:
        with engine.connect() as conn:
            note_use(conn, key_id, last_used_at, now)

    return note
