"""Parameters are checked before any I/O: InvalidRequest names the parameter and its range;
the upstream sees no request and nothing is recorded."""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from meter import InvalidRequest, Meter, MeteredClient
from meter.client._validation import check_params
from meter.mock_upstream import MockUpstream, running
from tests.client_helpers import HELLO, MODEL, mistral_chat_tokens, stored_events

# (parameter, bad value, words the message must contain)
INVALID: list[tuple[str, Any, str]] = [
    ("max_tokens", 0, "an integer >= 1"),
    ("max_tokens", -5, "an integer >= 1"),
    ("max_tokens", 1.5, "an integer >= 1"),
    ("max_tokens", 64.0, "an integer >= 1"),
    ("max_tokens", True, "an integer >= 1"),
    ("max_tokens", "64", "an integer >= 1"),
    ("temperature", -0.1, "between 0 and 2"),
    ("temperature", 2.01, "between 0 and 2"),
    ("temperature", math.nan, "between 0 and 2"),
    ("temperature", math.inf, "between 0 and 2"),
    ("temperature", True, "between 0 and 2"),
    ("temperature", "0.7", "between 0 and 2"),
    ("top_p", 0, "in (0, 1]"),
    ("top_p", 1.0001, "in (0, 1]"),
    ("top_p", -math.inf, "in (0, 1]"),
    ("top_k", -1, "an integer >= 0"),
    ("top_k", 4.0, "an integer >= 0"),
    ("top_k", False, "an integer >= 0"),
    ("seed", 1.5, "an integer"),
    ("seed", True, "an integer"),
    ("seed", "7", "an integer"),
    ("repetition_penalty", 0, "in (0, 2]"),
    ("repetition_penalty", 2.5, "in (0, 2]"),
    ("repetition_penalty", math.nan, "in (0, 2]"),
    ("frequency_penalty", -2.01, "between -2 and 2"),
    ("frequency_penalty", 3, "between -2 and 2"),
    ("presence_penalty", 2.5, "between -2 and 2"),
    ("presence_penalty", -math.inf, "between -2 and 2"),
    ("min_p", -0.01, "between 0 and 1"),
    ("min_p", 1.01, "between 0 and 1"),
    ("stop", 5, "a string or a list of strings"),
    ("stop", ["\n", 3], "a string or a list of strings"),
    ("stop", b"\n", "a string or a list of strings"),
    ("logit_bias", {"1000": -101}, "between -100 and 100"),
    ("logit_bias", {"1000": 100.5}, "between -100 and 100"),
    ("logit_bias", {"1000": math.nan}, "between -100 and 100"),
    ("logit_bias", {"1000": True}, "between -100 and 100"),
    ("logit_bias", {"token": 1}, "token ids"),
    ("logit_bias", {-1: 1}, "token ids"),
    ("logit_bias", [1000, -100], "token id -> bias between -100 and 100"),
]


@pytest.mark.parametrize(("param", "value", "words"), INVALID)
def test_each_invalid_parameter_is_named_with_its_range(param: str, value: Any, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_params({param: value})
    assert info.value.param == param
    assert isinstance(info.value, ValueError)
    assert param in str(info.value)
    assert words in str(info.value)


def test_valid_values_at_the_edges_pass_and_are_sent_as_plain_numbers() -> None:
    sent = check_params(
        {
            "max_tokens": 1,
            "temperature": 2,
            "top_p": 1,
            "top_k": 0,
            "seed": -(2**40),
            "repetition_penalty": 2,
            "frequency_penalty": -2,
            "presence_penalty": Decimal("2"),
            "min_p": 0,
            "stop": ["\n\n"],
            "logit_bias": {"1000": -100, 42: 100},
            "transforms": ["middle-out"],  # not in the table: passed through unchanged
            "top_a": None,  # None means not given
        }
    )
    assert sent == {
        "max_tokens": 1,
        "temperature": 2.0,
        "top_p": 1.0,
        "top_k": 0,
        "seed": -(2**40),
        "repetition_penalty": 2.0,
        "frequency_penalty": -2.0,
        "presence_penalty": 2.0,
        "min_p": 0.0,
        "stop": ["\n\n"],
        "logit_bias": {"1000": -100, "42": 100},
        "transforms": ["middle-out"],
    }
    assert type(sent["presence_penalty"]) is float


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockUpstream, str]]:
    with running() as pair:
        yield pair


def test_refused_calls_send_nothing_and_record_nothing(
    upstream: tuple[MockUpstream, str], db_url: str, tmp_path: Path
) -> None:
    mock, base_url = upstream
    mock.reset()
    with (
        Meter(db_url, spool_dir=tmp_path / "spool") as meter,
        MeteredClient(base_url=base_url, meter=meter, api_key="sk-test") as client,
    ):
        for param, value, words in INVALID:
            for stream in (False, True):
                with pytest.raises(InvalidRequest, match=words.replace("(", r"\(")) as info:
                    client.chat.completions.create(
                        model=MODEL, messages=HELLO, stream=stream, **{param: value}
                    )
                assert info.value.param == param
        bad_calls: list[tuple[str, dict[str, Any]]] = [
            ("messages", {"messages": []}),
            ("messages", {"messages": "Hello"}),
            ("messages", {"messages": [{"content": "no role"}]}),
            ("model", {"model": ""}),
            ("user", {"user": ""}),
            ("team", {"team": "x" * 201}),
            ("tags", {"tags": {"feature": 1}}),
        ]
        for param, change in bad_calls:
            kwargs: dict[str, Any] = {"model": MODEL, "messages": HELLO, **change}
            with pytest.raises(InvalidRequest) as info:
                client.chat.completions.create(**kwargs)
            assert info.value.param == param
        assert meter.flush(10)
        assert mock.requests == []
    assert stored_events(db_url) == []


def test_prompt_plus_max_tokens_over_the_context_is_refused_exactly_at_the_limit(
    upstream: tuple[MockUpstream, str], db_url: str, tmp_path: Path
) -> None:
    """The seed model's context is 4096 tokens; "Hello" is 9 of them with the template."""
    mock, base_url = upstream
    mock.reset()
    assert mistral_chat_tokens("Hello") == 9
    with (
        Meter(db_url, spool_dir=tmp_path / "spool") as meter,
        MeteredClient(base_url=base_url, meter=meter, max_retries=0) as client,
    ):
        with pytest.raises(InvalidRequest) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4088)
        assert info.value.param == "max_tokens"
        assert str(info.value) == (
            "max_tokens: the prompt is 9 tokens + max_tokens 4088 = 4097, "
            "over the model's context length of 4096 tokens"
        )
        assert mock.requests == []
        resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4087)
        assert resp.meter.status == "ok"
        assert len(mock.requests) == 1

        long_text = "word " * 5000  # 5000 tokens, over the context even without max_tokens
        with pytest.raises(InvalidRequest) as info:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": long_text}], stream=True
            )
        assert info.value.param == "messages"
        assert "over the model's context length of 4096 tokens" in str(info.value)
        assert len(mock.requests) == 1

        # A model without a price has no known context: nothing to check against.
        resp = client.chat.completions.create(
            model="someone/unpriced-model", messages=HELLO, max_tokens=100_000
        )
        assert resp.meter.cost_usd is None
        assert meter.flush(10)
    assert [e.status for e in stored_events(db_url)] == ["ok", "ok"]
