"""The gateway's settled totals: the exact cost of its settled holds, per (day, team, user, tags).

A hard budget's admission adds to the roll-up's total the cost of the gateway calls that have
ended but are not rolled up yet (meter.gateway.holds). Summed from the holds, that is one row
per call of the last roll-up interval, and a global budget's admission grew with every call of
that minute; summed from these totals it is one row per group.

Every writer of a settled hold keeps its group equal to the sum of the group's settled holds,
in the same transaction, so that every snapshot sees both agree:

- a settlement (the gateway's, or a generation lookup's for a call cut short) adds the hold's
  exact cost to its group: `add`, or meter.gateway.repository.settle on the hot path;
- the roll-up chunk that deletes settled holds, having counted their events, subtracts them:
  `subtract`, from what the DELETE returned;
- an erasure deletes the user's groups with the user's holds, or moves them to the pseudonym:
  `move_user`.

On PostgreSQL each of them locks the hold rows first, then the groups' rows in key order, so
they cannot deadlock with one another. The group's key is the hold's own day, team and user
(never the caller's idea of them: an erasure may have renamed the user meanwhile) and the
digest of its tags (`tags_key`), since tags may be longer than an index entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from meter.db import models

G = models.GatewaySettled
KEY = ("day", "team", "user", "tags_key")

GroupKey = tuple[date, str, str, str]


def tags_key(tags: Mapping[str, str] | None) -> str:
    """The key of a set of tags among the groups: "" for none, else a digest of its canonical
    JSON (a call's tags may be far longer than an index entry may be)."""
    if not tags:
        return ""
    canonical = json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@functools.cache
def upsert(dialect_name: str) -> Any:
    """INSERT one group, or add its amount to the group's row: parameters day, team, user,
    tags_key, tags, amount_units."""
    dialect = pg_dialect if dialect_name == "postgresql" else sqlite_dialect
    insert = dialect.insert(G)
    return insert.on_conflict_do_update(
        index_elements=list(KEY),
        set_={"amount_units": G.amount_units + insert.excluded.amount_units},
    )


def summed(holds: Iterable[Any]) -> dict[GroupKey, dict[str, Any]]:
    """Holds (rows with day, team, user, tags, amount_units) summed into their groups' rows
    (upsert's parameters), by key, in key order."""
    groups: dict[GroupKey, dict[str, Any]] = {}
    for hold in holds:
        tags = json.loads(hold.tags) if isinstance(hold.tags, str) else hold.tags
        key = (hold.day, hold.team, hold.user, tags_key(tags))
        group = groups.get(key)
        if group is None:
            groups[key] = dict(zip(KEY, key, strict=True), tags=tags, amount_units=0)
            group = groups[key]
        group["amount_units"] += int(hold.amount_units)
    return dict(sorted(groups.items()))


def add(
    conn: Connection, day: date, team: str, user: str, tags: dict[str, str] | None, units: int
) -> None:
    """Add a hold just settled at `units` to its group (in the settlement's transaction)."""
    row = dict(zip(KEY, (day, team, user, tags_key(tags)), strict=True))
    conn.execute(upsert(conn.dialect.name), {**row, "tags": tags, "amount_units": units})


_IN_GROUP = (
    G.day == sa.bindparam("k_day"),
    G.team == sa.bindparam("k_team"),
    G.user == sa.bindparam("k_user"),
    G.tags_key == sa.bindparam("k_tags_key"),
)
_SUBTRACT = (
    sa.update(G)
    .where(*_IN_GROUP)
    .values(amount_units=G.amount_units - sa.bindparam("k_amount_units", type_=sa.BigInteger()))
)
_EMPTIED = sa.delete(G).where(*_IN_GROUP, G.amount_units == 0)


def subtract(conn: Connection, holds: Iterable[Any]) -> int:
    """Take settled holds just deleted (rows with day, team, user, tags, amount_units) out of
    their groups, in key order; a group left at zero goes -> the groups changed."""
    keys = [{f"k_{c}": v for c, v in g.items() if c != "tags"} for g in summed(holds).values()]
    if keys:
        conn.execute(_SUBTRACT, keys)
        conn.execute(_EMPTIED, keys)
    return len(keys)


def delete_users(conn: Connection, users: Iterable[str]) -> int:
    """Erasure with the events: the users' groups go with their holds."""
    return int(conn.execute(sa.delete(G).where(G.user.in_(list(users)))).rowcount or 0)


def move_user(conn: Connection, user: str, pseudonym: str) -> int:
    """Erasure keeping the events: the user's groups become the pseudonym's, added to groups
    the pseudonym has already (after the user's holds were renamed, in the same transaction)
    -> the user's groups moved."""
    query = sa.select(G.day, G.team, G.tags_key, G.tags, G.amount_units).where(G.user == user)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    rows = conn.execute(query.order_by(G.day, G.team, G.tags_key)).all()
    if not rows:
        return 0
    conn.execute(sa.delete(G).where(G.user == user))
    moved = [{**r._asdict(), "user": pseudonym} for r in rows]
    conn.execute(upsert(conn.dialect.name), moved)
    return len(rows)


def totals_by_group(conn: Connection) -> dict[GroupKey, int]:
    """Every group's amount but zeros (for checks and tests: a group left at zero may go while
    a hold that cost nothing is still there)."""
    rows = conn.execute(sa.select(G.day, G.team, G.user, G.tags_key, G.amount_units)).all()
    return {
        (r.day, r.team, r.user, r.tags_key): int(r.amount_units) for r in rows if r.amount_units
    }


def recount(conn: Connection) -> dict[GroupKey, int]:
    """The groups' amounts as the settled holds add up (what `totals_by_group` must equal)."""
    h = models.GatewayHold
    rows = conn.execute(
        sa.select(h.day, h.team, h.user, h.tags, h.amount_units).where(h.state == "settled")
    ).all()
    return {k: g["amount_units"] for k, g in summed(rows).items() if g["amount_units"]}
