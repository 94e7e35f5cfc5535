"""The generation lookups' SQL: find what is due, claim it, write what the provider said.

Services never commit: `meter.reconcile.lookups` owns every transaction and calls these in it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meter.db import models, settled
from meter.pricing import Cost, Price
from meter.reconcile.generation import Generation

_lookups = models.GenerationLookup
_events = models.Event


@dataclass(frozen=True)
class Claim:
    """A lookup this process may work on until `lease_until`: the value it set, which every
    later write checks (a fence), so that a lookup taken over after its lease expired is
    written by its new holder only."""

    event_id: uuid.UUID
    generation_id: str
    attempts: int
    deadline_at: datetime
    lease_until: datetime


@dataclass(frozen=True)
class EventFacts:
    """What the reconciliation needs of an event: its roll-up group, usage source and cost."""

    week_start: date
    team: str
    user: str
    model: str
    usage_source: str
    price_id: int | None
    cost_units: int  # input + output; 0 when unpriced


def due(conn: Connection, now: datetime, limit: int) -> list[uuid.UUID]:
    """Pending lookups whose next attempt is due, the longest waiting first."""
    rows = conn.execute(
        sa.select(_lookups.event_id)
        .where(_lookups.state == "pending", _lookups.next_attempt_at <= now)
        .order_by(_lookups.next_attempt_at)
        .limit(limit)
    )
    return list(rows.scalars())


def all_pending(conn: Connection) -> list[uuid.UUID]:
    """Every pending lookup whatever its backoff (`meter reconcile lookups`)."""
    rows = conn.execute(
        sa.select(_lookups.event_id)
        .where(_lookups.state == "pending")
        .order_by(_lookups.next_attempt_at)
    )
    return list(rows.scalars())


def count_by_state(conn: Connection) -> dict[str, int]:
    rows = conn.execute(sa.select(_lookups.state, sa.func.count()).group_by(_lookups.state)).all()
    return {state: int(n) for state, n in rows}


def claim(
    conn: Connection,
    event_id: uuid.UUID,
    now: datetime,
    lease_until: datetime,
    *,
    due_only: bool,
) -> Claim | None:
    """Take a pending lookup by pushing its next attempt to `lease_until` (a conditional UPDATE:
    of two processes, one changes the row, the other then finds it not due). `due_only=False`
    takes it whatever its backoff, and also from a holder still working on it: that holder's
    result is then fenced out, and the worst case is the same generation looked up twice."""
    cond = [_lookups.event_id == event_id, _lookups.state == "pending"]
    if due_only:
        cond.append(_lookups.next_attempt_at <= now)
    row = conn.execute(
        sa.update(_lookups)
        .where(*cond)
        .values(next_attempt_at=lease_until)
        .returning(_lookups.generation_id, _lookups.attempts, _lookups.deadline_at)
    ).first()
    if row is None:
        return None
    return Claim(event_id, row.generation_id, row.attempts, row.deadline_at, lease_until)


def _fenced(claim: Claim) -> list[sa.ColumnElement[bool]]:
    return [
        _lookups.event_id == claim.event_id,
        _lookups.state == "pending",
        _lookups.next_attempt_at == claim.lease_until,
    ]


def finish(conn: Connection, claim: Claim, state: str, last_error: str | None) -> bool:
    """End a claimed lookup (`done` or `unavailable`) -> False if the claim was lost."""
    return bool(
        conn.execute(
            sa.update(_lookups)
            .where(*_fenced(claim))
            .values(state=state, attempts=claim.attempts + 1, last_error=_clip(last_error))
        ).rowcount
    )


def retry_later(conn: Connection, claim: Claim, at: datetime, last_error: str) -> bool:
    """One more attempt made; the next one at `at` -> False if the claim was lost."""
    return bool(
        conn.execute(
            sa.update(_lookups)
            .where(*_fenced(claim))
            .values(next_attempt_at=at, attempts=claim.attempts + 1, last_error=_clip(last_error))
        ).rowcount
    )


def release(conn: Connection, claim: Claim, at: datetime) -> None:
    """Give a claim back unused (no attempt counted), due again at `at`."""
    conn.execute(sa.update(_lookups).where(*_fenced(claim)).values(next_attempt_at=at))


def event_facts(conn: Connection, event_id: uuid.UUID) -> EventFacts | None:
    row = conn.execute(
        sa.select(
            _events.week_start,
            _events.team,
            _events.user,
            _events.model,
            _events.usage_source,
            _events.price_id,
            _events.input_cost_units,
            _events.output_cost_units,
        ).where(_events.id == event_id)
    ).first()
    if row is None:
        return None
    week_start = row.week_start
    if not isinstance(week_start, date):
        week_start = date.fromisoformat(str(week_start))
    return EventFacts(
        week_start=week_start,
        team=row.team,
        user=row.user,
        model=row.model,
        usage_source=row.usage_source,
        price_id=row.price_id,
        cost_units=(row.input_cost_units or 0) + (row.output_cost_units or 0),
    )


def price_version(conn: Connection, price_id: int) -> Price | None:
    """The price version an event was priced with (a cost is recomputed at that one only)."""
    p = models.Price
    row = conn.execute(
        sa.select(p.model, p.input_units, p.output_units, p.effective_from, p.context_length).where(
            p.id == price_id
        )
    ).first()
    if row is None:
        return None
    return Price(
        row.model,
        row.input_units,
        row.output_units,
        row.effective_from,
        row.context_length,
        id=price_id,
    )


def reconcile_event(
    conn: Connection, event_id: uuid.UUID, generation: Generation, cost: Cost | None
) -> bool:
    """Replace an estimated event's usage with the provider's figures -> False if it is no
    longer estimated. The estimate moves to `estimated_*` (SQL assigns from the old row); the
    cost is the one exception to "a cost, once set, is frozen" (SPEC section 9)."""
    values: dict[str, object] = {
        "estimated_prompt_tokens": _events.prompt_tokens,
        "estimated_completion_tokens": _events.completion_tokens,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "usage_source": "reconciled",
        "input_cost_units": None if cost is None else cost.input_units,
        "output_cost_units": None if cost is None else cost.output_units,
    }
    if generation.cost_units is not None:
        values["provider_cost_units"] = generation.cost_units
    if generation.reasoning_tokens is not None:
        values["reasoning_tokens"] = generation.reasoning_tokens
    if generation.cached_tokens is not None:
        values["cached_tokens"] = generation.cached_tokens
    return bool(
        conn.execute(
            sa.update(_events)
            .where(_events.id == event_id, _events.usage_source == "estimated")
            .values(values)
        ).rowcount
    )


def settle_gateway_hold(conn: Connection, event_id: uuid.UUID, cost_units: int) -> bool:
    """Turn a cancelled or cut-short gateway call's budget hold into its exact cost.

    The gateway keeps such a call's full worst-case reservation (`held`) because its estimate
    may be short of what the provider bills; once the provider's figures are in, or the lookup
    has given up and the estimate is all there will ever be, the reservation must become the
    event's exact cost (0 when unpriced). It runs in the transaction that reconciles the event
    or gives up on it, so a budget check never sees the new cost without the reservation's
    release, nor the reverse; the cost joins the hold's group of meter.db.settled in it too.
    Holds in other states are not ours to change. -> True if settled.
    """
    h = models.GatewayHold
    changed = conn.execute(
        sa.update(h)
        .where(h.event_id == event_id, h.state == "held")
        .values(state="settled", amount_units=cost_units, expires_at=None)
        .returning(h.day, h.team, h.user, h.tags)
    ).first()
    if changed is None:
        return False
    settled.add(conn, changed.day, changed.team, changed.user, changed.tags, cost_units)
    return True


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:500]
