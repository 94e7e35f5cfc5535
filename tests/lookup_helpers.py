"""Helpers for the generation-lookup tests: settings, calls that leave an estimate, rows to read."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from meter import Meter, MeteredClient
from meter.db import models
from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database
from meter.reconcile import LookupPolicy
from meter.settings import Settings, get_settings
from tests.client_helpers import HELLO, MODEL
from tests.factories import event
from tests.gateway_helpers import assert_settled_totals_exact

UPSTREAM_KEY = "sk-or-lookup-test"
# Retries within a test's patience: the production backoff starts at 5 s.
QUICK = LookupPolicy(rps=50, first_retry=timedelta(seconds=0.2), max_retry=timedelta(seconds=1))


def lookup_settings(db_url: str, upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "upstream_base_url": upstream_url,
        "OPENROUTER_API_KEY": UPSTREAM_KEY,
        "webhook_allow_private": True,
    }
    values.update(overrides)
    return get_settings(**values)


def cancelled_stream(upstream_url: str, meter: Meter, chunks: int = 4) -> str:
    """A real streamed call the caller leaves early -> the generation id it was given."""
    client = MeteredClient(
        base_url=upstream_url, api_key=UPSTREAM_KEY, meter=meter, user="alice", team="search"
    )
    with client, client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
        for i, _chunk in enumerate(stream):
            if i + 1 == chunks:
                break
    assert stream.meter is not None and stream.meter.status == "cancelled"
    assert meter.flush(10)
    return str(stored_event(meter_url(meter), stream.meter.event_id)["generation_id"])


def meter_url(meter: Meter) -> str:
    return meter.settings.database_url


def stored_event(url: str, event_id: str | uuid.UUID) -> dict[str, Any]:
    from meter.db.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(models.Event).where(models.Event.id == uuid.UUID(str(event_id)))
            ).one()
    finally:
        engine.dispose()
    return dict(row._mapping)


def estimated_event(
    db: Database,
    generation_id: str,
    window: timedelta = timedelta(hours=1),
    occurred_at: datetime | None = None,
    **fields: Any,
) -> uuid.UUID:
    """Store an estimated (cancelled) event through the ledger, as every writer does."""
    e = event(
        occurred_at=occurred_at or datetime.now(UTC) - timedelta(seconds=1),
        status="cancelled",
        usage_source="estimated",
        prompt_tokens=9,
        completion_tokens=7,
        user="alice",
        team="search",
        generation_id=generation_id,
        **fields,
    )
    with db.engine.begin() as conn:
        insert_events(conn, [e], load_price_book(conn), db.tz, lookup_window=window)
    return e.id


@dataclass(frozen=True)
class LookupRow:
    state: str
    attempts: int
    next_attempt_at: datetime
    deadline_at: datetime
    last_error: str | None


def lookup_row(db: Database, event_id: uuid.UUID) -> LookupRow | None:
    g = models.GenerationLookup
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(g.state, g.attempts, g.next_attempt_at, g.deadline_at, g.last_error).where(
                g.event_id == event_id
            )
        ).first()
    return None if row is None else LookupRow(*row)


def add_hold(db: Database, event_id: uuid.UUID, state: str, amount_units: int) -> None:
    """A gateway budget hold, as the gateway leaves one for a cancelled call."""
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(models.GatewayHold).values(
                event_id=event_id,
                team="search",
                user="alice",
                model=MODEL,
                day=now.date(),
                week_start=now.date() - timedelta(days=now.weekday()),
                state=state,
                amount_units=amount_units,
                reserved_units=amount_units,
                expires_at=None if state != "open" else now + timedelta(minutes=5),
                created_at=now,
            )
        )


def hold(db: Database, event_id: uuid.UUID) -> tuple[str, int, datetime | None] | None:
    """(state, amount, expiry) of an event's hold; None once the roll-up took it over. The
    settled totals checked."""
    assert_settled_totals_exact(db)
    h = models.GatewayHold
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(h.state, h.amount_units, h.expires_at).where(h.event_id == event_id)
        ).first()
    return None if row is None else (row.state, int(row.amount_units), row.expires_at)
