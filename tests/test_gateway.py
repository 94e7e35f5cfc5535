"""The gateway through real SDKs and curl-like calls: `meter serve` in front of a real upstream on
loopback, on SQLite and PostgreSQL. What the upstream saw, what the client got, what was stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from meter.db.session import Database
from meter.mock_upstream import MockUpstream
from tests.client_helpers import (
    HELLO,
    HELLO_COMPLETION_TOKENS,
    HELLO_COST,
    HELLO_PROMPT_TOKENS,
    MODEL,
    stored_events,
)
from tests.gateway_helpers import (
    SERVER_KEY,
    GatewayServer,
    database_at,
    gateway_key,
    gateway_settings,
)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The database the gateway spools into (the suite's own `db` fixture is another one)."""
    yield from database_at(db_url)


@pytest.fixture
def gw(
    db: Database, db_url: str, upstream: tuple[MockUpstream, str], tmp_path: Path
) -> Iterator[GatewayServer]:
    upstream[0].reset()
    settings = gateway_settings(db_url, upstream[1], tmp_path / "spool")
    server = GatewayServer(settings, db)
    try:
        yield server
    finally:
        server.stop()


def sdk(gw: GatewayServer, key: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, **kwargs)  # type: ignore[arg-type]


def test_openai_sdk_plain_call_is_metered_under_the_keys_team_and_user(
    gw: GatewayServer, db: Database, db_url: str, mock: MockUpstream
) -> None:
    key = gateway_key(db, tags={"project": "x"})
    client = sdk(
        gw, key, default_headers={"HTTP-Referer": "https://app.example", "X-Title": "My app"}
    )
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    resp = raw.parse()
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (
        HELLO_PROMPT_TOKENS,
        HELLO_COMPLETION_TOKENS,
    )
    gw.flush()
    [event] = stored_events(db_url)
    assert (event.team, event.user, event.tags) == ("search", "alice", {"project": "x"})
    assert (event.status, event.usage_source) == ("ok", "provider")
    assert (event.prompt_tokens, event.completion_tokens) == (
        HELLO_PROMPT_TOKENS,
        HELLO_COMPLETION_TOKENS,
    )
    assert event.cost_usd == HELLO_COST
    assert event.generation_id == resp.id
    assert raw.headers["x-meter-event-id"]
    [seen] = mock.requests
    assert seen.headers["authorization"] == f"Bearer {SERVER_KEY}"
    assert key not in str(seen.headers)
    assert seen.headers["http-referer"] == "https://app.example"
    assert seen.headers["x-title"] == "My app"
    assert "stream_options" not in seen.body


def test_openai_sdk_stream_hides_the_usage_chunk_meter_asked_for(
    gw: GatewayServer, db: Database, db_url: str, mock: MockUpstream
) -> None:
    client = sdk(gw, gateway_key(db))
    text = []
    chunks = 0
    with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
        for chunk in stream:
            chunks += 1
            text.append(chunk.choices[0].delta.content or "")  # never an empty choices list
    assert chunks > 3 and "".join(text)
    gw.flush()
    [event] = stored_events(db_url)
    assert (event.status, event.prompt_tokens, event.completion_tokens, event.cost_usd) == (
        "ok",
        HELLO_PROMPT_TOKENS,
        HELLO_COMPLETION_TOKENS,
        HELLO_COST,
    )
    assert event.ttft_ms is not None
    [seen] = mock.requests
    assert seen.body["stream_options"] == {"include_usage": True}


def test_a_client_asking_for_usage_gets_the_usage_chunk(
    gw: GatewayServer, db: Database, db_url: str
) -> None:
    client = sdk(gw, gateway_key(db))
    usage = None
    with client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
    assert usage is not None and usage.completion_tokens == HELLO_COMPLETION_TOKENS
    gw.flush()
    assert [e.cost_usd for e in stored_events(db_url)] == [HELLO_COST]


def test_async_openai_sdk_plain_and_stream(gw: GatewayServer, db: Database, db_url: str) -> None:
    key = gateway_key(db, team="infra", user=None)

    async def main() -> tuple[int, str]:
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        resp = await client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            user="bob",  # type: ignore[arg-type]
        )
        assert resp.usage is not None
        parts = []
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            stream=True,  # type: ignore[arg-type]
        )
        async with stream:
            async for chunk in stream:
                parts.append(chunk.choices[0].delta.content or "")
        await client.close()
        return resp.usage.completion_tokens, "".join(parts)

    completion_tokens, text = asyncio.run(main())
    assert completion_tokens == HELLO_COMPLETION_TOKENS and text
    gw.flush()
    events = stored_events(db_url)
    assert [(e.team, e.user, e.status, e.cost_usd) for e in events] == [
        ("infra", "bob", "ok", HELLO_COST),  # a key bound to no user: the body's `user`
        ("infra", "", "ok", HELLO_COST),
    ]


