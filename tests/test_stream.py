"""Streams: chunks for the caller, exactly one event per call however the stream ends."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from meter import Meter, MeteredClient, UpstreamError
from meter.mock_upstream import MockUpstream
from tests.client_fixtures import only_event
from tests.client_helpers import (
    FAST_RETRY,
    HELLO,
    HELLO_COST,
    MODEL,
    mistral_text_tokens,
    seed_cost,
)


@pytest.fixture
def client(upstream: tuple[MockUpstream, str], meter: Meter) -> Iterator[MeteredClient]:
    with MeteredClient(base_url=upstream[1], meter=meter, user="alice", team="search") as c:
        yield c


def test_a_stream_records_exact_tokens_and_cost_and_hides_the_usage_chunk(
    client: MeteredClient, meter: Meter, db_url: str, mock: MockUpstream
) -> None:
    pieces = []
    with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
        assert stream.meter is None and stream.usage is None  # not before it ended
        for chunk in stream:
            pieces.append(chunk.choices[0].delta.content)  # every chunk has a choice
            assert chunk.usage is None
    text = "".join(p or "" for p in pieces)
    assert text.startswith("A week of traffic adds up")
    assert mistral_text_tokens(text) == 51
    assert stream.usage is not None
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (9, 51)
    assert stream.meter is not None
    assert (stream.meter.status, stream.meter.usage_source) == ("ok", "provider")
    assert format(stream.meter.cost_usd, "f") == HELLO_COST
    assert stream.meter.ttft_ms is not None

    sent = mock.requests[0]
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["user"] == "alice"
    assert sent.headers["accept"] == "text/event-stream"

    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source) == ("ok", "provider")
    assert (stored.prompt_tokens, stored.completion_tokens) == (9, 51)
    assert (stored.cost_usd, stored.provider_cost_usd) == (HELLO_COST, HELLO_COST)
    assert (stored.user, stored.team) == ("alice", "search")
    assert stored.ttft_ms is not None and stored.latency_ms is not None
    assert stored.ttft_ms <= stored.latency_ms
    assert stored.generation_id is not None and stored.generation_id.startswith("gen-")


def test_a_caller_who_asked_for_usage_gets_the_usage_chunk(client: MeteredClient) -> None:
    with client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 51
    assert all(c.choices for c in chunks[:-1])


def test_usage_on_a_chunk_with_choices_is_found(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    headers = {"X-Mock-Behavior": "usage_in_last_chunk"}
    with client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, extra_headers=headers
    ) as stream:
        chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None  # it had choices, so the caller sees it
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source, stored.cost_usd) == ("ok", "provider", HELLO_COST)


def test_leaving_the_loop_early_records_cancelled_with_estimated_tokens(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    received = ""
    with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
        for i, chunk in enumerate(stream):
            received += chunk.choices[0].delta.content or ""
            if i == 4:
                break
    assert stream.usage is None
    assert stream.meter is not None
    assert (stream.meter.status, stream.meter.usage_source) == ("cancelled", "estimated")
    completion = mistral_text_tokens(received)
    assert completion >= 5
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source) == ("cancelled", "estimated")
    assert (stored.prompt_tokens, stored.completion_tokens) == (9, completion)
    assert stored.cost_usd == seed_cost(9, completion)


def test_a_stream_dropped_without_closing_is_recorded_when_collected(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    first = next(stream).choices[0].delta.content or ""
    del stream
    gc.collect()
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source) == ("cancelled", "estimated")
    assert stored.completion_tokens == max(1, mistral_text_tokens(first))
    assert stored.prompt_tokens == 9


def test_a_stream_closed_before_reading_is_cancelled_with_the_prompt_estimated(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    stream.close()
    stream.close()  # twice is harmless, and still one event
    assert list(stream) == []
    stored = only_event(meter, db_url)
    assert (stored.status, stored.prompt_tokens, stored.completion_tokens) == ("cancelled", 9, 0)


def read_all(stream: Iterator[object]) -> tuple[str, UpstreamError | None]:
    text = ""
    try:
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""  # type: ignore[attr-defined]
    except UpstreamError as exc:
        return text, exc
    return text, None


def test_a_cut_connection_raises_and_records_incomplete_with_what_came(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    with client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, extra_headers={"X-Mock-Behavior": "cut"}
    ) as stream:
        text, error = read_all(stream)
    assert error is not None and error.status_code is None
    assert "RemoteProtocolError" in str(error)
    assert text  # half the reply came before the cut
    completion = mistral_text_tokens(text)
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source) == ("incomplete", "estimated")
    assert (stored.prompt_tokens, stored.completion_tokens) == (9, completion)
    assert completion > 0


def test_a_midstream_error_chunk_raises_and_prices_what_was_produced(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    with client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        stream=True,
        extra_headers={"X-Mock-Behavior": "midstream_error"},
    ) as stream:
        text, error = read_all(stream)
    assert error is not None
    assert error.status_code == 200  # the code is a string: the HTTP status stands
    assert error.body == {"code": "server_error", "message": "mock: provider disconnected"}
    assert stream.meter is not None and stream.meter.status == "error"
    completion = mistral_text_tokens(text)
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source) == ("error", "estimated")
    assert (stored.prompt_tokens, stored.completion_tokens) == (9, completion)
    assert completion > 0
    assert stored.cost_usd == seed_cost(9, completion)


@pytest.mark.parametrize(
    ("behavior", "status", "source"),
    [
        ("no_usage", "incomplete", "estimated"),
        ("malformed_usage", "incomplete", "estimated"),
        ("fragmented", "ok", "provider"),
        ("not_utf8", "ok", "provider"),
        ("rate_limit:1", "ok", "provider"),
        ("unavailable:2", "ok", "provider"),
    ],
)
def test_stream_misbehaviours_end_with_exact_or_estimated_full_counts(
    client: MeteredClient,
    meter: Meter,
    db_url: str,
    behavior: str,
    status: str,
    source: str,
) -> None:
    headers = {"X-Mock-Behavior": behavior, **FAST_RETRY}
    with client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, extra_headers=headers
    ) as stream:
        text, error = read_all(stream)
    assert error is None
    if behavior == "not_utf8":
        assert text.startswith("\ufffd")
        text = text[1:]
    assert mistral_text_tokens(text) == 51
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source) == (status, source)
    assert (stored.prompt_tokens, stored.completion_tokens) == (9, 51)
    assert stored.cost_usd == HELLO_COST


def test_an_http_error_before_a_stream_raises_at_create(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    with pytest.raises(UpstreamError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            stream=True,
            extra_headers={"X-Mock-Behavior": "cut,bad_request"},
        )
    assert info.value.status_code == 400
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source, stored.completion_tokens) == ("error", "none", 0)


def test_a_slow_stream_still_meters_exactly(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    headers = {"X-Mock-Behavior": "slow", "X-Mock-Delay-Ms": "5"}
    with client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, extra_headers=headers
    ) as stream:
        text, error = read_all(stream)
    assert error is None and mistral_text_tokens(text) == 51
    stored = only_event(meter, db_url)
    assert stored.status == "ok"
    assert stored.ttft_ms is not None and stored.latency_ms is not None
    assert 5 <= stored.ttft_ms <= stored.latency_ms
