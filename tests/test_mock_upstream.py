"""`meter mock-upstream`: realistic OpenRouter-style answers, and each misbehaviour on request."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from typer.testing import CliRunner

from meter.cli import app
from meter.mock_upstream import BEHAVIORS, MockUpstream, running
from tests.client_helpers import (
    HELLO,
    HELLO_COST,
    MODEL,
    mistral_chat_tokens,
    mistral_text_tokens,
)
from tests.recorder_helpers import free_port


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockUpstream, str]]:
    with running() as pair:
        yield pair


@pytest.fixture
def http(upstream: tuple[MockUpstream, str]) -> Iterator[httpx.Client]:
    upstream[0].reset()
    with httpx.Client(base_url=upstream[1], timeout=10) as client:
        yield client


def payloads(raw: bytes) -> list[str]:
    lines = raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    return [line[5:].strip() for line in lines if line.startswith("data:")]


def test_usage_is_counted_with_the_mistral_tokenizer_and_priced_at_the_seed_price(
    http: httpx.Client,
) -> None:
    r = http.post("/chat/completions", json={"model": MODEL, "messages": HELLO})
    doc = r.json()
    text = doc["choices"][0]["message"]["content"]
    assert doc["id"].startswith("gen-") and doc["model"] == MODEL
    assert doc["usage"]["prompt_tokens"] == mistral_chat_tokens("Hello") == 9
    assert doc["usage"]["completion_tokens"] == mistral_text_tokens(text) == 51
    assert doc["usage"]["total_tokens"] == 60
    assert b'"cost":' + HELLO_COST.encode() + b"," in r.content  # an exact JSON number
    # Deterministic: the same request gets the same text; another prompt another text.
    root = str(http.base_url).removesuffix("/v1/")  # served without the /v1 prefix too
    again = http.post(root + "/chat/completions", json={"model": MODEL, "messages": HELLO}).json()
    assert again["choices"][0]["message"]["content"] == text
    other = http.post(
        "/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    ).json()
    assert other["choices"][0]["message"]["content"] != text


def test_a_stream_looks_like_openrouter(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    raw = http.post("/chat/completions", json={**body, "stream_options": {"include_usage": True}})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.content.startswith(b": OPENROUTER PROCESSING\n\n")
    data = payloads(raw.content)
    assert data[-1] == "[DONE]"
    usage = json.loads(data[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 51
    assert json.loads(data[0])["choices"][0]["delta"]["role"] == "assistant"
    # Without include_usage there is no usage chunk, as with OpenAI.
    plain = payloads(http.post("/chat/completions", json=body).content)
    assert all(json.loads(p).get("usage") is None for p in plain[:-1])


def test_rate_limit_says_when_to_retry_and_name_n_misbehaves_n_times(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": HELLO}
    r = http.post("/chat/completions", json=body, headers={"X-Mock-Behavior": "rate_limit"})
    assert (r.status_code, r.headers["retry-after"]) == (429, "1")
    assert r.json() == {"error": {"code": 429, "message": "mock rate_limit"}}
    headers = {"X-Mock-Behavior": "unavailable:2", "X-Mock-Retry-After": "7"}
    codes = [http.post("/chat/completions", json=body, headers=headers) for _ in range(3)]
    assert [c.status_code for c in codes] == [503, 503, 200]
    assert codes[0].headers["retry-after"] == "7"


@pytest.mark.parametrize(("behavior", "status"), [("server_error", 500), ("bad_gateway", 502)])
def test_server_errors(http: httpx.Client, behavior: str, status: int) -> None:
    r = http.post(
        "/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={"X-Mock-Behavior": behavior},
    )
    assert r.status_code == status
    assert "retry-after" not in r.headers


def test_whitespace_truncated_and_midstream_error_bodies(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": HELLO}
    ws = http.post("/chat/completions", json=body, headers={"X-Mock-Behavior": "whitespace"})
    assert ws.content.startswith(b"\n\n") and json.loads(ws.content)["usage"]["prompt_tokens"] == 9
    cut = http.post("/chat/completions", json=body, headers={"X-Mock-Behavior": "truncated"})
    with pytest.raises(ValueError):
        json.loads(cut.content)
    err = http.post("/chat/completions", json=body, headers={"X-Mock-Behavior": "midstream_error"})
    assert err.status_code == 200 and err.json()["error"]["code"] == 502


def test_stream_misbehaviours(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    frag = http.post(
        "/chat/completions", json=body, headers={"X-Mock-Behavior": "fragmented"}
    ).content
    assert b"data:{" in frag and b"\r\n\r\n" in frag
    err = payloads(
        http.post(
            "/chat/completions", json=body, headers={"X-Mock-Behavior": "midstream_error"}
        ).content
    )
    last = json.loads(err[-1])
    assert last["error"]["code"] == "server_error"
    assert last["choices"][0]["finish_reason"] == "error"
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/chat/completions", json=body, headers={"X-Mock-Behavior": "cut"})
    bad = http.post("/chat/completions", json=body, headers={"X-Mock-Behavior": "not_utf8"}).content
    with pytest.raises(UnicodeDecodeError):
        bad.decode("utf-8")


def test_legacy_completions(http: httpx.Client) -> None:
    doc = http.post("/completions", json={"model": MODEL, "prompt": "Hello"}).json()
    assert doc["object"] == "text_completion"
    assert doc["usage"]["completion_tokens"] == mistral_text_tokens(doc["choices"][0]["text"])


def test_requests_are_kept_for_tests(
    upstream: tuple[MockUpstream, str], http: httpx.Client
) -> None:
    http.post("/chat/completions", json={"model": MODEL, "messages": HELLO})
    root = upstream[1].removesuffix("/v1")
    seen = http.get(root + "/mock/requests").json()["requests"]
    assert [(s["path"], s["body"]["model"]) for s in seen] == [("/v1/chat/completions", MODEL)]
    assert http.delete(root + "/mock/requests").status_code == 204
    assert upstream[0].requests == []


def test_the_environment_sets_a_default_behavior(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_MOCK_BEHAVIOR", "unavailable")
    with running(MockUpstream()) as (_, url):
        r = httpx.post(url + "/chat/completions", json={"model": MODEL, "messages": HELLO})
    assert r.status_code == 503


def test_help_documents_every_knob() -> None:
    result = CliRunner().invoke(app, ["mock-upstream", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in BEHAVIORS:
        assert name in result.output
    for knob in ("X-Mock-Behavior", "METER_MOCK_BEHAVIOR", "--port", "--host", "Retry-After"):
        assert knob in result.output


def test_unknown_behavior_is_refused() -> None:
    result = CliRunner().invoke(app, ["mock-upstream", "--behavior", "explode"])
    assert result.exit_code == 2
    assert "unknown behavior explode" in result.output


def test_the_command_serves_on_the_given_port() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from meter.cli import main; main()",
            "mock-upstream",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        doc = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and doc is None:  # bounded in time
            try:
                doc = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": MODEL, "messages": HELLO},
                    timeout=2,
                ).json()
            except httpx.TransportError:
                time.sleep(0.1)
        assert doc is not None and doc["usage"]["completion_tokens"] == 51
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- generation lookups ------------------------------------------------------------------------


def generation(http: httpx.Client, gen_id: str) -> httpx.Response:
    return http.get("/generation", params={"id": gen_id})


def test_a_served_completion_can_be_looked_up_with_its_cost_as_billed(
    upstream: tuple[MockUpstream, str], http: httpx.Client
) -> None:
    upstream[0].generation_delay = 0
    r = http.post("/chat/completions", json={"model": MODEL, "messages": HELLO})
    completion = json.loads(r.content, parse_float=Decimal)
    found = generation(http, completion["id"])
    assert found.status_code == 200
    data = json.loads(found.content, parse_float=Decimal)["data"]
    assert data["id"] == completion["id"] and data["model"] == MODEL
    assert (data["native_tokens_prompt"], data["native_tokens_completion"]) == (9, 51)
    assert data["total_cost"] == completion["usage"]["cost"] == Decimal(HELLO_COST)
    assert b'"total_cost":' + HELLO_COST.encode() + b"," in found.content  # an exact number
    assert generation(http, "gen-never-served").status_code == 404
    assert http.get("/generation").status_code == 400


def first_chunk_id(http: httpx.Client, body: dict[str, object], behavior: str = "") -> str:
    """Read a stream's first chunk, then hang up: the client aborts the rest."""
    headers = {"X-Mock-Behavior": behavior} if behavior else {}
    with http.stream("POST", "/chat/completions", json=body, headers=headers) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data:"))
    return str(json.loads(first[5:])["id"])


