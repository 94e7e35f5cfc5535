"""The real `openai` 2.x SDK, metered unchanged through `meter.transport()`."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from meter import Meter
from meter.mock_upstream import MockUpstream
from tests.client_fixtures import events
from tests.client_helpers import HELLO, HELLO_COST, MODEL

assert openai.__version__.startswith("2."), "the transport is tested with openai 2.x (httpx)"


def test_the_openai_sdk_is_metered_streaming_included(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter, db_url: str
) -> None:
    http = httpx.Client(transport=meter.transport(user="sdk-user", team="sdk-team"))
    with openai.OpenAI(base_url=upstream[1], api_key="x", http_client=http, max_retries=0) as sdk:
        resp = sdk.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
        assert resp.usage is not None
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 51)

        text = ""
        stream = sdk.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"X-Meter-User": "alice", "X-Meter-Team": "search"},
        )
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""  # an IndexError here would fail
        assert text.startswith("A week of traffic adds up")

        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(
                model=MODEL,
                messages=HELLO,  # type: ignore[arg-type]
                extra_headers={"X-Mock-Behavior": "server_error"},
            )
    assert mock.requests[1].body["stream_options"] == {"include_usage": True}
    assert "x-meter-user" not in mock.requests[1].headers
    stored = events(meter, db_url)
    assert [(e.user, e.team) for e in stored] == [
        ("sdk-user", "sdk-team"),
        ("alice", "search"),
        ("sdk-user", "sdk-team"),
    ]
    assert [(e.status, e.usage_source, e.prompt_tokens, e.completion_tokens) for e in stored] == [
        ("ok", "provider", 9, 51),
        ("ok", "provider", 9, 51),
        ("error", "none", 0, 0),
    ]
    assert [e.cost_usd for e in stored] == [HELLO_COST, HELLO_COST, "0"]


def test_the_sdk_sees_the_usage_chunk_when_it_asked_for_it(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    http = httpx.Client(transport=meter.transport())
    with openai.OpenAI(base_url=upstream[1], api_key="x", http_client=http) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model=MODEL,
                messages=HELLO,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 51
    (stored,) = events(meter, db_url)
    assert (stored.status, stored.completion_tokens, stored.cost_usd) == ("ok", 51, HELLO_COST)


def test_the_sdk_mid_stream_error_is_recorded(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    http = httpx.Client(transport=meter.transport())
    with openai.OpenAI(base_url=upstream[1], api_key="x", http_client=http) as sdk:
        stream = sdk.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"X-Mock-Behavior": "midstream_error"},
        )
        with pytest.raises(openai.APIError):
            for chunk in stream:
                assert chunk.choices[0].delta is not None
    (stored,) = events(meter, db_url)
    assert (stored.status, stored.usage_source) == ("error", "estimated")
    assert stored.completion_tokens > 0


def test_the_async_openai_sdk_is_metered(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    async def main() -> str:
        http = httpx.AsyncClient(transport=meter.async_transport(user="async-sdk"))
        async with openai.AsyncOpenAI(base_url=upstream[1], api_key="x", http_client=http) as sdk:
            resp = await sdk.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
            assert resp.usage is not None and resp.usage.total_tokens == 60
            text = ""
            stream = await sdk.chat.completions.create(
                model=MODEL,
                messages=HELLO,  # type: ignore[arg-type]
                stream=True,
            )
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
            return text

    assert asyncio.run(main()).startswith("A week of traffic")
    stored = events(meter, db_url)
    assert [(e.user, e.status, e.completion_tokens, e.cost_usd) for e in stored] == [
        ("async-sdk", "ok", 51, HELLO_COST),
        ("async-sdk", "ok", 51, HELLO_COST),
    ]