def test_legacy_completions_and_tags_header(gw: GatewayServer, db: Database, db_url: str) -> None:
    key = gateway_key(db, user=None)
    r = httpx.post(
        f"{gw.base_url}/completions",
        headers={"Authorization": f"Bearer {key}", "X-Meter-Tags": "feature=chat,env=prod%2Ceu"},
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 8},
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    gw.flush()
    [event] = stored_events(db_url)
    assert event.tags == {"feature": "chat", "env": "prod,eu"}
    assert (event.prompt_tokens, event.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert event.completion_tokens <= 8


BAD_PARAMETERS = [
    ("max_tokens", 0),
    ("max_tokens", 1.5),
    ("temperature", 2.5),
    ("top_p", 0),
    ("top_k", -1),
    ("seed", "7"),
    ("repetition_penalty", 0),
    ("frequency_penalty", 3),
    ("presence_penalty", -2.5),
    ("min_p", 1.5),
    ("stop", 7),
    ("logit_bias", {"1000": 101}),
    ("n", 0),
    ("messages", []),
    ("model", ""),
]


@pytest.mark.parametrize(("param", "value"), BAD_PARAMETERS)
def test_invalid_parameters_are_400_naming_them_nothing_sent_nothing_recorded(
    gw: GatewayServer, db: Database, db_url: str, mock: MockUpstream, param: str, value: object
) -> None:
    body: dict[str, object] = {"model": MODEL, "messages": HELLO, param: value}
    r = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gateway_key(db)}"},
        json=body,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert param in error["message"]
    assert mock.requests == []
    gw.flush()
    assert stored_events(db_url) == []


def test_keys_missing_unknown_revoked_or_of_another_role(
    gw: GatewayServer, db: Database, mock: MockUpstream
) -> None:
    from meter.api.routes.keys import list_keys, revoke_key
    from meter.keys import create_key

    url = f"{gw.base_url}/chat/completions"
    body = {"model": MODEL, "messages": HELLO}
    key = gateway_key(db)
    with db.engine.begin() as conn:
        _, admin, _ = create_key(conn, "admin", None, "a")
        _, reader, _ = create_key(conn, "read", None, "r")
    r = httpx.post(url, json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert (
        httpx.post(url, json=body, headers={"Authorization": "Bearer mtr_nope"}).status_code == 401
    )
    for other in (admin, reader):
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_denied"
    # A gateway key may call nothing else.
    for path in ("/v1/events", "/v1/budgets", "/v1/keys"):
        r = httpx.get(gw.url + path, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403, path
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    [key_id] = [k.id for k in list_keys(db) if k.role == "gateway"]
    assert revoke_key(db, key_id, "cli")
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401
    assert len(mock.requests) == 1


@pytest.mark.parametrize(
    ("behavior", "status"), [("payment_required", 402), ("rate_limit", 429), ("server_error", 500)]
)
def test_upstream_errors_pass_through_and_are_recorded(
    gw: GatewayServer, db: Database, db_url: str, behavior: str, status: int
) -> None:
    r = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={
            "Authorization": f"Bearer {gateway_key(db)}",
            "X-Mock-Behavior": behavior,
            "X-Mock-Retry-After": "7",
        },
        json={"model": MODEL, "messages": HELLO},
    )
    assert r.status_code == status
    if status == 429:
        assert r.headers["retry-after"] == "7"
    assert "error" in r.json()
    gw.flush()
    [event] = stored_events(db_url)
    assert (event.status, event.usage_source, event.prompt_tokens, event.cost_usd) == (
        "error",
        "none",
        0,
        "0",
    )
    assert r.headers["x-meter-event-id"]


def test_upstream_unreachable_is_502_and_recorded(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    from tests.recorder_helpers import free_port

    settings = gateway_settings(db_url, f"http://127.0.0.1:{free_port()}/v1", tmp_path / "s")
    server = GatewayServer(settings, db)
    try:
        r = httpx.post(
            f"{server.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {gateway_key(db)}"},
            json={"model": MODEL, "messages": HELLO},
        )
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_unreachable"
        server.flush()
        assert [(e.status, e.usage_source) for e in stored_events(db_url)] == [("error", "none")]
    finally:
        server.stop()


def test_no_upstream_key_on_the_server_is_503(
    db: Database, db_url: str, upstream: tuple[MockUpstream, str], tmp_path: Path
) -> None:
    settings = gateway_settings(db_url, upstream[1], tmp_path / "s", openrouter_api_key=None)
    server = GatewayServer(settings, db)
    try:
        r = httpx.post(
            f"{server.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {gateway_key(db)}"},
            json={"model": MODEL, "messages": HELLO},
        )
        assert r.status_code == 503
        assert "OPENROUTER_API_KEY" in r.json()["error"]["message"]
    finally:
        server.stop()


