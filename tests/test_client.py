"""`MeteredClient` against a real upstream on loopback, recorded into SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from meter import Meter, MeteredClient, UpstreamError
from meter.mock_upstream import MockUpstream
from tests.client_fixtures import only_event
from tests.client_helpers import (
    FAST_RETRY,
    HELLO,
    HELLO_COMPLETION_TOKENS,
    HELLO_COST,
    HELLO_PROMPT_TOKENS,
    MODEL,
    Stored,
    mistral_text_tokens,
    seed_cost,
    stored_events,
)


@pytest.fixture
def client(upstream: tuple[MockUpstream, str], meter: Meter) -> Iterator[MeteredClient]:
    with MeteredClient(base_url=upstream[1], meter=meter, api_key="sk-secret-123") as c:
        yield c


def test_a_call_records_exact_tokens_and_cost(
    client: MeteredClient, meter: Meter, db_url: str, mock: MockUpstream
) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=HELLO, user="alice", team="search", tags={"feature": "chat"}
    )
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content.startswith("A week of traffic adds up")
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 51)
    assert resp.usage.total_tokens == 60
    assert resp.usage.cost == Decimal(HELLO_COST)
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.provider == "Mock"  # keys meter does not name are still attributes
    assert resp.meter.status == "ok"
    assert resp.meter.usage_source == "provider"
    assert format(resp.meter.cost_usd, "f") == HELLO_COST
    assert resp.meter.generation_id == resp.id
    assert resp.id is not None and resp.id.startswith("gen-")

    stored = only_event(meter, db_url)
    assert stored == Stored(
        model=MODEL,
        user="alice",
        team="search",
        tags={"feature": "chat"},
        status="ok",
        usage_source="provider",
        prompt_tokens=HELLO_PROMPT_TOKENS,
        completion_tokens=HELLO_COMPLETION_TOKENS,
        cached_tokens=0,
        reasoning_tokens=0,
        latency_ms=stored.latency_ms,
        ttft_ms=None,
        generation_id=resp.id,
        provider_cost_usd=HELLO_COST,
        cost_usd=HELLO_COST,
    )
    assert seed_cost(9, 51) == HELLO_COST
    assert stored.latency_ms is not None and stored.latency_ms >= 0


def test_user_is_forwarded_but_team_and_tags_never_are(
    client: MeteredClient, mock: MockUpstream
) -> None:
    client.chat.completions.create(
        model=MODEL, messages=HELLO, user="alice", team="search", tags={"feature": "chat"}
    )
    sent = mock.requests[0]
    assert sent.body == {"model": MODEL, "messages": HELLO, "user": "alice"}
    assert "search" not in str(sent.headers) and "feature" not in str(sent.headers)
    assert sent.headers["authorization"] == "Bearer sk-secret-123"
    assert sent.headers["content-type"] == "application/json"


def test_forward_user_false_keeps_the_user_local(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter, db_url: str
) -> None:
    with MeteredClient(
        base_url=upstream[1], meter=meter, user="bob", team="ads", forward_user=False
    ) as client:
        client.chat.completions.create(model=MODEL, messages=HELLO, user="alice")
    assert "user" not in mock.requests[0].body
    stored = only_event(meter, db_url)
    assert (stored.user, stored.team) == ("alice", "ads")  # per call beats the client default


def test_client_defaults_attribution_and_app_headers(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter, db_url: str
) -> None:
    with MeteredClient(
        base_url=upstream[1],
        meter=meter,
        user="carol",
        team="growth",
        tags={"env": "prod", "feature": "x"},
        app_url="https://example.org/app",
        app_name="Example App",
    ) as client:
        client.chat.completions.create(model=MODEL, messages=HELLO, tags={"feature": "y"})
    headers = mock.requests[0].headers
    assert headers["http-referer"] == "https://example.org/app"
    assert headers["x-title"] == "Example App"
    assert "authorization" not in headers  # no key configured: none sent
    assert mock.requests[0].body["user"] == "carol"
    stored = only_event(meter, db_url)
    assert (stored.user, stored.team) == ("carol", "growth")
    assert stored.tags == {"env": "prod", "feature": "y"}


def test_parameters_of_the_table_are_forwarded_unchanged(
    client: MeteredClient, mock: MockUpstream
) -> None:
    client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=64,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        seed=7,
        repetition_penalty=1.1,
        frequency_penalty=0.0,
        presence_penalty=0.0,
        min_p=0.05,
        stop=["\n\n"],
        logit_bias={"1000": -100},
        transforms=["middle-out"],
    )
    assert mock.requests[0].body == {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 64,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "min_p": 0.05,
        "stop": ["\n\n"],
        "logit_bias": {"1000": -100},
        "transforms": ["middle-out"],
    }


def test_max_tokens_cut_gives_exact_smaller_usage(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16)
    assert resp.choices[0].finish_reason == "length"
    completion = mistral_text_tokens(resp.choices[0].message.content)
    assert completion == 16  # whole words, as many as fit in 16 tokens
    assert resp.usage is not None and resp.usage.completion_tokens == 16
    stored = only_event(meter, db_url)
    assert (stored.prompt_tokens, stored.completion_tokens) == (9, 16)
    assert stored.cost_usd == seed_cost(9, 16) == "0.00000403"


def test_cached_and_reasoning_tokens_are_kept(
    client: MeteredClient, meter: Meter, db_url: str
) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        extra_headers={"X-Mock-Cached-Tokens": "4", "X-Mock-Reasoning-Tokens": "12"},
    )
    assert resp.usage is not None
    assert (resp.usage.cached_tokens, resp.usage.reasoning_tokens) == (4, 12)
    stored = only_event(meter, db_url)
    assert (stored.cached_tokens, stored.reasoning_tokens) == (4, 12)


@pytest.mark.parametrize(
    ("behavior", "status_code", "attempts"),
    [
        ("server_error", 500, 1),
        ("bad_request", 400, 1),
        ("rate_limit", 429, 3),  # retried twice, then given up: still one event
        ("bad_gateway", 502, 3),
        ("unavailable", 503, 3),
    ],
)
def test_http_errors_raise_after_one_error_event_with_zero_tokens(
    client: MeteredClient,
    meter: Meter,
    db_url: str,
    mock: MockUpstream,
    behavior: str,
    status_code: int,
    attempts: int,
) -> None:
    with pytest.raises(UpstreamError) as info:
        client.chat.completions.create(
            model=MODEL, messages=HELLO, extra_headers={"X-Mock-Behavior": behavior, **FAST_RETRY}
        )
    assert info.value.status_code == status_code
    assert info.value.body == {"error": {"code": status_code, "message": f"mock {behavior}"}}
    assert f"HTTP {status_code}" in str(info.value)
    assert len(mock.requests) == attempts
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source) == ("error", "none")
    assert (stored.prompt_tokens, stored.completion_tokens) == (0, 0)
    assert stored.cost_usd == "0"


@pytest.mark.parametrize("behavior", ["rate_limit:2", "bad_gateway:1", "unavailable:2"])
def test_a_retried_call_is_one_ok_event(
    client: MeteredClient, meter: Meter, db_url: str, mock: MockUpstream, behavior: str
) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=HELLO, extra_headers={"X-Mock-Behavior": behavior, **FAST_RETRY}
    )
    assert resp.meter.status == "ok"
    assert len(mock.requests) == int(behavior.split(":")[1]) + 1
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source, stored.cost_usd) == ("ok", "provider", HELLO_COST)


def test_max_retries_zero_does_not_retry(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter, db_url: str
) -> None:
    with (
        MeteredClient(base_url=upstream[1], meter=meter, max_retries=0) as client,
        pytest.raises(UpstreamError),
    ):
        client.chat.completions.create(
            model=MODEL, messages=HELLO, extra_headers={"X-Mock-Behavior": "rate_limit:1"}
        )
    assert len(mock.requests) == 1
    assert only_event(meter, db_url).status == "error"


# (behavior, status, usage_source, prompt, completion, raises)
MISBEHAVIOURS = [
    ("whitespace", "ok", "provider", 9, 51, False),
    ("not_utf8", "ok", "provider", 9, 51, False),
    ("no_usage", "incomplete", "estimated", 9, 51, False),
    ("malformed_usage", "incomplete", "estimated", 9, 51, False),
    ("truncated", "incomplete", "estimated", 9, 0, True),
    ("cut", "incomplete", "estimated", 9, 0, True),
    ("midstream_error", "error", "none", 0, 0, True),
]


@pytest.mark.parametrize(
    ("behavior", "status", "source", "prompt", "completion", "raises"), MISBEHAVIOURS
)
def test_each_misbehaviour_is_recorded_with_the_right_status(
    client: MeteredClient,
    meter: Meter,
    db_url: str,
    behavior: str,
    status: str,
    source: str,
    prompt: int,
    completion: int,
    raises: bool,
) -> None:
    headers = {"X-Mock-Behavior": behavior}
    if raises:
        with pytest.raises(UpstreamError):
            client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=headers)
    else:
        resp = client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=headers)
        assert (resp.meter.status, resp.meter.usage_source) == (status, source)
        assert resp.choices[0].message.content is not None
        if behavior == "not_utf8":
            assert resp.choices[0].message.content.startswith("\ufffd")
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source) == (status, source)
    assert (stored.prompt_tokens, stored.completion_tokens) == (prompt, completion)
    assert stored.cost_usd == seed_cost(prompt, completion)


def test_midstream_error_body_raises_with_its_code(client: MeteredClient) -> None:
    with pytest.raises(UpstreamError) as info:
        client.chat.completions.create(
            model=MODEL, messages=HELLO, extra_headers={"X-Mock-Behavior": "midstream_error"}
        )
    assert info.value.status_code == 502
    assert "provider returned an error" in str(info.value)


def test_connection_refused_is_an_upstream_error_recorded_once(meter: Meter, db_url: str) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with (
        MeteredClient(base_url=url, meter=meter, max_retries=1) as c,
        pytest.raises(UpstreamError) as info,
    ):
        c.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code is None
    assert "ConnectError" in str(info.value)
    stored = only_event(meter, db_url)
    assert (stored.status, stored.usage_source, stored.prompt_tokens) == ("error", "none", 0)


def test_a_read_timeout_is_an_upstream_error(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    with (
        MeteredClient(base_url=upstream[1], meter=meter, timeout=0.05) as client,
        pytest.raises(UpstreamError) as info,
    ):
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            extra_headers={"X-Mock-Behavior": "slow", "X-Mock-Delay-Ms": "500"},
        )
    assert "ReadTimeout" in str(info.value)
    assert only_event(meter, db_url).status == "error"


def test_the_api_key_never_shows(
    upstream: tuple[MockUpstream, str], meter: Meter, db_url: str
) -> None:
    with MeteredClient(base_url=upstream[1], meter=meter, api_key="sk-or-v1-SECRET") as client:
        assert "SECRET" not in repr(client)
        assert "SECRET" not in str(vars(client.chat.completions))
        assert "SECRET" not in str(vars(client))
        with pytest.raises(UpstreamError) as info:
            client.chat.completions.create(
                model=MODEL, messages=HELLO, extra_headers={"X-Mock-Behavior": "bad_request"}
            )
        assert "SECRET" not in str(info.value) and "SECRET" not in repr(info.value.body)
    assert meter.flush(10)
    assert "SECRET" not in repr(stored_events(db_url))


def test_defaults_come_from_the_environment(
    upstream: tuple[MockUpstream, str],
    mock: MockUpstream,
    meter: Meter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-from-env")
    monkeypatch.setenv("METER_UPSTREAM_BASE_URL", upstream[1])
    with MeteredClient(meter=meter) as client:
        assert client.base_url == upstream[1]
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert mock.requests[0].headers["authorization"] == "Bearer sk-from-env"


def test_the_default_timeout_is_long_never_httpx_five_seconds(meter: Meter) -> None:
    with MeteredClient(base_url="http://127.0.0.1:9/v1", meter=meter) as client:
        assert client.timeout == 600
        assert client._http.timeout == httpx.Timeout(600)


def test_a_given_http_client_is_used_and_left_open(
    upstream: tuple[MockUpstream, str], mock: MockUpstream, meter: Meter
) -> None:
    seen: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: seen.append(str(r.url))]}) as http:
        with MeteredClient(base_url=upstream[1], meter=meter, http_client=http) as client:
            client.chat.completions.create(model=MODEL, messages=HELLO)
        assert not http.is_closed
    assert seen == [upstream[1] + "/chat/completions"]
