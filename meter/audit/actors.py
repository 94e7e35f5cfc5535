"""Who made a change, as the audit log's `actor` string (see meter.audit)."""

from __future__ import annotations

from meter.keys import Principal

ADMIN_ENV = "admin-env"
OPEN = "open"
CLI = "cli"
SCHEDULER = "scheduler"


def key_actor(key_id: int, name: str | None) -> str:
    """`key:<id>:<name>`, or `key:<id>` for an unnamed key: the id first, so that a name holding
    a colon still parses (`actor.split(":", 2)`)."""
    return f"key:{key_id}" if not name else f"key:{key_id}:{name}"


def actor_of(principal: Principal) -> str:
    """The actor of a request made by this caller (an admin: only admins change things)."""
    if principal.open_mode:
        return OPEN
    if principal.key_id is None:
        return ADMIN_ENV
    return key_actor(principal.key_id, principal.name)
