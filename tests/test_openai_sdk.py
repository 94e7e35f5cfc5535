"""The real `openai` SDK, metered unchanged through `meter.transport()`.

The dev environment has openai 2.x (built on httpx); `make test` runs this module again in a
second environment with openai 3.x (built on httpx2), where each test runs with an httpx2 client
and with an httpx one (openai 3.x takes both).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meter import Meter
from meter.mock_upstream import MockUpstream
from tests.client_fixtures import events, require
from tests.client_helpers import HELLO, HELLO_COST, MODEL

openai = require("openai", "the openai SDK tests")


def test_the_openai_sdk_is_metered_streaming_included(
    openai_http: Any,
    upstream: tuple[MockUpstream, str],
    mock: MockUpstream,
    meter: Meter,
    db_url: str,
) -> None:
    http_client = openai_http.Client(transport=meter.transport(user="sdk-user", team="sdk-team"))
    with openai.OpenAI(
        base_url=upstream[1], api_key="x", http_client=http_client, max_retries=0
    ) as sdk:
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
    openai_http: Any, upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    http_client = openai_http.Client(transport=meter.transport())
    with openai.OpenAI(base_url=upstream[1], api_key="x", http_client=http_client) as sdk:
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
    openai_http: Any, upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    http_client = openai_http.Client(transport=meter.transport())
    with openai.OpenAI(base_url=upstream[1], api_key="x", http_client=http_client) as sdk:
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
    assert (stored.status, stored.usage_source, stored.prompt_tokens) == ("error", "estimated", 9)
    assert stored.completion_tokens > 0


def test_the_async_openai_sdk_is_metered(
    openai_http: Any, upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    async def main() -> str:
        http_client = openai_http.AsyncClient(transport=meter.async_transport(user="async-sdk"))
        async with openai.AsyncOpenAI(
            base_url=upstream[1], api_key="x", http_client=http_client
        ) as sdk:
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
