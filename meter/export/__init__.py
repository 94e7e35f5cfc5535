"""Raw events out (SPEC section 10): `meter export events` and `GET /v1/export/events`."""

from meter.export.events import (
    FULL_FIELDS,
    INGEST_FIELDS,
    PAGE_SIZE,
    EventFilter,
    count_events,
    csv_lines,
    event_filter,
    jsonl_lines,
    pages,
)

__all__ = [
    "FULL_FIELDS",
    "INGEST_FIELDS",
    "PAGE_SIZE",
    "EventFilter",
    "count_events",
    "csv_lines",
    "event_filter",
    "jsonl_lines",
    "pages",
]
