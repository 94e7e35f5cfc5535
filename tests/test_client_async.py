"""`AsyncMeteredClient`: the same contract as the sync client, awaited."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from meter import AsyncMeteredClient, InvalidRequest, Meter, UpstreamError
from meter.mock_upstream import MockUpstream
from tests.client_fixtures import events
from tests.client_helpers import (
    FAST_RETRY,
    HELLO,
    HELLO_COST,
    MODEL,
    mistral_text_tokens,
    seed_cost,
)


def test_async_calls_record_exact_tokens_and_cost(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter, db_url: str
) -> None:
    async def main() -> None:
        async with AsyncMeteredClient(base_url=upstream[1], meter=meter, team="search") as client:
            resp = await client.chat.completions.create(model=MODEL, messages=HELLO, user="al")
            assert resp.choices[0].message.content.startswith("A week of traffic")
            assert resp.usage is not None and resp.usage.completion_tokens == 51
            assert format(resp.meter.cost_usd, "f") == HELLO_COST

            stream = await client.chat.completions.create(
                model=MODEL, messages=HELLO, stream=True, user="al"
            )
            text = ""
            async with stream:
                async for chunk in stream:
                    text += chunk.choices[0].delta.content or ""
            assert mistral_text_tokens(text) == 51
            assert stream.usage is not None and stream.usage.prompt_tokens == 9
            assert stream.meter is not None and stream.meter.status == "ok"
            assert format(stream.meter.cost_usd, "f") == HELLO_COST

    asyncio.run(main())
    assert [r.body.get("user") for r in mock.requests] == ["al", "al"]
    stored = events(meter, db_url)
    assert [(e.status, e.usage_source, e.prompt_tokens, e.completion_tokens) for e in stored] == [
        ("ok", "provider", 9, 51),
        ("ok", "provider", 9, 51),
    ]
    assert [e.cost_usd for e in stored] == [HELLO_COST, HELLO_COST]
    assert [(e.user, e.team) for e in stored] == [("al", "search"), ("al", "search")]
    assert stored[0].ttft_ms is None and stored[1].ttft_ms is not None


def test_async_errors_retries_and_cancellation(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter, db_url: str
) -> None:
    received = ""

    async def main() -> None:
        nonlocal received
        async with AsyncMeteredClient(base_url=upstream[1], meter=meter) as client:
            with pytest.raises(InvalidRequest):
                await client.chat.completions.create(model=MODEL, messages=HELLO, top_p=0)
            with pytest.raises(UpstreamError) as info:
                await client.chat.completions.create(
                    model=MODEL, messages=HELLO, extra_headers={"X-Mock-Behavior": "server_error"}
                )
            assert info.value.status_code == 500
            resp = await client.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                extra_headers={"X-Mock-Behavior": "rate_limit:2", **FAST_RETRY},
            )
            assert resp.meter.status == "ok"
            stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            async with stream:
                async for chunk in stream:
                    received += chunk.choices[0].delta.content or ""
                    if len(received) > 20:
                        break
            assert stream.meter is not None and stream.meter.status == "cancelled"

    asyncio.run(main())
    assert len(mock.requests) == 1 + 3 + 1  # nothing for the invalid call; 3 attempts for one
    stored = events(meter, db_url)
    completion = mistral_text_tokens(received)
    assert [(e.status, e.usage_source, e.prompt_tokens, e.completion_tokens) for e in stored] == [
        ("error", "none", 0, 0),
        ("ok", "provider", 9, 51),
        ("cancelled", "estimated", 9, completion),
    ]
    assert stored[2].cost_usd == seed_cost(9, completion)


@pytest.mark.parametrize(
    ("behavior", "status", "source"),
    [("cut", "incomplete", "estimated"), ("midstream_error", "error", "estimated")],
)
def test_async_stream_failures_raise_upstream_error_and_record_what_came(
    upstream: tuple[MockUpstream, str],
    meter: Meter,
    db_url: str,
    behavior: str,
    status: str,
    source: str,
) -> None:
    received = ""

    async def main() -> None:
        nonlocal received
        async with AsyncMeteredClient(base_url=upstream[1], meter=meter) as client:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                stream=True,
                extra_headers={"X-Mock-Behavior": behavior},
            )
            with pytest.raises(UpstreamError):
                async with stream:
                    async for chunk in stream:
                        received += chunk.choices[0].delta.content or ""

    asyncio.run(main())
    (stored,) = events(meter, db_url)
    completion = mistral_text_tokens(received)
    assert completion > 0
    assert (stored.status, stored.usage_source) == (status, source)
    assert (stored.prompt_tokens, stored.completion_tokens) == (9, completion)


def test_an_async_client_takes_an_httpx_async_client(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter
) -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as http:
            client = AsyncMeteredClient(base_url=upstream[1], meter=meter, http_client=http)
            await client.chat.completions.create(model=MODEL, messages=HELLO)
            await client.close()
            assert not http.is_closed

    asyncio.run(main())
    assert len(mock.requests) == 1
