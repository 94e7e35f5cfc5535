"""Tag key operations shared by the API and the CLI.

Adding or removing a key changes what the roll-up writes, so both run under the roll-up's
lease: no chunk runs meanwhile, and every chunk after reads the new set of keys. A key's history
comes from the raw events still kept.
"""

from __future__ import annotations

from datetime import UTC, datetime

from meter import audit
from meter._exceptions import InvalidRequest, MeterError
from meter.db.session import Database
from meter.events import MAX_TAG_KEY_LENGTH
from meter.rollup import lease
from meter.tags import repository as repo

LEASE_WAIT_SECONDS = 30.0


class TagInUse(MeterError):
    """A tag key a budget counts cannot be removed (409)."""


def check_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_TAG_KEY_LENGTH or "\x00" in key or "=" in key:
        raise InvalidRequest(
            f"key: 1 to {MAX_TAG_KEY_LENGTH} characters, without '=' or NUL", "key"
        )
    return key


def list_tag_keys(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return repo.list_keys(conn)


def add_tag_key(
    db: Database, key: str, wait_seconds: float = LEASE_WAIT_SECONDS, *, actor: str
) -> int | None:
    """Roll up `key` from now on, and its history from the raw events -> rows written, or None
    when it was rolled up already. Raises RollupBusy if a roll-up outlasts `wait_seconds`.
    Audited as `tag.add` (by `actor`) in the same transaction."""
    key = check_key(key)
    holder = lease.new_holder_id()
    lease.acquire(db, holder, wait_seconds)
    try:
        with db.engine.begin() as conn:
            lease.renew(conn, holder)
            if key in repo.list_keys(conn):
                return None
            repo.insert_key(conn, key, datetime.now(UTC))
            rows = repo.backfill(conn, key)
            audit.record(conn, actor, "tag.add", key, {"rows_backfilled": rows})
            return rows
    finally:
        lease.release(db, holder, None)


def remove_tag_key(
    db: Database, key: str, wait_seconds: float = LEASE_WAIT_SECONDS, *, actor: str
) -> bool:
    """Stop rolling up `key` and drop its rows -> False if it was not rolled up.
    Raises TagInUse while a budget counts it. Audited as `tag.remove` (by `actor`)."""
    key = key.strip()
    holder = lease.new_holder_id()
    lease.acquire(db, holder, wait_seconds)
    try:
        with db.engine.begin() as conn:
            lease.renew(conn, holder)
            if key not in repo.list_keys(conn):
                return False
            using = repo.budgets_using(conn, key)
            if using:
                raise TagInUse(
                    f"tag key {key!r} is counted by budget(s) {', '.join(map(str, using))}: "
                    "delete them first"
                )
            repo.delete_key(conn, key)
            audit.record(conn, actor, "tag.remove", key, None)
            return True
    finally:
        lease.release(db, holder, None)