def test_models_pass_through_and_other_openai_paths_are_404(
    gw: GatewayServer, db: Database, mock: MockUpstream
) -> None:
    headers = {"Authorization": f"Bearer {gateway_key(db)}"}
    models = openai.OpenAI(base_url=gw.base_url, api_key=headers["Authorization"][7:]).models.list()
    assert [m.id for m in models.data] == [MODEL]
    openai.OpenAI(base_url=gw.base_url, api_key=headers["Authorization"][7:]).models.list()
    assert len(mock.requests) == 1  # cached
    assert mock.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"
    r = httpx.post(f"{gw.base_url}/embeddings", headers=headers, json={"input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def test_client_closing_a_stream_leaves_a_cancelled_estimated_event(
    gw: GatewayServer, db: Database, db_url: str
) -> None:
    client = sdk(gw, gateway_key(db))
    with client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        stream=True,
        extra_headers={"X-Mock-Behavior": "slow", "X-Mock-Delay-Ms": "100"},
    ) as stream:
        for i, _chunk in enumerate(stream):
            if i == 1:
                break
    for _ in range(100):  # the server notices the disconnect: bounded wait, 10 s
        gw.flush()
        events = stored_events(db_url)
        if events:
            break
        time.sleep(0.1)
    [event] = events
    assert (event.status, event.usage_source) == ("cancelled", "estimated")
    assert event.prompt_tokens > 0 and event.completion_tokens > 0
    assert event.generation_id and event.generation_id.startswith("gen-")


def test_the_upstream_key_and_the_clients_key_are_never_stored_or_logged(
    gw: GatewayServer, db: Database, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import sqlalchemy as sa

    caplog.set_level(logging.DEBUG)
    key = gateway_key(db)
    client = sdk(gw, key)
    client.chat.completions.create(model=MODEL, messages=HELLO)
    with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
        for _ in stream:
            pass
    gw.flush()
    dumped = []
    with db.engine.connect() as conn:
        for table in ("events", "api_keys", "gateway_holds", "budgets"):
            dumped += [repr(tuple(r)) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]
    spooled = b"".join(p.read_bytes() for p in (tmp_path / "spool").rglob("*") if p.is_file())
    for secret in (SERVER_KEY, key):
        assert secret not in "\n".join(dumped)
        assert secret.encode() not in spooled
        assert secret not in caplog.text
    assert len(stored_events(db_url)) == 2


def test_a_body_over_the_gateway_limit_is_413_and_wrong_methods_405(
    db: Database, db_url: str, upstream: tuple[MockUpstream, str], tmp_path: Path
) -> None:
    settings = gateway_settings(
        db_url, upstream[1], tmp_path / "s", gateway_max_body_bytes=10 * 1024**2
    )
    server = GatewayServer(settings, db)
    try:
        headers = {"Authorization": f"Bearer {gateway_key(db)}"}
        big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (9 * 1024**2)}]}
        r = httpx.post(f"{server.base_url}/chat/completions", headers=headers, json=big)
        assert r.status_code == 400  # over 8 MiB (the API's limit) is fine here: the context
        assert r.json()["error"]["param"] == "messages"
        bigger = {**big, "messages": [{"role": "user", "content": "x" * (11 * 1024**2)}]}
        r = httpx.post(f"{server.base_url}/chat/completions", headers=headers, json=bigger)
        assert r.status_code == 413 and "error" in r.json()
        r = httpx.get(f"{server.base_url}/chat/completions", headers=headers)
        assert r.status_code == 405 and r.headers["allow"] == "POST"
    finally:
        server.stop()
