"""Request parameters checked before any network I/O. Pure: raises InvalidRequest or returns the
values to send (plain ints and floats, so numpy scalars and Decimals serialise)."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from numbers import Real
from typing import Any

from meter._exceptions import InvalidRequest
from meter.tokens import (
    count_messages,
    exact_available,
    messages_lower_bound,
    messages_upper_bound,
)


@dataclass(frozen=True, slots=True)
class _Range:
    low: float | None
    high: float | None
    low_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.high is None:
            return f"{kind} >= {_num(self.low)}"
        if self.low is None:
            return f"{kind} <= {_num(self.high)}"
        if self.low_open:
            return f"{kind} in ({_num(self.low)}, {_num(self.high)}]"
        return f"{kind} between {_num(self.low)} and {_num(self.high)}"


def _num(x: float | None) -> str:
    assert x is not None
    return str(int(x)) if float(x).is_integer() else str(x)


# The seed model's parameter table (SPEC section 1).
RANGES: dict[str, _Range] = {
    "max_tokens": _Range(1, None, integer=True),
    "max_completion_tokens": _Range(1, None, integer=True),
    "temperature": _Range(0, 2),
    "top_p": _Range(0, 1, low_open=True),
    "top_k": _Range(0, None, integer=True),
    "seed": _Range(None, None, integer=True),
    "repetition_penalty": _Range(0, 2, low_open=True),
    "frequency_penalty": _Range(-2, 2),
    "presence_penalty": _Range(-2, 2),
    "min_p": _Range(0, 1),
}
LOGIT_BIAS_LIMIT = 100


def _integer(name: str, value: object, rng: _Range) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InvalidRequest(f"{name} must be {_describe(rng)} (got {value!r})", name)
    return operator.index(value)  # type: ignore[call-overload,no-any-return]


def _describe(rng: _Range) -> str:
    if rng.low is None and rng.high is None:
        return "an integer"
    return rng.describe()


def _number(name: str, value: object, rng: _Range) -> float:
    if isinstance(value, bool) or not isinstance(value, Real | Decimal):
        raise InvalidRequest(f"{name} must be {_describe(rng)} (got {value!r})", name)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRequest(f"{name} must be {_describe(rng)}, not {value!r}", name)
    return number


def check_number(name: str, value: object) -> int | float:
    """One parameter of the table; returns the plain value to send."""
    rng = RANGES[name]
    checked: int | float = _integer(name, value, rng) if rng.integer else _number(name, value, rng)
    too_low = rng.low is not None and (checked <= rng.low if rng.low_open else checked < rng.low)
    too_high = rng.high is not None and checked > rng.high
    if too_low or too_high:
        raise InvalidRequest(f"{name} must be {_describe(rng)} (got {value!r})", name)
    return checked


def check_stop(value: object) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = list(value)
        if all(isinstance(item, str) for item in items):
            return items
    raise InvalidRequest(f"stop must be a string or a list of strings (got {value!r})", "stop")


def check_logit_bias(value: object) -> dict[str, int | float]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(
            f"logit_bias must be a map of token id -> bias between -100 and 100 (got {value!r})",
            "logit_bias",
        )
    out: dict[str, int | float] = {}
    for key, bias in value.items():
        token = _token_id(key)
        if token is None:
            raise InvalidRequest(
                f"logit_bias keys must be token ids (non-negative integers), got {key!r}",
                "logit_bias",
            )
        if isinstance(bias, bool) or not isinstance(bias, Real | Decimal):
            raise InvalidRequest(
                f"logit_bias[{key!r}] must be a number between -100 and 100 (got {bias!r})",
                "logit_bias",
            )
        number = float(bias)
        if not math.isfinite(number) or not -LOGIT_BIAS_LIMIT <= number <= LOGIT_BIAS_LIMIT:
            raise InvalidRequest(
                f"logit_bias[{key!r}] must be a number between -100 and 100 (got {bias!r})",
                "logit_bias",
            )
        out[str(token)] = int(number) if number.is_integer() else number
    return out


def _token_id(key: object) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if key >= 0 else None
    if isinstance(key, str) and key.isascii() and key.isdigit():
        return int(key)
    return None


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the table's parameters (None means "not given"); returns what to send."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        if name in RANGES:
            out[name] = check_number(name, value)
        elif name == "stop":
            out[name] = check_stop(value)
        elif name == "logit_bias":
            out[name] = check_logit_bias(value)
        else:
            out[name] = value
    return out


def check_messages(model: object, messages: object) -> None:
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model must be a non-empty string", "model")
    if (
        not isinstance(messages, Sequence)
        or isinstance(messages, str | bytes)
        or not messages
        or not all(isinstance(m, Mapping) and "role" in m for m in messages)
    ):
        raise InvalidRequest(
            "messages must be a non-empty list of messages, each a mapping with a `role`",
            "messages",
        )


def check_context(
    messages: Sequence[object], max_tokens: int | None, context_length: int | None
) -> None:
    """Refuse a prompt + max_tokens beyond the model's context, when the tokenizer is installed.

    Tokenizing costs 0.1-1.2 ms, so it runs only when a cheap upper bound (one token per UTF-8
    byte, plus the template, plus max_tokens) exceeds the context.
    """
    if context_length is None or not exact_available():
        return
    wanted = max_tokens or 0
    if messages_upper_bound(messages) + wanted <= context_length:
        return
    # A prompt surely too long is refused without tokenizing it (megabytes take seconds).
    at_least = messages_lower_bound(messages)
    surely_over = at_least + wanted > context_length
    prompt = at_least if surely_over else count_messages(messages)
    if prompt + wanted > context_length:
        param = "max_tokens" if max_tokens else "messages"
        raise InvalidRequest(
            f"{param}: the prompt is {'at least ' if surely_over else ''}{prompt} tokens"
            + (f" + max_tokens {wanted} = {prompt + wanted}" if wanted else "")
            + f", over the model's context length of {context_length} tokens",
            param,
        )
