"""The gateway's request checks and worst-case bound, pure (no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from meter._exceptions import InvalidRequest
from meter.gateway.request import parse_request, parse_tags_header
from meter.pricing import SEED_PRICE, Price

MODEL = SEED_PRICE.model
NO_CONTEXT = Price(MODEL, 110_000, 190_000, datetime(2023, 9, 28, tzinfo=UTC))


def parse(body: dict[str, object], kind: str = "chat", price: Price | None = SEED_PRICE):
    return parse_request(kind, json.dumps(body).encode(), lambda _model: price)


def test_worst_case_counts_prompt_bytes_template_n_and_max_tokens() -> None:
    req = parse(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 50,
            "n": 2,
        }
    )
    # 8 (chat) + 16 (message) + 5 bytes; 2 x 50 completion tokens.
    assert req.worst_case_units(SEED_PRICE) == 29 * 110_000 + 2 * 50 * 190_000


def test_without_max_tokens_the_cap_is_the_context_length() -> None:
    req = parse({"model": MODEL, "messages": [{"role": "user", "content": "é"}]})
    assert req.worst_case_units(SEED_PRICE) == (8 + 16 + 2) * 110_000 + 4096 * 190_000


def test_tool_calls_and_tools_count_as_prompt() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    plain = parse(
        {"model": MODEL, "messages": [{"role": "assistant", "content": None}], "max_tokens": 1}
    )
    rich = parse(
        {
            "model": MODEL,
            "max_tokens": 1,
            "tools": tools,
            "messages": [{"role": "assistant", "content": None, "tool_calls": [call]}],
        }
    )
    extra = len(json.dumps([call], ensure_ascii=False)) + len(json.dumps(tools, ensure_ascii=False))
    assert rich.prompt_upper_bound() == plain.prompt_upper_bound() + extra


def test_legacy_prompt_bound_and_token_id_prompts() -> None:
    assert parse({"model": MODEL, "prompt": "abc"}, "completions").prompt_upper_bound() == 8 + 3
    assert parse({"model": MODEL, "prompt": [1, 2, 3]}, "completions").prompt_upper_bound() == 11
    with pytest.raises(InvalidRequest) as info:
        parse({"model": MODEL, "prompt": {"x": 1}}, "completions")
    assert info.value.param == "prompt"


@pytest.mark.parametrize(
    ("extra", "price", "param"),
    [
        ({}, None, "model"),
        ({}, NO_CONTEXT, "model"),
        ({"models": [MODEL]}, SEED_PRICE, "models"),
        ({"plugins": []}, SEED_PRICE, "plugins"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            SEED_PRICE,
            "messages",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            SEED_PRICE,
            None,
        ),
    ],
)
def test_unbounded_cost(extra: dict[str, object], price: Price | None, param: str | None) -> None:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    assert parse(body, price=price).unbounded_param(price) == param


def test_stream_gets_include_usage_and_the_strip_flag_only_when_meter_added_it() -> None:
    mine = parse(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "temperature": 0.7,
        }
    )
    assert mine.strip_usage_chunk
    sent = json.loads(mine.content)
    assert sent["stream_options"] == {"include_usage": True} and sent["temperature"] == 0.7
    theirs = parse(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert not theirs.strip_usage_chunk


def test_context_length_is_checked_when_the_tokenizer_is_installed() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi " * 3000}],
                "max_tokens": 2000,
            }
        )
    assert info.value.param == "max_tokens"


def test_tags_header() -> None:
    assert parse_tags_header("feature=chat, env=prod%2Ceu") == {"feature": "chat", "env": "prod,eu"}
    assert parse_tags_header(None) is None and parse_tags_header(" ") is None
    for bad in ("novalue", "=x", "k=" + "v" * 501):
        with pytest.raises(InvalidRequest) as info:
            parse_tags_header(bad)
        assert info.value.param == "X-Meter-Tags"