@pytest.mark.parametrize("behavior", ["", "cut", "midstream_error"])
def test_an_aborted_cut_or_failed_stream_is_recorded_as_the_whole_completion(
    upstream: tuple[MockUpstream, str], http: httpx.Client, behavior: str
) -> None:
    upstream[0].generation_delay = 0
    gen_id = first_chunk_id(http, {"model": MODEL, "messages": HELLO, "stream": True}, behavior)
    data = json.loads(generation(http, gen_id).content, parse_float=Decimal)["data"]
    assert (data["native_tokens_prompt"], data["native_tokens_completion"]) == (9, 51)
    assert data["total_cost"] == Decimal(HELLO_COST) and data["streamed"] is True


def test_a_generation_is_404_for_the_configured_delay_after_it_was_served(
    upstream: tuple[MockUpstream, str], http: httpx.Client
) -> None:
    upstream[0].generation_delay = 0.5
    try:
        gen_id = http.post("/chat/completions", json={"model": MODEL, "messages": HELLO}).json()[
            "id"
        ]
        assert generation(http, gen_id).status_code == 404
        time.sleep(0.6)
        assert generation(http, gen_id).status_code == 200
    finally:
        upstream[0].generation_delay = 0


def test_the_command_takes_a_generation_delay() -> None:
    result = CliRunner().invoke(app, ["mock-upstream", "--help"], terminal_width=200)
    assert "--generation-delay" in result.output and "METER_MOCK_GENERATION_DELAY" in result.output
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from meter.cli import main; main()",
            "mock-upstream",
            "--port",
            str(port),
            "--generation-delay",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        doc = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and doc is None:  # bounded in time
            try:
                doc = httpx.post(
                    base + "/chat/completions", json={"model": MODEL, "messages": HELLO}, timeout=2
                ).json()
            except httpx.TransportError:
                time.sleep(0.1)
        assert doc is not None
        statuses = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 200 not in statuses:
            statuses.append(httpx.get(base + "/generation", params={"id": doc["id"]}).status_code)
            time.sleep(0.2)
        assert statuses[0] == 404 and statuses[-1] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- what the mock charges ---------------------------------------------------------------------


