"""Small builders for test data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from meter.events import EventRecord
from meter.ids import uuid7
from meter.pricing import SEED_MODEL


def event(**fields: Any) -> EventRecord:
    values: dict[str, Any] = {
        "id": uuid7(),
        "occurred_at": datetime(2026, 11, 24, 12, 0, tzinfo=UTC),
        "model": SEED_MODEL,
        "prompt_tokens": 1,
        "completion_tokens": 1,
    }
    values.update(fields)
    return EventRecord(**values)
