"""Erasing a user (SPEC section 10): their id becomes a pseudonym everywhere, or their events go.

The pseudonym is `erased-` + the first 16 hex digits of HMAC-SHA256(key, user id), where the
key is random and kept in the database (`meter_meta.erasure_key`, made at the first erasure):
the same user always gets the same pseudonym in one database, nobody without the key can tell
whose it is, and totals keep adding up. The rewrite runs under the roll-up's lease (no chunk
runs meanwhile) in one transaction, between `user.erase.start` and `user.erase.finish` (or
`.abort`) audit entries whose target is the pseudonym, never the erased id.

What changes: events, roll-up marks, daily, tag and weekly totals (a pseudonym's rows that
exist already, from an earlier erasure of the same id, are summed with the renamed ones, never
recounted from raw events, which may have been purged), gateway holds and their settled totals,
alert payloads and audit entries. The user's budgets (and their alerts) and the gateway keys
bound to the user are deleted. With `delete_events`, the user's events (under their id and
their pseudonym) and their roll-up rows are deleted instead, and the events' ids are kept in
`erased_events`, so that a replay is a duplicate (meter.db.ledger): team, model and global
totals drop by exactly their totals, whether or not their raw events were still kept.

Events of the user stored after the erasure (a client still sending them) are stored under
their id again; erasing again renames them too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute

from meter import audit
from meter._exceptions import InvalidRequest
from meter.budgets.repository import delete_budget
from meter.db import models, settled
from meter.db.ledger import MARK_ORDER, mark_dirty
from meter.db.session import Database
from meter.events import ERASED_PREFIX, MAX_NAME_LENGTH
from meter.rollup import lease

KEY_NAME = "erasure_key"  # meter_meta's row holding the HMAC key
LEASE_WAIT_SECONDS = 30.0
ACTION = "user.erase"

# The roll-up tables keyed by user, each with the key columns the pseudonym's rows are merged on.
_ROLLUPS = (models.DailyUsage, models.DailyTagUsage, models.WeeklyUsage, models.MonthlyUsage)
_NOT_SUMMED = frozenset({"week_start", "updated_at"})


@dataclass(frozen=True)
class ErasureResult:
    """What an erasure changed; nothing in it names the erased user."""

    pseudonym: str
    delete_events: bool
    events: int  # renamed, or deleted (`delete_events`)
    daily_rows: int  # rows of the user merged into the pseudonym's, or deleted
    tag_rows: int
    weekly_rows: int
    monthly_rows: int
    marks: int
    holds: int
    alerts: int  # alert payloads rewritten (alerts of deleted budgets go with them)
    audit_entries: int  # entries rewritten
    budgets_deleted: list[int] = field(default_factory=list)
    keys_deleted: list[int] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        """The audit entry's details."""
        return {
            "delete_events": self.delete_events,
            "events": self.events,
            "daily_rows": self.daily_rows,
            "tag_rows": self.tag_rows,
            "weekly_rows": self.weekly_rows,
            "monthly_rows": self.monthly_rows,
            "marks": self.marks,
            "holds": self.holds,
            "alerts": self.alerts,
            "audit_entries": self.audit_entries,
            "budgets_deleted": self.budgets_deleted,
            "keys_deleted": self.keys_deleted,
        }


def check_user(user: str) -> str:
    """The user id to erase, or InvalidRequest naming `user`."""
    if not user or len(user) > MAX_NAME_LENGTH or "\x00" in user:
        raise InvalidRequest(f"user: 1 to {MAX_NAME_LENGTH} characters, without NUL", "user")
    if user.startswith(ERASED_PREFIX):
        raise InvalidRequest(
            f"user: {user!r} is already the pseudonym of an erased user; erase the user's own "
            "id (with delete_events to delete the events of both)",
            "user",
        )
    return user


def pseudonym_of(key: str, user: str) -> str:
    digest = hmac.new(key.encode(), user.encode(), hashlib.sha256).hexdigest()
    return ERASED_PREFIX + digest[:16]


def erasure_key(conn: Connection) -> str:
    """The database's HMAC key, made on first use (two first uses at once agree on one)."""
    meta = models.Meta.__table__
    dialect = sqlite_dialect if conn.dialect.name == "sqlite" else pg_dialect
    conn.execute(
        dialect.insert(meta)
        .values(key=KEY_NAME, value=secrets.token_hex(32))
        .on_conflict_do_nothing(index_elements=["key"])
    )
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == KEY_NAME)).scalar_one()
    return str(value)


