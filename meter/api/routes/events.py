"""`POST /v1/events` (ingest: atomic, idempotent by id, priced here) and `GET /v1/events`.

Ingest validates the raw body with one pydantic pass over the JSON bytes (no intermediate
dicts) and stores through `meter.db.ledger.insert_events`, the one way events are stored. A key
scoped to a team writes that team's events only; an event it sends without a team is that
team's. Costs are never taken from the client: the price book sets them.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from meter.api.auth import IngestPrincipal, ReadPrincipal, scoped_team
from meter.api.deps import DbDep, SettingsDep
from meter.api.errors import invalid
from meter.api.schemas import (
    AUTH_ERRORS,
    EARLIEST,
    MAX_FUTURE,
    NO_NUL,
    RFC3339_HINT,
    RFC3339_PATTERN,
    InputTimestamp,
    Money,
    Name,
    NameQuery,
    Problem,
    TagKey,
    TagValue,
    Timestamp,
    money,
    rfc3339_to_datetime,
)
from meter.db import models
from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database
from meter.events import (
    ERASED_PREFIX,
    MAX_MILLIS,
    MAX_TAGS,
    MAX_TOKENS_PER_EVENT,
    EventRecord,
    InsertResult,
)
from meter.metrics import EVENTS_INGESTED

router = APIRouter(tags=["events"])

MAX_BATCH = 10_000
MAX_TOKENS = MAX_TOKENS_PER_EVENT
MAX_MS = MAX_MILLIS

Status = Literal["ok", "incomplete", "cancelled", "error"]
UsageSource = Literal["provider", "estimated", "none"]
TokenCount = Annotated[int, Strict(), Field(ge=0, le=MAX_TOKENS)]
Millis = Annotated[int, Strict(), Field(ge=0, le=MAX_MS)]
GenerationId = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)
]


# Validation runs in pydantic's core with no Python call per field (a Python validator costs
# microseconds per event, more than the rest of an event's validation): shapes are checked by
# patterns there, and the few checks that need Python run in one loop in `_records`.
OccurredAtText = Annotated[
    str,
    Strict(),
    StringConstraints(pattern=RFC3339_PATTERN),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 with an offset; at most 5 minutes in the future",
            "examples": ["2026-11-24T12:00:00Z"],
        }
    ),
]
ProviderCostText = Annotated[
    str,
    Strict(),
    StringConstraints(pattern=r"^\d{1,7}(\.\d{1,24})?$"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{1,7}(\.\d{1,24})?$",
            "description": "What the provider billed (OpenRouter's usage.cost), USD as a string",
            "examples": ["0.0000632"],
        }
    ),
]
# Friendlier words for the errors of the patterns above.
_PATTERN_HINTS = {
    "occurred_at": RFC3339_HINT,
    "provider_cost_usd": 'give the cost as a plain decimal string, e.g. "0.0000632"',
}

EVENT_EXAMPLE: dict[str, Any] = {
    "id": "019ab7c4-5f2e-7a10-8b3c-2d4e6f809a1b",
    "occurred_at": "2026-11-24T12:00:00Z",
    "model": "mistralai/mistral-7b-instruct-v0.1",
    "prompt_tokens": 120,
    "completion_tokens": 64,
    "user": "alice",
    "team": "search",
    "tags": {"feature": "autocomplete"},
    "status": "ok",
    "usage_source": "provider",
    "latency_ms": 830,
    "generation_id": "gen-1764000000-abc",
    "provider_cost_usd": "0.00002536",
}


class EventIn(BaseModel):
    """One LLM call. Unknown fields are refused, `cost_usd` included: the server prices it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EVENT_EXAMPLE]})

    id: uuid.UUID = Field(description="Client-made, time-ordered (UUIDv7); the idempotency key")
    occurred_at: OccurredAtText
    model: Name
    prompt_tokens: TokenCount
    completion_tokens: TokenCount
    user: Name | None = None
    team: Name | None = None
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS)] | None = None
    status: Status = "ok"
    usage_source: UsageSource = "provider"
    cached_tokens: TokenCount | None = None
    reasoning_tokens: TokenCount | None = None
    latency_ms: Millis | None = None
    ttft_ms: Millis | None = None
    generation_id: GenerationId | None = None
    provider_cost_usd: ProviderCostText | None = None


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)]


