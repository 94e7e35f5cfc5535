"""The price book: effective-dated prices per model, and tokens -> exact cost. Pure, no I/O."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from meter._exceptions import InvalidPrice
from meter.money import (
    per_million_to_units_per_token,
    per_token_to_units_per_token,
    to_decimal,
    units_per_token_to_per_million,
)

SEED_MODEL = "mistralai/mistral-7b-instruct-v0.1"
SEED_EFFECTIVE_FROM = datetime(2023, 9, 28, tzinfo=UTC)
SEED_INPUT_PER_MILLION = Decimal("0.11")
SEED_OUTPUT_PER_MILLION = Decimal("0.19")
SEED_CONTEXT_LENGTH = 4096


@dataclass(frozen=True)
class Price:
    """One version of a model's price, in units of 1e-12 USD per token."""

    model: str
    input_units: int
    output_units: int
    effective_from: datetime
    context_length: int | None = None
    id: int | None = None

    @property
    def input_per_million_usd(self) -> Decimal:
        return units_per_token_to_per_million(self.input_units)

    @property
    def output_per_million_usd(self) -> Decimal:
        return units_per_token_to_per_million(self.output_units)


@dataclass(frozen=True)
class Cost:
    input_units: int
    output_units: int

    @property
    def total_units(self) -> int:
        return self.input_units + self.output_units


def make_price(
    model: str,
    input_per_million_usd: object,
    output_per_million_usd: object,
    effective_from: datetime,
    context_length: int | None = None,
) -> Price:
    """Validate a price given per 1M tokens; refuse what cannot be stored exactly."""
    if not model or not model.strip():
        raise InvalidPrice("model: must not be empty", "model")
    if effective_from.tzinfo is None:
        raise InvalidPrice("effective_from: needs a timezone offset", "effective_from")
    if context_length is not None and (isinstance(context_length, bool) or context_length < 1):
        raise InvalidPrice("context_length: must be a positive integer", "context_length")
    return Price(
        model=model,
        input_units=per_million_to_units_per_token(input_per_million_usd, "input_per_million_usd"),
        output_units=per_million_to_units_per_token(
            output_per_million_usd, "output_per_million_usd"
        ),
        effective_from=effective_from.astimezone(UTC),
        context_length=context_length,
    )


SEED_PRICE = make_price(
    SEED_MODEL,
    SEED_INPUT_PER_MILLION,
    SEED_OUTPUT_PER_MILLION,
    SEED_EFFECTIVE_FROM,
    SEED_CONTEXT_LENGTH,
)


def cost_of(price: Price, prompt_tokens: int, completion_tokens: int) -> Cost:
    return Cost(prompt_tokens * price.input_units, completion_tokens * price.output_units)


@dataclass
class PriceBook:
    """All versions of all prices; `price_at` finds the one in effect at a moment."""

    _by_model: dict[str, list[Price]] = field(default_factory=dict)
    _starts: dict[str, list[datetime]] = field(default_factory=dict)

    @classmethod
    def of(cls, prices: Iterable[Price]) -> PriceBook:
        book = cls()
        for price in sorted(prices, key=lambda p: (p.model, p.effective_from)):
            book._by_model.setdefault(price.model, []).append(price)
            book._starts.setdefault(price.model, []).append(price.effective_from)
        return book

    def price_at(self, model: str, moment: datetime) -> Price | None:
        starts = self._starts.get(model)
        if not starts:
            return None
        i = bisect.bisect_right(starts, moment)
        return self._by_model[model][i - 1] if i else None

    def latest(self, model: str) -> Price | None:
        versions = self._by_model.get(model)
        return versions[-1] if versions else None

    def __iter__(self) -> Any:
        for versions in self._by_model.values():
            yield from versions


@dataclass(frozen=True)
class CatalogueEntry:
    """One model of OpenRouter's models list, as meter will store it (or why it cannot)."""

    model: str
    input_units: int | None
    output_units: int | None
    context_length: int | None
    skipped: str | None = None


def parse_openrouter_catalogue(doc: Mapping[str, Any]) -> list[CatalogueEntry]:
    """Read OpenRouter's `GET /models` JSON: prices are USD-per-token strings.

    `"-1"` means variable pricing: kept unpriced (skipped with that reason). `"0"` is free.
    Entries meter cannot represent exactly are returned with `skipped` set, never rounded.
    """
    data = doc.get("data")
    if not isinstance(data, list):
        raise InvalidPrice("catalogue: expected an object with a `data` list", "data")
    entries: list[CatalogueEntry] = []
    for i, item in enumerate(data):
        model = item.get("id") if isinstance(item, Mapping) else None
        if not isinstance(model, str) or not model:
            entries.append(CatalogueEntry(f"data[{i}]", None, None, None, "no model id"))
            continue
        pricing = item.get("pricing")
        if not isinstance(pricing, Mapping):
            entries.append(CatalogueEntry(model, None, None, None, "no pricing"))
            continue
        ctx = item.get("context_length")
        context_length = (
            ctx if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0 else None
        )
        try:
            prompt = to_decimal(pricing.get("prompt"), "pricing.prompt")
            completion = to_decimal(pricing.get("completion"), "pricing.completion")
            if prompt == -1 or completion == -1:
                entries.append(
                    CatalogueEntry(model, None, None, context_length, "variable price (-1)")
                )
                continue
            entries.append(
                CatalogueEntry(
                    model,
                    per_token_to_units_per_token(prompt, "pricing.prompt"),
                    per_token_to_units_per_token(completion, "pricing.completion"),
                    context_length,
                )
            )
        except InvalidPrice as exc:
            entries.append(CatalogueEntry(model, None, None, context_length, str(exc)))
    return entries
