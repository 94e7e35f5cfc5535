"""Price book storage: list, add (never change), and price the events that were unpriced."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db import models
from meter.db.ledger import load_price_book, mark_dirty
from meter.pricing import Price
from meter.weeks import Week

# pg_advisory_xact_lock key of writers that compare with the book before they add to it.
PRICE_BOOK_LOCK_ID = 0x6D657465_72707273  # "meterprs"


class PriceExists(Exception):
    """A price for that (model, effective_from) is already in the book."""


def lock_price_book(conn: Connection) -> None:
    """Serialise writers that read the book then add to it, until the transaction ends.

    SQLite needs nothing: every write transaction there is a `BEGIN IMMEDIATE`.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PRICE_BOOK_LOCK_ID})


def price_book_version(conn: Connection) -> tuple[int, int]:
    """Changes whenever a price is added (prices are never edited or deleted): the number of
    versions and the highest id. The count catches a lower id committed after a higher one."""
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.max(models.Price.id), 0))
    ).one()
    return int(row[0]), int(row[1])


def list_prices(conn: Connection, model: str | None = None) -> list[Price]:
    book = load_price_book(conn)
    prices = [p for p in book if model is None or p.model == model]
    return sorted(prices, key=lambda p: (p.model, p.effective_from))


def add_price(conn: Connection, price: Price) -> Price:
    """Add a price version. Prices are never edited: a new version takes effect from its date."""
    exists = conn.execute(
        sa.select(models.Price.id).where(
            models.Price.model == price.model, models.Price.effective_from == price.effective_from
        )
    ).first()
    if exists:
        raise PriceExists(
            f"{price.model} already has a price from {price.effective_from.isoformat()}"
        )
    new_id = conn.execute(
        sa.insert(models.Price)
        .values(
            model=price.model,
            input_units=price.input_units,
            output_units=price.output_units,
            effective_from=price.effective_from,
            context_length=price.context_length,
            created_at=datetime.now(UTC),
        )
        .returning(models.Price.id)
    ).scalar_one()
    return Price(
        price.model,
        price.input_units,
        price.output_units,
        price.effective_from,
        price.context_length,
        id=new_id,
    )


@dataclass(frozen=True)
class RepriceResult:
    events: int
    weeks: list[str]


def reprice(conn: Connection) -> RepriceResult:
    """Price the unpriced events that a price now covers; their groups are rolled up again.

    Events already priced are never touched: a cost, once set, is frozen.
    """
    book = load_price_book(conn)
    e = models.Event
    models_unpriced = (
        conn.execute(sa.select(e.model).where(e.price_id.is_(None)).distinct()).scalars().all()
    )
    total = 0
    touched: set[tuple[date, str, str, str]] = set()
    for model in models_unpriced:
        versions = sorted((p for p in book if p.model == model), key=lambda p: p.effective_from)
        for i, price in enumerate(versions):
            until = versions[i + 1].effective_from if i + 1 < len(versions) else None
            cond = [e.model == model, e.price_id.is_(None), e.occurred_at >= price.effective_from]
            if until is not None:
                cond.append(e.occurred_at < until)
            groups = conn.execute(
                sa.select(e.week_start, e.team, e.user, e.model).where(*cond).distinct()
            ).all()
            if not groups:
                continue
            result = conn.execute(
                sa.update(e)
                .where(*cond)
                .values(
                    price_id=price.id,
                    input_cost_units=e.prompt_tokens * price.input_units,
                    output_cost_units=e.completion_tokens * price.output_units,
                )
            )
            total += result.rowcount
            touched.update((g[0], g[1], g[2], g[3]) for g in groups)
    mark_dirty(conn, touched)
    weeks = sorted({Week(g[0]).label for g in touched})
    return RepriceResult(total, weeks)
