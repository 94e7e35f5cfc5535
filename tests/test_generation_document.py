"""OpenRouter's generation document, read without I/O: exact cost, native counts, refusals; and
the lookups' backoff."""

from __future__ import annotations

from datetime import timedelta

import pytest

from meter.reconcile import LookupPolicy
from meter.reconcile.generation import Generation, GenerationDocumentError, parse_generation

GEN = "gen-1764000000-abc"


def doc(**data: str) -> str:
    """A document whose fields are given as JSON text, so numbers keep their exact spelling."""
    fields = {"id": f'"{GEN}"', "native_tokens_prompt": "9", "native_tokens_completion": "51"}
    fields.update(data)
    body = ",".join(f'"{k}":{v}' for k, v in fields.items() if v != "OMIT")
    return '{"data":{' + body + "}}"


def test_a_generation_gives_native_counts_and_the_exact_cost() -> None:
    text = doc(
        total_cost="0.00001068",
        model='"mistralai/mistral-7b-instruct-v0.1"',
        native_tokens_reasoning="4",
        native_tokens_cached="0",
        tokens_prompt="12",  # OpenRouter's normalized counts: not what the provider billed
    )
    assert parse_generation(text, GEN) == Generation(
        id=GEN,
        prompt_tokens=9,
        completion_tokens=51,
        cost_units=10_680_000,
        model="mistralai/mistral-7b-instruct-v0.1",
        reasoning_tokens=4,
        cached_tokens=0,
    )


def test_total_cost_is_read_from_its_text_never_through_a_float() -> None:
    # As a float this is 1234567.0: the last 1e-12 USD would be lost.
    assert float("1234567.000000000001") == 1234567.0
    parsed = parse_generation(doc(total_cost="1234567.000000000001").encode(), GEN)
    assert parsed.cost_units == 1_234_567_000_000_000_001
    assert parse_generation(doc(total_cost="1.1e-7"), GEN).cost_units == 110_000
    assert parse_generation(doc(total_cost="0"), GEN).cost_units == 0
    # Finer than meter's unit: rounded half-even at 1e-12 USD, as every provider cost is.
    assert parse_generation(doc(total_cost="0.0000000000015"), GEN).cost_units == 2


def test_a_missing_cost_is_none_and_optional_counts_may_be_absent() -> None:
    parsed = parse_generation(doc(total_cost="null", native_tokens_reasoning="null"), GEN)
    assert (parsed.cost_units, parsed.reasoning_tokens, parsed.cached_tokens) == (None, None, None)
    assert parse_generation(doc(id="OMIT"), GEN).id == GEN


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not JSON"),
        ('{"error": {"code": 404}}', "`data` object"),
        ('{"data": []}', "`data` object"),
        (doc(id='"gen-other"'), "gen-other"),
        (doc(native_tokens_prompt="OMIT"), "native_tokens_prompt"),
        (doc(native_tokens_completion="null"), "native_tokens_completion"),
        (doc(native_tokens_prompt="-1"), "native_tokens_prompt"),
        (doc(native_tokens_prompt="9.5"), "native_tokens_prompt"),
        (doc(native_tokens_completion="true"), "native_tokens_completion"),
        (doc(native_tokens_completion='"51"'), "native_tokens_completion"),
        (doc(native_tokens_completion="10000000001"), "more than an event"),
        (doc(native_tokens_cached="-3"), "native_tokens_cached"),
        (doc(total_cost='"0.1"'), "total_cost"),
        (doc(total_cost="-0.5"), "total_cost"),
        (doc(total_cost="1e30"), "total_cost"),
        (doc(total_cost="true"), "total_cost"),
    ],
)
def test_a_document_meter_cannot_use_is_refused_whole(text: str, why: str) -> None:
    with pytest.raises(GenerationDocumentError, match=why):
        parse_generation(text, GEN)


def test_retries_double_from_the_first_delay_up_to_the_maximum() -> None:
    policy = LookupPolicy()
    delays = [policy.retry_delay(n) for n in range(1, 13)]
    assert delays[:4] == [timedelta(seconds=s) for s in (5, 10, 20, 40)]
    assert delays[-1] == timedelta(hours=1)
    assert policy.retry_delay(10_000) == timedelta(hours=1)
    # About 30 attempts fit in the default window of a day.
    spent, attempts = timedelta(0), 0
    while spent < timedelta(days=1):
        attempts += 1
        spent += policy.retry_delay(attempts)
    assert 25 <= attempts <= 35
