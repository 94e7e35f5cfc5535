"""The recorder's spool line, formatted directly, is byte for byte what JSON-encoding the event's
wire form gives, and reads back to the same event."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from meter.events import STATUSES, USAGE_SOURCES, EventRecord
from meter.recorder.meter import _encode_line, spool_line
from tests.factories import event

# Any text JSON can carry, escapes and non-ASCII included (lone surrogates cannot be UTF-8).
text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30)
counts = st.none() | st.integers(min_value=0, max_value=10**9)

events = st.builds(
    EventRecord,
    id=st.uuids(),
    occurred_at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    )
    | st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(timezone(timedelta(hours=-5))),
    ),
    model=text,
    prompt_tokens=st.integers(min_value=0, max_value=10**9),
    completion_tokens=st.integers(min_value=0, max_value=10**9),
    user=st.none() | text,
    team=st.none() | text,
    tags=st.none() | st.dictionaries(text, text, max_size=4),
    status=st.sampled_from(STATUSES),
    usage_source=st.sampled_from(USAGE_SOURCES),
    cached_tokens=counts,
    reasoning_tokens=counts,
    latency_ms=counts,
    ttft_ms=counts,
    generation_id=st.none() | text,
    provider_cost_usd=st.none()
    | st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False),
)


@settings(max_examples=400, deadline=None)
@given(events)
def test_the_direct_line_equals_the_encoded_wire_form(e: EventRecord) -> None:
    line = spool_line(e)
    assert line == (_encode_line(e.to_wire()) + "\n").encode()
    back = EventRecord.from_wire(json.loads(line))
    assert back.to_wire() == e.to_wire()


def test_odd_values_take_the_general_path_and_still_match() -> None:
    class Tokens(int):
        def __str__(self) -> str:  # what json ignores and an f-string would not
            return "eleven"

    e = event(
        prompt_tokens=Tokens(11),
        model='a "quoted"\n\u2028 model',
        user="ünïcode \\ user",
        tags={"k": "v\x01"},
        provider_cost_usd=Decimal("0.000000110000"),
        id=uuid.UUID(int=1),
    )
    line = spool_line(e)
    assert line == (_encode_line(e.to_wire()) + "\n").encode()
    doc = json.loads(line)
    assert doc["prompt_tokens"] == 11
    assert doc["model"] == 'a "quoted"\n\u2028 model'
    assert doc["provider_cost_usd"] == "0.000000110000"
    assert doc["id"] == "00000000-0000-0000-0000-000000000001"
