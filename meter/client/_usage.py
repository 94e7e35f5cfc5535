"""Usage normalisation: an upstream's JSON -> the numbers meter records. Pure, no I/O.

JSON numbers with a fraction are parsed as Decimal (never float): `usage.cost` is money. Usage
with wrong types, negative or absurd numbers is unusable and reads as None: the caller then
estimates, never records a negative or a silent zero.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from meter.events import MAX_TOKENS_PER_EVENT


@dataclass(frozen=True, slots=True)
class UsageReading:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: Decimal | None = None


# One decoder for every call: `json.loads(..., parse_float=...)` builds a new one each time,
# which costs more than decoding a stream chunk.
_DECODER = json.JSONDecoder(parse_float=Decimal)


def loads(text: str | bytes) -> Any:
    """JSON with exact numbers; bytes that are not UTF-8 become U+FFFD instead of an error."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", "replace")
    try:
        return _DECODER.decode(text)
    except RecursionError:  # `[[[[...`: a hostile body is junk like any other, not a crash
        raise ValueError("JSON nested too deeply") from None


def token_count(value: object) -> int | None:
    """A token count as a provider may send it: a non-negative integer (`12.0` too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        count = value
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        if not 0 <= value <= MAX_TOKENS_PER_EVENT:  # before int(): `1e999999999` would hang
            return None
        count = int(value)
    else:
        return None
    return count if 0 <= count <= MAX_TOKENS_PER_EVENT else None


def provider_cost(value: object) -> Decimal | None:
    """OpenRouter's `usage.cost` (USD) as an exact Decimal; anything else is None."""
    if value is None or isinstance(value, bool | float):
        return None
    try:
        cost = Decimal(value) if isinstance(value, int | Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not cost.is_finite() or cost < 0 or cost > 10**9:
        return None
    if cost and cost.adjusted() < -30:  # `1e-999999999` would render as a billion digits
        return None
    return cost


def read_usage(usage: object) -> UsageReading | None:
    """The provider's usage object -> a reading, or None when absent or unusable."""
    if not isinstance(usage, Mapping):
        return None
    prompt = token_count(usage.get("prompt_tokens"))
    completion = token_count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    cached = reasoning = None
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping):
        cached = token_count(details.get("cached_tokens"))
    details = usage.get("completion_tokens_details")
    if isinstance(details, Mapping):
        reasoning = token_count(details.get("reasoning_tokens"))
    return UsageReading(prompt, completion, cached, reasoning, provider_cost(usage.get("cost")))


def generation_id(doc: Mapping[str, Any]) -> str | None:
    value = doc.get("id")
    if isinstance(value, str) and value and len(value) <= 200:
        return value
    return None


def choice_text(choice: object) -> str:
    """All the text a choice (or a stream delta) carries: content, reasoning, refusal, tool-call
    names and arguments, and legacy completions' `text`: what an estimate must count.

    Called once per stream chunk, so the common case (a delta with `content`) is kept short.
    """
    if type(choice) is not dict:
        return ""
    body = choice.get("delta")
    if body is None:
        body = choice.get("message")
    text = ""
    if type(body) is dict:
        content = body.get("content")
        if type(content) is str:
            text = content
        for field in ("reasoning", "refusal"):
            extra = body.get(field)
            if type(extra) is str:
                text += extra
        calls = body.get("tool_calls")
        if calls:
            text += _tool_call_text(calls)
    legacy = choice.get("text")
    if type(legacy) is str:
        text += legacy
    return text


def _tool_call_text(calls: object) -> str:
    parts: list[str] = []
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                for field in ("name", "arguments"):
                    value = fn.get(field)
                    if isinstance(value, str):
                        parts.append(value)
    return "".join(parts)
