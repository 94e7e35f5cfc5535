"""`GET /v1/export/events` (admin): raw events as NDJSON, streamed a page at a time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from meter.api.auth import AdminPrincipal
from meter.api.deps import DbDep
from meter.api.errors import invalid
from meter.api.schemas import AUTH_ERRORS, NameQuery
from meter.db.session import Database
from meter.export import EventFilter, event_filter, jsonl_lines, pages

router = APIRouter(tags=["export"])

NDJSON = "application/x-ndjson"


def _ndjson(db: Database, flt: EventFilter, for_ingest: bool) -> Iterator[bytes]:
    # A sync generator: Starlette runs each step in a worker thread, so each page's query stays
    # off the event loop, and only one page is in memory at a time.
    for page in pages(db, flt):
        yield "".join(jsonl_lines(page, for_ingest)).encode()


@router.get(
    "/v1/export/events",
    summary="Raw events as NDJSON, oldest first",
    response_class=StreamingResponse,
    responses={
        **AUTH_ERRORS,
        200: {"content": {NDJSON: {}}, "description": "One JSON event a line"},
    },
)
def export_events(
    _: AdminPrincipal,
    db: DbDep,
    first: Annotated[
        date | None,
        Query(alias="from", description="First local day (YYYY-MM-DD, database timezone)"),
    ] = None,
    last: Annotated[date | None, Query(alias="to", description="Last local day, inclusive")] = None,
    team: Annotated[NameQuery | None, Query(description="Only this team's events")] = None,
    for_ingest: Annotated[
        bool, Query(description="Exactly the fields POST /v1/events takes")
    ] = False,
) -> StreamingResponse:
    try:
        flt = event_filter(db.tz, first, last, team)
    except ValueError as exc:
        raise invalid(("query", "to"), str(exc).removeprefix("to: ")) from None
    return StreamingResponse(_ndjson(db, flt, for_ingest), media_type=NDJSON)