def erase_user(
    db: Database,
    user: str,
    *,
    actor: str,
    delete_events: bool = False,
    wait_seconds: float = LEASE_WAIT_SECONDS,
) -> ErasureResult:
    """Erase `user` (see the module's docstring). Raises InvalidRequest for an id that cannot be
    erased, RollupBusy if a roll-up outlasts `wait_seconds`."""
    user = check_user(user)
    holder = lease.new_holder_id()
    lease.acquire(db, holder, wait_seconds)
    try:
        with db.engine.begin() as conn:
            lease.renew(conn, holder)
            pseudonym = pseudonym_of(erasure_key(conn), user)
        with (
            audit.long_operation(
                db.engine, actor, ACTION, pseudonym, {"delete_events": delete_events}
            ) as operation,
            db.engine.begin() as conn,
        ):
            # On PostgreSQL this also row-locks the lease until commit: no takeover while
            # the rewrite runs, however long it takes.
            lease.renew(conn, holder)
            result = _erase(conn, user, pseudonym, delete_events, datetime.now(UTC))
            operation.finish(conn, result.details())
        return result
    finally:
        lease.release(db, holder, None)


def _erase(
    conn: Connection, user: str, pseudonym: str, delete_events: bool, now: datetime
) -> ErasureResult:
    if delete_events:
        users = (user, pseudonym)
        events = _delete_events(conn, users, now)
        marks = len(_take_marks(conn, users))
        holds = _delete_where(conn, models.GatewayHold, users)
        settled.delete_users(conn, users)
        daily, tags, weekly, monthly = (_delete_where(conn, t, users) for t in _ROLLUPS)
    else:
        e = models.Event
        events = conn.execute(sa.update(e).where(e.user == user).values(user=pseudonym)).rowcount
        taken = _take_marks(conn, (user,))
        mark_dirty(conn, [(w, t, pseudonym, m) for (w, t, m) in _mark_groups(taken)])
        marks = len(taken)
        h = models.GatewayHold
        holds = conn.execute(sa.update(h).where(h.user == user).values(user=pseudonym)).rowcount
        settled.move_user(conn, user, pseudonym)  # after the holds: the lock order
        daily, tags, weekly, monthly = (
            _merge_rows(conn, t, user, pseudonym, now) for t in _ROLLUPS
        )
    b = models.Budget
    budget_ids = list(
        conn.execute(
            sa.select(b.id).where(b.scope == "user", b.subject == user).order_by(b.id)
        ).scalars()
    )
    for budget_id in budget_ids:
        delete_budget(conn, budget_id)
    k = models.ApiKey
    key_ids = list(conn.execute(sa.delete(k).where(k.user == user).returning(k.id)).scalars())
    # After the budgets: their alerts are gone with them; what is left may still name the user.
    alerts = _rewrite_alerts(conn, user, pseudonym)
    entries = _rewrite_audit(conn, user, pseudonym)
    return ErasureResult(
        pseudonym=pseudonym,
        delete_events=delete_events,
        events=int(events or 0),
        daily_rows=daily,
        tag_rows=tags,
        weekly_rows=weekly,
        monthly_rows=monthly,
        marks=int(marks),
        holds=int(holds or 0),
        alerts=alerts,
        audit_entries=entries,
        budgets_deleted=budget_ids,
        keys_deleted=sorted(key_ids),
    )


# --- events and roll-ups --------------------------------------------------------------------