class IngestResult(BaseModel):
    inserted: int = Field(description="Events stored by this request")
    duplicates: int = Field(description="Events whose id was already stored (or repeated)")
    expired: int = Field(
        0,
        description=(
            "Events older than the purge cutoff (whole local days whose raw events were purged): "
            "not stored, since those days' totals are final"
        ),
    )


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _ingest_schema() -> dict[str, Any]:
    # The body is validated by hand (for speed), so FastAPI cannot see its model: describe it
    # here, self-contained, so that /docs and API clients know the exact shape.
    schema = IngestRequest.model_json_schema()
    defs = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline_refs(schema, defs)
    return inlined


_INGEST_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _ingest_schema(),
                "example": {"events": [EVENT_EXAMPLE]},
            }
        },
    }
}


def _parse_batch(body: bytes) -> IngestRequest:
    try:
        return IngestRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_url=False):
            hint = _PATTERN_HINTS.get(str(e["loc"][-1])) if e["loc"] else None
            if hint and e["type"] in ("string_pattern_mismatch", "string_type"):
                e = {**e, "msg": hint}
            errors.append({**e, "loc": ("body", *e["loc"])})
        raise RequestValidationError(errors) from None


def _records(batch: IngestRequest, team_scope: str | None) -> list[EventRecord]:
    """Validated events -> EventRecords: timestamps parsed and bounded, team scope enforced."""
    latest = datetime.now(UTC) + MAX_FUTURE
    records = []
    errors: list[dict[str, Any]] = []
    for i, e in enumerate(batch.events):
        try:
            occurred_at = rfc3339_to_datetime(e.occurred_at)
            if occurred_at.tzinfo is not UTC:
                occurred_at = occurred_at.astimezone(UTC)
            if occurred_at > latest:
                raise ValueError("is more than 5 minutes in the future: check the caller's clock")
            if occurred_at < EARLIEST:
                raise ValueError("must not be before 1970-01-01T00:00:00Z")
        except (ValueError, OverflowError) as exc:
            msg = "is out of range" if isinstance(exc, OverflowError) else str(exc)
            errors.append(
                {"type": "value_error", "loc": ("body", "events", i, "occurred_at"), "msg": msg}
            )
            continue
        if e.user is not None and e.user.startswith(ERASED_PREFIX):
            errors.append(
                {
                    "type": "value_error",
                    "loc": ("body", "events", i, "user"),
                    "msg": f"must not start with {ERASED_PREFIX!r}: such ids are the "
                    "pseudonyms of erased users",
                }
            )
            continue
        team = e.team
        if team_scope is not None:
            if team is None:
                team = team_scope
            elif team != team_scope:
                raise HTTPException(
                    403, detail=f"events[{i}].team: this key may only write team {team_scope!r}"
                )
        cost = None if e.provider_cost_usd is None else Decimal(e.provider_cost_usd)
        # Positional: this runs for every event of every batch (see EventRecord's field order).
        records.append(
            EventRecord(
                e.id,
                occurred_at,
                e.model,
                e.prompt_tokens,
                e.completion_tokens,
                e.user,
                team,
                e.tags,
                e.status,
                e.usage_source,
                e.cached_tokens,
                e.reasoning_tokens,
                e.latency_ms,
                e.ttft_ms,
                e.generation_id,
                cost,
            )
        )
    if errors:
        raise RequestValidationError(errors)
    return records


def _store(db: Database, records: list[EventRecord], lookup_window: timedelta) -> InsertResult:
    # One transaction: the whole batch is stored, or none of it.
    with db.engine.begin() as conn:
        return insert_events(
            conn, records, load_price_book(conn), db.tz, lookup_window=lookup_window
        )


@router.post(
    "/v1/events",
    response_model=IngestResult,
    summary="Store a batch of events",
    description=(
        "1 to 10,000 events, stored atomically: one invalid event rejects the batch (422 naming "
        "it, e.g. `events[3].occurred_at`). Idempotent by `id`: an id already stored, or repeated "
        "in the batch, counts as a duplicate. Costs are computed from the price book. A key "
        "scoped to a team may only send that team's events; events without a team get it. "
        "A user id starting with `erased-` (an erased user's pseudonym) is refused."
    ),
    openapi_extra=_INGEST_OPENAPI,
    responses={**AUTH_ERRORS, 413: {"model": Problem, "description": "Body over 8 MiB"}},
)
async def ingest_events(
    request: Request, principal: IngestPrincipal, db: DbDep, settings: SettingsDep
) -> IngestResult:
    batch = _parse_batch(await request.body())
    records = _records(batch, principal.team)
    window = timedelta(seconds=settings.lookup_window_seconds)
    result = await run_in_threadpool(_store, db, records, window)
    EVENTS_INGESTED.inc(result.inserted)
    return IngestResult(
        inserted=result.inserted, duplicates=result.duplicates, expired=result.expired
    )


