"""Raw events out, in constant memory: keyset pages over the (occurred_at, id) index, oldest
first, each page read in its own short read transaction and rendered as it comes.

Two shapes: the full one (the fields of `GET /v1/events`, costs included) and `for_ingest`, exactly
the fields `POST /v1/events` takes (`EventRecord.to_wire`, the one wire format), so that an
export can be loaded into another meter, which prices it with its own price book. Money is an
exact decimal string (meter.money).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from meter.db import models
from meter.db.session import Database
from meter.events import EventRecord, format_timestamp
from meter.money import render_usd
from meter.weeks import local_midnight_utc

PAGE_SIZE = 2_000

FULL_FIELDS = (
    "id",
    "occurred_at",
    "model",
    "user",
    "team",
    "tags",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "status",
    "usage_source",
    "latency_ms",
    "ttft_ms",
    "generation_id",
    "provider_cost_usd",
    "input_cost_usd",
    "output_cost_usd",
    "cost_usd",
)
# The fields of POST /v1/events, in its order (tests hold it equal to the API's EventIn).
INGEST_FIELDS = (
    "id",
    "occurred_at",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "user",
    "team",
    "tags",
    "status",
    "usage_source",
    "cached_tokens",
    "reasoning_tokens",
    "latency_ms",
    "ttft_ms",
    "generation_id",
    "provider_cost_usd",
)

_E = models.Event
_COLUMNS = models.EVENT_COLUMNS


@dataclass(frozen=True)
class EventFilter:
    start: datetime | None = None  # aware UTC, inclusive
    end: datetime | None = None  # aware UTC, exclusive
    team: str | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        conditions = []
        if self.start is not None:
            conditions.append(_E.occurred_at >= self.start)
        if self.end is not None:
            conditions.append(_E.occurred_at < self.end)
        if self.team is not None:
            conditions.append(_E.team == self.team)
        return conditions


def event_filter(
    tz: ZoneInfo, first: date | None, last: date | None, team: str | None
) -> EventFilter:
    """Local dates in the database's timezone, both inclusive -> [start, end) in UTC."""
    if first is not None and last is not None and last < first:
        raise ValueError(f"to: {last} is before from ({first})")
    return EventFilter(
        start=None if first is None else _midnight(first, tz),
        end=None if last is None or last == date.max else _midnight(last + timedelta(days=1), tz),
        team=team,
    )


def _midnight(day: date, tz: ZoneInfo) -> datetime | None:
    """The day's local midnight in UTC; None (no bound) at the ends of the calendar, where no
    event can be anyway."""
    try:
        return local_midnight_utc(day, tz)
    except OverflowError:
        return None


def count_events(db: Database, flt: EventFilter) -> int:
    """How many events the filter covers now (for a progress bar; more may arrive)."""
    with db.engine.connect().execution_options(readonly=True) as conn:
        stmt = sa.select(sa.func.count()).select_from(_E).where(*flt.where())
        return int(conn.execute(stmt).scalar_one())


def pages(db: Database, flt: EventFilter, page_size: int = PAGE_SIZE) -> Iterator[Sequence[Any]]:
    """The filter's events, oldest first, a page (a short read transaction) at a time.

    Keyset paging on (occurred_at, id): no OFFSET, and no transaction held between pages, so a
    long export blocks neither ingest nor the roll-up."""
    after: tuple[datetime, Any] | None = None
    while True:
        stmt = sa.select(*_COLUMNS).where(*flt.where())
        if after is not None:
            at, last_id = after
            stmt = stmt.where(
                sa.or_(_E.occurred_at > at, sa.and_(_E.occurred_at == at, _E.id > last_id))
            )
        stmt = stmt.order_by(_E.occurred_at, _E.id).limit(page_size)
        with db.engine.connect().execution_options(readonly=True) as conn:
            rows = conn.execute(stmt).all()
        if rows:
            yield rows
        if len(rows) < page_size:
            return
        after = (rows[-1].occurred_at, rows[-1].id)


def _tags(value: Any) -> dict[str, str] | None:
    if isinstance(value, str):  # some drivers hand JSON back as text
        value = json.loads(value)
    return dict(value) if value else None


def full_doc(r: Any) -> dict[str, Any]:
    """An event as `GET /v1/events` shows it (unset fields as null)."""
    priced = r.input_cost_units is not None and r.output_cost_units is not None
    return {
        "id": str(r.id),
        "occurred_at": format_timestamp(r.occurred_at),
        "model": r.model,
        "user": r.user or None,
        "team": r.team or None,
        "tags": _tags(r.tags),
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cached_tokens": r.cached_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "status": r.status,
        "usage_source": r.usage_source,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "generation_id": r.generation_id,
        "provider_cost_usd": render_usd(r.provider_cost_units),
        "input_cost_usd": render_usd(r.input_cost_units),
        "output_cost_usd": render_usd(r.output_cost_units),
        "cost_usd": render_usd(r.input_cost_units + r.output_cost_units) if priced else None,
    }


def ingest_doc(r: Any) -> dict[str, Any]:
    """An event as `POST /v1/events` takes it: the wire format, unset fields left out."""
    cost = render_usd(r.provider_cost_units)
    return EventRecord(
        r.id,
        r.occurred_at,
        r.model,
        r.prompt_tokens,
        r.completion_tokens,
        r.user or None,
        r.team or None,
        _tags(r.tags),
        r.status,
        r.usage_source,
        r.cached_tokens,
        r.reasoning_tokens,
        r.latency_ms,
        r.ttft_ms,
        r.generation_id,
        None if cost is None else Decimal(cost),
    ).to_wire()


def jsonl_lines(rows: Iterable[Any], for_ingest: bool) -> Iterator[str]:
    """One JSON object per line (`\\n`-terminated)."""
    render = ingest_doc if for_ingest else full_doc
    for r in rows:
        yield json.dumps(render(r), ensure_ascii=False, separators=(",", ":")) + "\n"


def csv_lines(rows: Iterable[Any], for_ingest: bool) -> Iterator[str]:
    """A header row, then one row per event; tags as a JSON object, unset fields empty."""
    fields = INGEST_FIELDS if for_ingest else FULL_FIELDS
    render = ingest_doc if for_ingest else full_doc
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(fields)
    yield take()
    for r in rows:
        doc = render(r)
        tags = doc.get("tags")
        doc["tags"] = None if tags is None else json.dumps(tags, ensure_ascii=False)
        writer.writerow(["" if doc.get(f) is None else doc[f] for f in fields])
        yield take()
