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
    UNIT_EXPONENT,
    format_decimal,
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


# Why an entry of the catalogue gets no price in meter (CatalogueEntry.problem).
VARIABLE = "variable"  # "-1": the price depends on the request; the model stays unpriced
CONDITIONAL = "conditional"  # `overrides`: prices that apply only under conditions
TOO_FINE = "too_fine"  # finer than 1e-12 USD a token: not stored, never rounded
MALFORMED = "malformed"  # not a catalogue entry meter can read

MAX_MODEL_LENGTH = 200  # the price book's column

# The components of `pricing` that meter prices: USD per prompt and per completion token.
PRICED_COMPONENTS = ("prompt", "completion")
# Keys of `pricing` that are not charges.
NOT_PRICES = frozenset({"overrides", "discount", "currency"})


@dataclass(frozen=True)
class CatalogueEntry:
    """One model of OpenRouter's models list, as meter will store it (or why it cannot).

    `unpriced` lists the other components the provider charges for (`request`, `web_search`,
    `image`, `input_cache_read`...) with their listed price, in the provider's own unit:
    meter does not add them to a cost.
    """

    model: str
    input_units: int | None
    output_units: int | None
    context_length: int | None
    skipped: str | None = None
    problem: str | None = None
    unpriced: tuple[tuple[str, str], ...] = ()


def _skip(
    model: str, problem: str, reason: str, context_length: int | None = None
) -> CatalogueEntry:
    return CatalogueEntry(model, None, None, context_length, reason, problem)


def _catalogue_price(value: object, field: str) -> Decimal:
    """A listed price: a decimal string (exponents allowed) or an exact number, never a float."""
    if value is None:
        raise InvalidPrice(f"{field}: missing", field)
    d = to_decimal(value, field)
    if d < 0 and d != -1:
        raise InvalidPrice(f"{field}: a price cannot be negative ({value})", field)
    return d


def _unpriced_components(pricing: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The charged components meter does not price, with their listed price as plain text.

    Only reported, so a value meter cannot read is shown as given rather than failing the entry.
    """
    out = []
    for name, value in pricing.items():
        if name in PRICED_COMPONENTS or name in NOT_PRICES or value is None:
            continue
        try:
            d = to_decimal(value, str(name))
        except InvalidPrice:
            out.append((str(name), str(value)[:40]))
            continue
        if d != 0:
            out.append((str(name), format_decimal(d)))
    return tuple(sorted(out))


def parse_catalogue_entry(item: object, index: int) -> CatalogueEntry:
    """One entry of `data`: priced, or skipped with the reason (never rounded, never guessed)."""
    model = item.get("id") if isinstance(item, Mapping) else None
    if not isinstance(item, Mapping) or not isinstance(model, str) or not model.strip():
        return _skip(f"data[{index}]", MALFORMED, "no model id")
    if len(model) > MAX_MODEL_LENGTH or "\x00" in model:
        return _skip(f"data[{index}]", MALFORMED, "model id too long or not text")
    ctx = item.get("context_length")
    if ctx is None:
        context_length = None
    elif isinstance(ctx, int) and not isinstance(ctx, bool) and 0 < ctx < 2**31:
        context_length = ctx
    else:
        return _skip(model, MALFORMED, f"context_length: {ctx!r} is not a positive integer")
    pricing = item.get("pricing")
    if not isinstance(pricing, Mapping):
        return _skip(model, MALFORMED, "no pricing object", context_length)
    try:
        prompt = _catalogue_price(pricing.get("prompt"), "pricing.prompt")
        completion = _catalogue_price(pricing.get("completion"), "pricing.completion")
    except InvalidPrice as exc:
        return _skip(model, MALFORMED, str(exc), context_length)
    unpriced = _unpriced_components(pricing)
    if prompt == -1 or completion == -1:
        return _skip(model, VARIABLE, "variable price (-1): kept unpriced", context_length)
    overrides = pricing.get("overrides", item.get("overrides"))
    if overrides:
        return _skip(
            model, CONDITIONAL, "conditional prices (overrides): not applied", context_length
        )
    for field_name, d in (("pricing.prompt", prompt), ("pricing.completion", completion)):
        if d.scaleb(-UNIT_EXPONENT) != d.scaleb(-UNIT_EXPONENT).to_integral_value():
            return _skip(
                model,
                TOO_FINE,
                f"{field_name}: {format_decimal(d)} USD a token is finer than 1e-12 USD",
                context_length,
            )
    try:
        input_units = per_token_to_units_per_token(prompt, "pricing.prompt")
        output_units = per_token_to_units_per_token(completion, "pricing.completion")
    except InvalidPrice as exc:  # too large to store
        return _skip(model, MALFORMED, str(exc), context_length)
    return CatalogueEntry(model, input_units, output_units, context_length, unpriced=unpriced)


def parse_openrouter_catalogue(doc: Mapping[str, Any]) -> list[CatalogueEntry]:
    """Read OpenRouter's `GET /models` JSON: prices are USD-per-token strings.

    `"-1"` means variable pricing: kept unpriced (skipped with that reason). `"0"` is free.
    Entries meter cannot represent exactly are returned with `skipped` set, never rounded; a
    model listed twice is skipped both times (which price would be the truth?).
    """
    data = doc.get("data")
    if not isinstance(data, list):
        raise InvalidPrice("catalogue: expected an object with a `data` list", "data")
    entries = [parse_catalogue_entry(item, i) for i, item in enumerate(data)]
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.model] = counts.get(entry.model, 0) + 1
    return [
        _skip(e.model, MALFORMED, "listed more than once", e.context_length)
        if counts[e.model] > 1 and e.problem != MALFORMED
        else e
        for e in entries
    ]
