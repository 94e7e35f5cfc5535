"""The audit log's SQL: append an entry, list entries newest first. There is no update and no
delete here, by design."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db import models

# Names of fields that hold a secret: details carrying one are refused (a caller's bug).
SECRET_FIELDS = frozenset({"key", "key_hash", "webhook_secret", "secret", "token", "admin_key"})
MAX_TARGET = 300

_A = models.AuditEntry


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    details: dict[str, Any] | None


def _check_no_secret(details: Mapping[str, Any]) -> None:
    # Top-level names only: nested mappings hold the caller's data (a key's tags), whose names
    # are anyone's choice.
    for name in details:
        if str(name).lower() in SECRET_FIELDS:
            raise ValueError(f"details.{name}: an audit entry never holds a secret")


def record(
    conn: Connection,
    actor: str,
    action: str,
    target: str | None,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Append one entry in the caller's transaction; return its id.

    `details` must be JSON as it is (money as decimal strings) and hold no secret."""
    if details is not None:
        _check_no_secret(details)
    return int(
        conn.execute(
            sa.insert(_A)
            .values(
                at=datetime.now(UTC),
                actor=actor[:250],
                action=action,
                target=None if target is None else target[:MAX_TARGET],
                details=None if details is None else dict(details),
            )
            .returning(_A.id)
        ).scalar_one()
    )


def _details(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):  # some drivers hand JSON back as text
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else None


def list_entries(
    conn: Connection,
    *,
    action: str | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries newest first (by id: the order they were appended in).

    `action` is an exact name (`budget.update`) or a prefix ending in `.*` (`budget.*`);
    `since` keeps entries at or after it; `before_id` continues a previous page."""
    stmt = sa.select(_A.id, _A.at, _A.actor, _A.action, _A.target, _A.details)
    if action is not None:
        if action.endswith(".*"):
            prefix = action[:-1]  # keeps the dot: budget.* matches budget.create, not budgets
            stmt = stmt.where(sa.func.substr(_A.action, 1, len(prefix)) == prefix)
        else:
            stmt = stmt.where(_A.action == action)
    if since is not None:
        stmt = stmt.where(_A.at >= since)
    if before_id is not None:
        stmt = stmt.where(_A.id < before_id)
    rows = conn.execute(stmt.order_by(_A.id.desc()).limit(limit)).all()
    return [AuditEntry(r.id, r.at, r.actor, r.action, r.target, _details(r.details)) for r in rows]
