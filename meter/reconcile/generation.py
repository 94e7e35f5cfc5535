"""OpenRouter's generation document (`GET /generation?id=`), read into exact figures. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from meter.events import MAX_TOKENS_PER_EVENT
from meter.money import provider_cost_to_units


class GenerationDocumentError(ValueError):
    """The answer is not a generation document meter can use; the lookup is tried again."""


@dataclass(frozen=True)
class Generation:
    """The provider's own figures for one generation: native token counts, cost in units."""

    id: str
    prompt_tokens: int
    completion_tokens: int
    cost_units: int | None  # 1e-12 USD (meter.money); None when the provider gave no cost
    model: str | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None


def parse_generation(body: bytes | str, generation_id: str) -> Generation:
    """`{"data": {"id", "native_tokens_prompt", "native_tokens_completion", "total_cost", ...}}`.

    `total_cost` is a JSON float: its text is read as a Decimal (`parse_float=Decimal`), never
    through a Python float, then kept at 1e-12 USD. A document about another generation, or
    without native counts, is refused rather than half used.
    """
    try:
        doc = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GenerationDocumentError(f"not JSON: {exc}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise GenerationDocumentError("expected an object with a `data` object")
    found = data.get("id")
    if found is not None and found != generation_id:
        raise GenerationDocumentError(f"answer about generation {found!r}, not {generation_id!r}")
    prompt = _count(data, "native_tokens_prompt", required=True)
    completion = _count(data, "native_tokens_completion", required=True)
    assert prompt is not None and completion is not None
    model = data.get("model")
    return Generation(
        id=generation_id,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_units=_cost_units(data.get("total_cost")),
        model=model if isinstance(model, str) else None,
        reasoning_tokens=_count(data, "native_tokens_reasoning"),
        cached_tokens=_count(data, "native_tokens_cached"),
    )


def _count(data: dict[str, Any], name: str, required: bool = False) -> int | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GenerationDocumentError(f"`{name}` is {value!r}, not a token count")
    if value > MAX_TOKENS_PER_EVENT:
        raise GenerationDocumentError(f"`{name}` is {value}, more than an event may count")
    return value


def _cost_units(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise GenerationDocumentError(f"`total_cost` is {value!r}, not a number")
    units = provider_cost_to_units(value)
    if units is None:
        raise GenerationDocumentError(f"`total_cost` {value} is not a cost meter can store")
    return units