def test_the_mock_charges_each_model_its_catalogue_price_and_the_seed_price_otherwise() -> None:
    catalogue = {
        "data": [
            # 10 % above $2.50 / $10 per 1M tokens
            {"id": "acme/large", "pricing": {"prompt": "0.00000275", "completion": "0.000011"}},
            {"id": "acme/variable", "pricing": {"prompt": "-1", "completion": "-1"}},
        ]
    }
    with running(MockUpstream(catalogue=catalogue)) as (_, url), httpx.Client(base_url=url) as c:

        def cost(model: str, stream: bool = False) -> tuple[Decimal, bytes]:
            body = {"model": model, "messages": HELLO}
            if not stream:
                r = c.post("/chat/completions", json=body)
                return json.loads(r.content, parse_float=Decimal)["usage"]["cost"], r.content
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            raw = c.post("/chat/completions", json=body).content
            last = json.loads(payloads(raw)[-2], parse_float=Decimal)
            return last["usage"]["cost"], raw

        # 9 x $2.75/1M + 51 x $11/1M, exactly, streamed or not, and in the generation lookup
        large, raw = cost("acme/large")
        assert large == Decimal("0.00058575") and b'"cost":0.00058575,' in raw
        assert cost("acme/large", stream=True)[0] == Decimal("0.00058575")
        gen_id = json.loads(raw)["id"]
        found = json.loads(c.get("/generation", params={"id": gen_id}).content, parse_float=Decimal)
        assert found["data"]["total_cost"] == Decimal("0.00058575")
        # not listed, or listed at a variable price: the seed price
        assert cost("acme/variable")[0] == cost("other/model")[0] == Decimal(HELLO_COST)
        assert cost(MODEL)[0] == Decimal(HELLO_COST)
