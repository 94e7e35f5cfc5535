"""`MeteredClient(http_client=httpx2.Client(...))` and its async twin: an httpx2 client is used
as an httpx one is, its failures mapped to `UpstreamError` the same way."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from meter import AsyncMeteredClient, Meter, MeteredClient, UpstreamError
from meter.mock_upstream import MockUpstream
from tests.client_fixtures import events, require
from tests.client_helpers import HELLO, HELLO_COST, MODEL

httpx2 = require("httpx2", "the httpx2 client tests")


def test_an_httpx2_client_carries_calls_streams_and_their_failures(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter, db_url: str
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with httpx2.Client() as http:
        client = MeteredClient(base_url=upstream[1], meter=meter, http_client=http, user="u")
        resp = client.chat.completions.create(model=MODEL, messages=HELLO)
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 51)
        with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert text == resp.choices[0].message.content
        with pytest.raises(UpstreamError, match="RemoteProtocolError"):  # httpx2's, mapped
            for _ in client.chat.completions.create(
                model=MODEL, messages=HELLO, stream=True, extra_headers={"X-Mock-Behavior": "cut"}
            ):
                pass
        refused = MeteredClient(base_url=dead, meter=meter, http_client=http, max_retries=1)
        with pytest.raises(UpstreamError, match="ConnectError") as info:
            refused.chat.completions.create(model=MODEL, messages=HELLO)
        assert info.value.status_code is None
        assert not http.is_closed  # a given client is left open
    assert len(mock.requests) == 3
    stored = events(meter, db_url)
    assert [(e.status, e.usage_source, e.prompt_tokens) for e in stored] == [
        ("ok", "provider", 9),
        ("ok", "provider", 9),
        ("incomplete", "estimated", 9),
        ("error", "none", 0),  # one event for the call, retry included
    ]
    assert [e.cost_usd for e in stored[:2]] == [HELLO_COST, HELLO_COST]
    assert stored[2].completion_tokens > 0


def test_an_httpx_timeout_is_honoured_by_an_httpx2_client(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    with (
        httpx2.Client() as http,
        MeteredClient(
            base_url=upstream[1], meter=meter, http_client=http, timeout=httpx.Timeout(0.05)
        ) as client,
        pytest.raises(UpstreamError, match="ReadTimeout"),
    ):
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            extra_headers={"X-Mock-Behavior": "slow", "X-Mock-Delay-Ms": "500"},
        )
    (stored,) = events(meter, db_url)
    assert stored.status == "error"


def test_an_httpx2_async_client_carries_calls_and_streams(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    async def main() -> str:
        async with httpx2.AsyncClient() as http:
            client = AsyncMeteredClient(base_url=upstream[1], meter=meter, http_client=http)
            resp = await client.chat.completions.create(model=MODEL, messages=HELLO)
            assert resp.usage.total_tokens == 60
            text = ""
            stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            async with stream:
                async for chunk in stream:
                    text += chunk.choices[0].delta.content or ""
            return text

    assert asyncio.run(main()).startswith("A week of traffic")
    stored = events(meter, db_url)
    assert [(e.status, e.completion_tokens, e.cost_usd) for e in stored] == [
        ("ok", 51, HELLO_COST),
        ("ok", 51, HELLO_COST),
    ]
