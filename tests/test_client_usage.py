"""Usage normalisation and outcome decisions: pure functions, no I/O."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from meter.client._capture import End, StreamCapture, read_completion
from meter.client._usage import UsageReading, loads, read_usage


def test_openrouter_usage_is_read_exactly() -> None:
    doc = loads(
        b' \n{"usage":{"prompt_tokens":194,"completion_tokens":2,"total_tokens":196,'
        b'"cost":12345678.123456789012345,"prompt_tokens_details":{"cached_tokens":100},'
        b'"completion_tokens_details":{"reasoning_tokens":1}}}'
    )
    assert read_usage(doc["usage"]) == UsageReading(
        194, 2, 100, 1, Decimal("12345678.123456789012345")
    )


@pytest.mark.parametrize(
    "usage",
    [
        None,
        [],
        "12",
        {"prompt_tokens": 9},
        {"prompt_tokens": -1, "completion_tokens": 3},
        {"prompt_tokens": 9, "completion_tokens": "3"},
        {"prompt_tokens": 9, "completion_tokens": True},
        {"prompt_tokens": 9, "completion_tokens": 1.5},
        {"prompt_tokens": 9, "completion_tokens": 10**13},
        {"prompt_tokens": 9, "completion_tokens": None},
    ],
)
def test_unusable_usage_reads_as_none(usage: object) -> None:
    assert read_usage(loads(json.dumps(usage))) is None


def test_bad_optional_details_are_dropped_not_fatal() -> None:
    usage = loads(
        '{"prompt_tokens":9,"completion_tokens":3.0,"cost":-1,'
        '"prompt_tokens_details":{"cached_tokens":-4},"completion_tokens_details":"x"}'
    )
    assert read_usage(usage) == UsageReading(9, 3, None, None, None)


def test_a_body_that_is_not_json_is_incomplete() -> None:
    for body in (b'{"choices":[{"message":{"content":"hi"', b"[1,2]", b"", b"\xff\xfe"):
        completion = read_completion(body)
        assert completion.doc is None
        assert (completion.outcome.status, completion.outcome.usage_source) == (
            "incomplete",
            "estimated",
        )


def test_an_error_body_after_output_is_an_estimated_error() -> None:
    body = b'{"error":{"code":502},"choices":[{"message":{"content":"partial"}}]}'
    outcome = read_completion(body).outcome
    assert (outcome.status, outcome.usage_source, outcome.completion_text) == (
        "error",
        "estimated",
        "partial",
    )


def test_stream_capture_finds_usage_on_any_chunk_and_strips_only_what_meter_caused() -> None:
    capture = StreamCapture(strip_usage_chunk=True)
    kept = capture.on_data('{"id":"gen-9","choices":[{"delta":{"content":"Hi"}}]}')
    assert kept is not None
    dropped = capture.on_data('{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1}}')
    assert dropped is None and capture.dropped
    assert capture.on_data("[DONE]") is None and capture.done
    outcome = capture.outcome(End.CANCELLED)  # closed after [DONE]: not a cancellation
    assert (outcome.status, outcome.usage_source, outcome.generation_id) == (
        "ok",
        "provider",
        "gen-9",
    )

    keep = StreamCapture(strip_usage_chunk=False)
    assert keep.on_data('{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}')
    last = StreamCapture(strip_usage_chunk=True)
    chunk = last.on_data(
        '{"choices":[{"delta":{},"finish_reason":"stop"}],'
        '"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    )
    assert chunk is not None and last.usage == UsageReading(1, 2)


def test_stream_capture_statuses() -> None:
    def after(payloads: list[str], end: End) -> tuple[str, str]:
        capture = StreamCapture(strip_usage_chunk=True)
        for p in payloads:
            capture.on_data(p)
        outcome = capture.outcome(end)
        return outcome.status, outcome.usage_source

    text = '{"choices":[{"delta":{"content":"Hi"}}]}'
    error = '{"error":{"code":"server_error"},"choices":[{"delta":{},"finish_reason":"error"}]}'
    assert after([text], End.CANCELLED) == ("cancelled", "estimated")
    assert after([text], End.BROKEN) == ("incomplete", "estimated")
    assert after([text, "[DONE]"], End.ENDED) == ("incomplete", "estimated")
    assert after([text, "not json", "[DONE]"], End.ENDED) == ("incomplete", "estimated")
    assert after([text, error], End.ENDED) == ("error", "estimated")
    assert after([error], End.ENDED) == ("error", "none")
    assert after([], End.CANCELLED) == ("cancelled", "estimated")