class EventOut(BaseModel):
    id: uuid.UUID
    occurred_at: Timestamp
    model: str
    user: str | None
    team: str | None
    tags: dict[str, str] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None
    reasoning_tokens: int | None
    status: str
    usage_source: str
    latency_ms: int | None
    ttft_ms: int | None
    generation_id: str | None
    provider_cost_usd: Money | None = Field(description="What the provider reported, if anything")
    input_cost_usd: Money | None = Field(description="null when the event is unpriced")
    output_cost_usd: Money | None
    cost_usd: Money | None = Field(description="input + output; null when unpriced, never $0")


class EventPage(BaseModel):
    events: list[EventOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next, older page")


def _encode_cursor(occurred_at: datetime, event_id: uuid.UUID) -> str:
    micros = (occurred_at - EARLIEST) // _MICROSECOND
    raw = f"{micros}:{event_id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - EARLIEST


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, _, hex_id = raw.partition(":")
        return EARLIEST + int(micros) * _MICROSECOND, uuid.UUID(hex=hex_id)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise invalid(("query", "cursor"), "not a cursor this API returned") from None


_E = models.Event
_COLUMNS = models.EVENT_COLUMNS


def _event_out(r: Any) -> EventOut:
    total = (
        None
        if r.input_cost_units is None or r.output_cost_units is None
        else r.input_cost_units + r.output_cost_units
    )
    return EventOut(
        id=r.id,
        occurred_at=r.occurred_at,
        model=r.model,
        user=r.user or None,
        team=r.team or None,
        tags=r.tags,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        cached_tokens=r.cached_tokens,
        reasoning_tokens=r.reasoning_tokens,
        status=r.status,
        usage_source=r.usage_source,
        latency_ms=r.latency_ms,
        ttft_ms=r.ttft_ms,
        generation_id=r.generation_id,
        provider_cost_usd=money(r.provider_cost_units),
        input_cost_usd=money(r.input_cost_units),
        output_cost_usd=money(r.output_cost_units),
        cost_usd=money(total),
    )


@router.get(
    "/v1/events",
    response_model=EventPage,
    summary="List events, newest first",
    responses=AUTH_ERRORS,
)
def list_events(
    principal: ReadPrincipal,
    db: DbDep,
    user: Annotated[NameQuery | None, Query(description="Only this user's events")] = None,
    team: Annotated[NameQuery | None, Query(description="Only this team's events")] = None,
    model: Annotated[NameQuery | None, Query(description="Only this model's events")] = None,
    status: Annotated[Status | None, Query(description="Only events with this status")] = None,
    since: Annotated[
        InputTimestamp | None, Query(description="RFC 3339 with an offset: events at or after it")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
) -> EventPage:
    team = scoped_team(principal, team)
    stmt = sa.select(*_COLUMNS)
    for column, value in ((_E.user, user), (_E.team, team), (_E.model, model)):
        if value is not None:
            stmt = stmt.where(column == value)
    if status is not None:
        stmt = stmt.where(_E.status == status)
    if since is not None:
        stmt = stmt.where(_E.occurred_at >= since)
    if cursor is not None:
        at, last_id = _decode_cursor(cursor)
        # Keyset pagination on the (occurred_at, id) index: stable under concurrent inserts.
        stmt = stmt.where(
            sa.or_(_E.occurred_at < at, sa.and_(_E.occurred_at == at, _E.id < last_id))
        )
    stmt = stmt.order_by(_E.occurred_at.desc(), _E.id.desc()).limit(limit + 1)
    with db.engine.connect().execution_options(readonly=True) as conn:
        rows = conn.execute(stmt).all()
    page = [_event_out(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = _encode_cursor(last.occurred_at, last.id)
    return EventPage(events=page, next_cursor=next_cursor)
