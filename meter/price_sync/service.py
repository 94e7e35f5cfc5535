"""Price sync against a database: the caller owns the transaction (and commits it)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from meter.db.ledger import load_price_book
from meter.db.prices import add_price, lock_price_book
from meter.price_sync.diff import PriceDiff, diff_catalogue
from meter.pricing import Price, parse_openrouter_catalogue


def plan(
    conn: Connection, catalogue: Mapping[str, Any], at: datetime, model: str | None = None
) -> PriceDiff:
    """The difference between `catalogue` and the prices in effect at `at`. Writes nothing."""
    return diff_catalogue(parse_openrouter_catalogue(catalogue), load_price_book(conn), at, model)


def apply(conn: Connection, diff: PriceDiff) -> list[Price]:
    """Add the new and changed prices as versions effective from `diff.at`.

    Only inserts: no stored price or event cost changes. `sync` computes the difference in
    the same transaction, under a lock.
    """
    return [add_price(conn, price) for price in diff.prices()]


def sync(
    conn: Connection, catalogue: Mapping[str, Any], model: str | None = None
) -> tuple[PriceDiff, list[Price]]:
    """Compare and apply in one transaction, effective now: -> (difference, prices added).

    The book is locked first, so that two syncs at once add each change once.
    """
    lock_price_book(conn)
    diff = plan(conn, catalogue, datetime.now(UTC), model)
    return diff, apply(conn, diff)
