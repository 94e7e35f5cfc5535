"""The real `mistralai` 3.x SDK (built on httpx2), metered unchanged through an
`httpx2.Client(transport=meter.transport())`, as its docs hand it a client."""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

import pytest

from meter import Meter
from meter.mock_upstream import MockUpstream
from tests.client_fixtures import events, require
from tests.client_helpers import HELLO, HELLO_COST, MODEL

Mistral: Any = require("mistralai.client", "the mistralai SDK tests").Mistral
httpx2 = require("httpx2", "the mistralai SDK tests")
assert int(version("mistralai").split(".")[0]) >= 3, "the SDK tests need mistralai 3.x"


def server_url(upstream: tuple[MockUpstream, str]) -> str:
    return upstream[1].removesuffix("/v1")  # the SDK adds /v1/chat/completions


def test_mistral_chat_and_stream_are_metered(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter, db_url: str
) -> None:
    http = httpx2.Client(transport=meter.transport(user="mistral-user", team="mistral-team"))
    with Mistral(api_key="x", server_url=server_url(upstream), client=http) as sdk:
        resp = sdk.chat.complete(model=MODEL, messages=HELLO)
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 51)

        text = ""
        for event in sdk.chat.stream(
            model=MODEL, messages=HELLO, http_headers={"X-Meter-User": "alice"}
        ):
            text += event.data.choices[0].delta.content or ""  # an IndexError here would fail
        assert text == resp.choices[0].message.content
    assert mock.requests[1].body["stream_options"] == {"include_usage": True}
    assert "x-meter-user" not in mock.requests[1].headers
    stored = events(meter, db_url)
    assert [(e.user, e.team, e.status, e.usage_source) for e in stored] == [
        ("mistral-user", "mistral-team", "ok", "provider"),
        ("alice", "mistral-team", "ok", "provider"),
    ]
    assert [(e.prompt_tokens, e.completion_tokens, e.cost_usd) for e in stored] == [
        (9, 51, HELLO_COST),
        (9, 51, HELLO_COST),
    ]


def test_a_mistral_stream_cut_mid_way_is_recorded(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    http = httpx2.Client(transport=meter.transport())
    with Mistral(api_key="x", server_url=server_url(upstream), client=http) as sdk:
        stream = sdk.chat.stream(
            model=MODEL, messages=HELLO, http_headers={"X-Mock-Behavior": "cut"}
        )
        with pytest.raises(httpx2.RemoteProtocolError):
            for event in stream:
                assert event.data.choices[0].delta is not None
    (stored,) = events(meter, db_url)
    assert (stored.status, stored.usage_source, stored.prompt_tokens) == (
        "incomplete",
        "estimated",
        9,
    )
    assert stored.completion_tokens > 0


def test_the_async_mistral_sdk_is_metered(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    async def main() -> str:
        http = httpx2.AsyncClient(transport=meter.async_transport(team="async-team"))
        sdk = Mistral(api_key="x", server_url=server_url(upstream), async_client=http)
        resp = await sdk.chat.complete_async(model=MODEL, messages=HELLO)
        assert resp.usage.total_tokens == 60
        text = ""
        async for event in await sdk.chat.stream_async(model=MODEL, messages=HELLO):
            text += event.data.choices[0].delta.content or ""
        await http.aclose()
        return text

    assert asyncio.run(main()).startswith("A week of traffic")
    stored = events(meter, db_url)
    assert [(e.team, e.status, e.completion_tokens, e.cost_usd) for e in stored] == [
        ("async-team", "ok", 51, HELLO_COST),
        ("async-team", "ok", 51, HELLO_COST),
    ]
