"""`meter.transport()` / `meter.async_transport()`: any httpx or httpx2 caller is metered
unchanged (each test runs with a client of each library)."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest

from meter import Meter
from meter.mock_upstream import MockUpstream
from tests.client_fixtures import events, require
from tests.client_helpers import (
    HELLO,
    HELLO_COST,
    MODEL,
    mistral_text_tokens,
    seed_cost,
)


def data_payloads(body: bytes) -> list[str]:
    lines = body.decode().replace("\r\n", "\n").split("\n")
    return [line[5:].strip() for line in lines if line.startswith("data:")]


def test_headers_give_attribution_and_are_stripped_before_sending(
    httpx_lib: Any,
    upstream: tuple[MockUpstream, str],
    mock: MockUpstream,
    meter: Meter,
    db_url: str,
) -> None:
    transport = meter.transport(user="service", team="platform")
    with httpx_lib.Client(transport=transport, base_url=upstream[1]) as http:
        r = http.post(
            "/chat/completions",
            json={"model": MODEL, "messages": HELLO},
            headers={"X-Meter-User": "alice", "X-Meter-Team": "search"},
        )
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] == 51
        r = http.post("/chat/completions", json={"model": MODEL, "messages": HELLO, "user": "bob"})
        assert r.status_code == 200
        seen = http.get(upstream[1].removesuffix("/v1") + "/mock/requests")
        assert len(seen.json()["requests"]) == 2  # not a completion: passed through, unmetered
    sent = mock.requests[0]
    assert not any(h.startswith("x-meter-") for h in sent.headers)
    assert sent.headers["accept-encoding"] == "identity"
    assert sent.body == {"model": MODEL, "messages": HELLO}  # unchanged when not streaming
    stored = events(meter, db_url)
    assert [(e.user, e.team) for e in stored] == [("alice", "search"), ("bob", "platform")]
    assert [(e.status, e.usage_source, e.prompt_tokens, e.completion_tokens) for e in stored] == [
        ("ok", "provider", 9, 51),
        ("ok", "provider", 9, 51),
    ]
    assert [e.cost_usd for e in stored] == [HELLO_COST, HELLO_COST]
    assert stored[0].generation_id is not None and stored[0].generation_id.startswith("gen-")


def test_a_stream_gets_usage_asked_for_and_the_usage_chunk_stripped(
    httpx_lib: Any,
    upstream: tuple[MockUpstream, str],
    mock: MockUpstream,
    meter: Meter,
    db_url: str,
) -> None:
    with httpx_lib.Client(transport=meter.transport(), base_url=upstream[1]) as http:
        body = {"model": MODEL, "messages": HELLO, "stream": True}
        with http.stream("POST", "/chat/completions", json=body) as r:
            raw = r.read()
    payloads = data_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["choices"] for c in chunks)  # chunk.choices[0] works on every chunk
    assert not any(c.get("usage") for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert mistral_text_tokens(text) == 51
    assert mock.requests[0].body["stream_options"] == {"include_usage": True}
    (stored,) = events(meter, db_url)
    assert (stored.status, stored.usage_source, stored.prompt_tokens) == ("ok", "provider", 9)
    assert (stored.completion_tokens, stored.cost_usd) == (51, HELLO_COST)
    assert stored.ttft_ms is not None


def test_a_stream_that_asked_for_usage_itself_is_passed_through_byte_for_byte(
    httpx_lib: Any, upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    body = {
        "model": MODEL,
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx_lib.Client(transport=meter.transport(), base_url=upstream[1]) as http:
        raw = http.post("/chat/completions", json=body).content
    assert raw.startswith(b": OPENROUTER PROCESSING\n\n")  # untouched, comments included
    usage_chunk = json.loads(data_payloads(raw)[-2])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 51
    (stored,) = events(meter, db_url)
    assert (stored.status, stored.completion_tokens) == ("ok", 51)


def test_a_stream_closed_early_through_the_transport_is_cancelled(
    httpx_lib: Any, upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    received = ""
    with (
        httpx_lib.Client(transport=meter.transport(), base_url=upstream[1]) as http,
        http.stream("POST", "/chat/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {"):
                received += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if len(received) > 30:
                    break
    (stored,) = events(meter, db_url)
    assert (stored.status, stored.usage_source) == ("cancelled", "estimated")
    # The transport may have read a little further than the caller did.
    assert stored.completion_tokens >= mistral_text_tokens(received) > 0
    assert stored.prompt_tokens == 9


def test_legacy_completions_are_metered_too(
    httpx_lib: Any, upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    with httpx_lib.Client(transport=meter.transport(), base_url=upstream[1]) as http:
        plain = http.post("/completions", json={"model": MODEL, "prompt": "Hello"}).json()
        body = {"model": MODEL, "prompt": "Hello", "stream": True}
        raw = http.post("/completions", json=body).content
    prompt = 1 + mistral_text_tokens("Hello")
    completion = mistral_text_tokens(plain["choices"][0]["text"])
    assert plain["usage"]["prompt_tokens"] == prompt
    streamed = [json.loads(p) for p in data_payloads(raw)[:-1]]
    assert all(c["choices"] for c in streamed)
    stored = events(meter, db_url)
    assert [(e.status, e.prompt_tokens, e.completion_tokens) for e in stored] == [
        ("ok", prompt, completion),
        ("ok", prompt, completion),
    ]
    assert stored[0].cost_usd == seed_cost(prompt, completion)


def test_errors_through_the_transport_are_recorded(
    httpx_lib: Any, upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    import socket

    with httpx_lib.Client(transport=meter.transport(), base_url=upstream[1]) as http:
        r = http.post(
            "/chat/completions",
            json={"model": MODEL, "messages": HELLO},
            headers={"X-Mock-Behavior": "server_error"},
        )
        assert r.status_code == 500
        body = {"model": MODEL, "messages": HELLO, "stream": True}
        with pytest.raises(httpx_lib.RemoteProtocolError):
            http.post("/chat/completions", json=body, headers={"X-Mock-Behavior": "cut"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with (
        httpx_lib.Client(transport=meter.transport(), base_url=dead) as http,
        pytest.raises(httpx_lib.ConnectError),
    ):
        http.post("/chat/completions", json={"model": MODEL, "messages": HELLO})
    stored = events(meter, db_url)
    assert [(e.status, e.usage_source) for e in stored] == [
        ("error", "none"),
        ("incomplete", "estimated"),
        ("error", "none"),
    ]
    assert stored[1].prompt_tokens == 9 and stored[1].completion_tokens > 0


def test_the_async_transport_meters_streams_and_plain_calls(
    httpx_lib: Any,
    upstream: tuple[MockUpstream, str],
    mock: MockUpstream,
    meter: Meter,
    db_url: str,
) -> None:
    async def main() -> list[dict[str, Any]]:
        transport = meter.async_transport(team="async-team")
        async with httpx_lib.AsyncClient(transport=transport, base_url=upstream[1]) as http:
            r = await http.post(
                "/chat/completions",
                json={"model": MODEL, "messages": HELLO},
                headers={"X-Meter-User": "eve"},
            )
            assert r.json()["usage"]["prompt_tokens"] == 9
            body = {"model": MODEL, "messages": HELLO, "stream": True}
            async with http.stream("POST", "/chat/completions", json=body) as s:
                raw = await s.aread()
        return [json.loads(p) for p in data_payloads(raw)[:-1]]

    chunks = asyncio.run(main())
    assert all(c["choices"] for c in chunks)
    assert "x-meter-user" not in mock.requests[0].headers
    stored = events(meter, db_url)
    assert [(e.user, e.team, e.status, e.completion_tokens) for e in stored] == [
        ("eve", "async-team", "ok", 51),
        ("", "async-team", "ok", 51),
    ]


def test_a_compressed_stream_is_decoded_for_metering(
    httpx_lib: Any, meter: Meter, db_url: str
) -> None:
    """An upstream that compresses despite `Accept-Encoding: identity` (pure unit test)."""
    sse = (
        b": OPENROUTER PROCESSING\n\n"
        b'data: {"id":"gen-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"id":"gen-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,'
        b'"cost":0.00000118}}\n\n'
        b"data: [DONE]\n\n"
    )
    seen: list[Any] = []

    def upstream(request: Any) -> Any:
        seen.append(request)
        return httpx_lib.Response(
            200,
            headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
            content=gzip.compress(sse),
        )

    transport = meter.transport(wrapped=httpx_lib.MockTransport(upstream))
    with httpx_lib.Client(transport=transport) as http:
        r = http.post(
            "http://upstream.invalid/api/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO, "stream": True},
        )
    assert seen[0].headers["accept-encoding"] == "identity"
    assert data_payloads(r.content) == [
        '{"id":"gen-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}',
        "[DONE]",
    ]
    (stored,) = events(meter, db_url)
    assert (stored.status, stored.prompt_tokens, stored.completion_tokens) == ("ok", 9, 1)
    assert (stored.provider_cost_usd, stored.cost_usd) == ("0.00000118", "0.00000118")
    assert stored.generation_id == "gen-1"


def test_a_metered_client_over_a_metering_transport_records_each_call_once(
    httpx_lib: Any,
    upstream: tuple[MockUpstream, str],
    mock: MockUpstream,
    meter: Meter,
    db_url: str,
) -> None:
    """Handing MeteredClient an http_client built on meter.transport() does not double-count."""
    from meter import AsyncMeteredClient, MeteredClient

    common: dict[str, Any] = {"api_key": "k", "base_url": upstream[1], "meter": meter}
    transport = meter.transport(user="transport-user", team="transport-team")
    with httpx_lib.Client(transport=transport) as http:
        client = MeteredClient(**common, user="alice", team="search", http_client=http)
        client.chat.completions.create(model=MODEL, messages=HELLO)
        for _ in client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
            pass
        # a plain call through the same http_client is still metered by the transport
        r = http.post(upstream[1] + "/chat/completions", json={"model": MODEL, "messages": HELLO})
        assert r.status_code == 200

    async def main() -> None:
        async_transport = meter.async_transport(team="transport-team")
        async with httpx_lib.AsyncClient(transport=async_transport) as http:
            client = AsyncMeteredClient(**common, user="bob", team="search", http_client=http)
            await client.chat.completions.create(model=MODEL, messages=HELLO)

    asyncio.run(main())
    assert len(mock.requests) == 4
    stored = events(meter, db_url)
    assert [(e.user, e.team, e.status, e.completion_tokens) for e in stored] == [
        ("alice", "search", "ok", 51),
        ("alice", "search", "ok", 51),
        ("transport-user", "transport-team", "ok", 51),
        ("bob", "search", "ok", 51),
    ]
    assert [e.cost_usd for e in stored] == [HELLO_COST] * 4


def test_a_wrapped_transport_of_the_other_library_is_refused_by_name(meter: Meter) -> None:
    httpx = require("httpx", "the transport tests")
    httpx2 = require("httpx2", "the transport tests")
    transport = meter.transport(wrapped=httpx.MockTransport(lambda r: httpx.Response(200)))
    with (
        httpx2.Client(transport=transport) as http,
        pytest.raises(TypeError, match="wraps an httpx transport"),
    ):
        http.get("http://upstream.invalid/v1/models")