def _delete_events(conn: Connection, users: tuple[str, ...], now: datetime) -> int:
    """Keep the events' ids (a replay is then a duplicate), drop their pending generation
    lookups, delete them -> events deleted."""
    e = models.Event
    theirs = sa.select(e.id).where(e.user.in_(users))
    erased = models.ErasedEvent.__table__
    dialect = sqlite_dialect if conn.dialect.name == "sqlite" else pg_dialect
    stamped = sa.select(e.id, sa.literal(now, models.UTCDateTime())).where(e.user.in_(users))
    conn.execute(
        dialect.insert(erased)
        .from_select(["id", "erased_at"], stamped)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    g = models.GenerationLookup
    conn.execute(sa.delete(g).where(g.event_id.in_(theirs)))
    return int(conn.execute(sa.delete(e).where(e.user.in_(users))).rowcount or 0)


def _take_marks(conn: Connection, users: tuple[str, ...]) -> list[Any]:
    """Delete the users' roll-up marks -> their (week_start, team, model) rows.

    On PostgreSQL they are locked first in the writers' order (meter.db.ledger.MARK_ORDER), so
    that a writer holding one of them is waited for and no deadlock can form."""
    d = models.RollupDirty
    theirs = sa.select(d.week_start, d.team, d.model).where(d.user.in_(users))
    if conn.dialect.name == "postgresql":
        theirs = theirs.order_by(sa.text(MARK_ORDER)).with_for_update()
    rows = conn.execute(theirs).all()
    conn.execute(sa.delete(d).where(d.user.in_(users)))
    return list(rows)


def _mark_groups(rows: Iterable[Any]) -> list[tuple[Any, str, str]]:
    return [(r.week_start, r.team, r.model) for r in rows]


def _delete_where(conn: Connection, model: Any, users: tuple[str, ...]) -> int:
    return int(conn.execute(sa.delete(model).where(model.user.in_(users))).rowcount or 0)


def _merge_rows(conn: Connection, model: Any, user: str, pseudonym: str, now: datetime) -> int:
    """Move the user's rows of a roll-up table to the pseudonym, adding them to rows the
    pseudonym has already (same day or week, team, model, tag) -> the user's rows moved.

    One `INSERT ... SELECT ... ON CONFLICT DO UPDATE` (both SQLite and PostgreSQL) and a DELETE:
    exact, and nothing is recounted from raw events, which may have been purged."""
    table: sa.Table = model.__table__
    keys = [c.name for c in table.primary_key.columns]
    summed = [c.name for c in table.columns if c.name not in keys and c.name not in _NOT_SUMMED]
    columns = [c.name for c in table.columns]

    def source(name: str) -> str:
        if name == "user":
            return ":pseudonym"
        if name == "updated_at":
            return ":now"
        return _q(name)

    quoted = ", ".join(_q(c) for c in columns)
    updates = ", ".join(
        [f"{_q(c)} = {table.name}.{_q(c)} + excluded.{_q(c)}" for c in summed]
        + ["updated_at = excluded.updated_at"]
    )
    conn.execute(
        sa.text(
            f"INSERT INTO {table.name} ({quoted}) "
            f"SELECT {', '.join(source(c) for c in columns)} FROM {table.name} "
            f'WHERE "user" = :user '
            f"ON CONFLICT ({', '.join(_q(k) for k in keys)}) "
            f"DO UPDATE SET {updates}"
        ).bindparams(sa.bindparam("now", type_=models.UTCDateTime())),
        {"user": user, "pseudonym": pseudonym, "now": now},
    )
    return _delete_where(conn, model, (user,))


def _q(name: str) -> str:
    return f'"{name}"'  # "user" is a reserved word in PostgreSQL


# --- alerts and audit entries ---------------------------------------------------------------


def _replaced(value: Any, user: str, pseudonym: str) -> Any:
    """`value` (parsed JSON) with every string equal to `user`, key or value, replaced."""
    if isinstance(value, str):
        return pseudonym if value == user else value
    if isinstance(value, dict):
        return {
            _replaced(k, user, pseudonym): _replaced(v, user, pseudonym) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_replaced(v, user, pseudonym) for v in value]
    return value


def _contains(column: InstrumentedAttribute[Any], user: str) -> sa.ColumnElement[bool]:
    """Text of `column` containing `user` as written, or as JSON escapes it (non-ASCII, quotes):
    a cheap filter; what matches is then checked value by value."""
    forms = {user, json.dumps(user)[1:-1]}
    text = sa.cast(column, sa.Text)
    return sa.or_(*(text.like(f"%{_like_escaped(f)}%", escape="/") for f in forms))


def _like_escaped(text: str) -> str:
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _rewrite_alerts(conn: Connection, user: str, pseudonym: str) -> int:
    """Alert payloads naming the user (as the subject of their budget) -> rows rewritten.

    A payload is the exact text a webhook is sent, written as meter.budgets.payload writes it."""
    a = models.Alert
    rows = conn.execute(sa.select(a.id, a.payload).where(_contains(a.payload, user))).all()
    changed = 0
    for row in rows:
        try:
            doc = json.loads(row.payload)
        except ValueError:  # not meter's JSON: rewrite the text itself
            payload = row.payload.replace(user, pseudonym)
        else:
            payload = json.dumps(
                _replaced(doc, user, pseudonym), separators=(",", ":"), ensure_ascii=False
            )
        if payload != row.payload:
            conn.execute(sa.update(a).where(a.id == row.id).values(payload=payload))
            changed += 1
    return changed


def _rewrite_audit(conn: Connection, user: str, pseudonym: str) -> int:
    """Audit entries naming the user (target, or a value of details) -> entries rewritten.
    The one change to the audit log meter ever makes (SPEC section 10)."""
    x = models.AuditEntry
    rows = conn.execute(
        sa.select(x.id, x.target, x.details).where(
            sa.or_(x.target == user, _contains(x.details, user))
        )
    ).all()
    changed = 0
    for row in rows:
        details = json.loads(row.details) if isinstance(row.details, str) else row.details
        new_details = _replaced(details, user, pseudonym)
        target = pseudonym if row.target == user else row.target
        if new_details != details or target != row.target:
            conn.execute(
                sa.update(x).where(x.id == row.id).values(target=target, details=new_details)
            )
            changed += 1
    return changed
