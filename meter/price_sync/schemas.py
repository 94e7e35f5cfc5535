"""The JSON shape of a price sync, shared by `GET/POST /v1/prices/sync` and
`meter prices sync --format json`. Prices are USD per 1M tokens as exact decimal strings;
`listed_price_usd` of a component is the provider's text, in its own unit (per request, image,
search or token)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from meter.events import format_timestamp
from meter.money import format_decimal, units_per_token_to_per_million
from meter.price_sync.diff import PriceDiff
from meter.pricing import CatalogueEntry, Price

Problem = Literal["variable", "conditional", "too_fine", "malformed"]


def _per_million(units: int) -> str:
    return format_decimal(units_per_token_to_per_million(units))


class ListedPrice(BaseModel):
    model: str
    input_per_million_usd: str = Field(examples=["0.11"])
    output_per_million_usd: str = Field(examples=["0.19"])
    context_length: int | None

    @classmethod
    def of(cls, price: Price) -> ListedPrice:
        return cls(
            model=price.model,
            input_per_million_usd=_per_million(price.input_units),
            output_per_million_usd=_per_million(price.output_units),
            context_length=price.context_length,
        )


class GoneModel(ListedPrice):
    effective_from: str = Field(description="since when the book's price is in effect")


class ChangedModel(BaseModel):
    model: str
    old_input_per_million_usd: str
    new_input_per_million_usd: str
    old_output_per_million_usd: str
    new_output_per_million_usd: str
    old_context_length: int | None
    new_context_length: int | None
    old_effective_from: str


class UnpricedComponent(BaseModel):
    model: str
    component: str = Field(examples=["request", "web_search", "image", "input_cache_read"])
    listed_price_usd: str = Field(description="as listed, per the component's own unit")


class SkippedEntry(BaseModel):
    model: str = Field(description="the model id, or data[i] for an entry without one")
    problem: Problem
    reason: str


class PriceSyncDiff(BaseModel):
    as_of: str = Field(description="the moment compared with: applied prices start here")
    model: str | None = Field(description="the one model compared, or null for all")
    listed: int = Field(description="catalogue entries compared")
    unchanged: int
    new: list[ListedPrice]
    changed: list[ChangedModel]
    gone: list[GoneModel] = Field(description="priced in the book, no longer listed: kept")
    unpriced_components: list[UnpricedComponent] = Field(
        description="charges the provider lists that meter does not add to a cost"
    )
    skipped: list[SkippedEntry] = Field(description="entries not applied, and why")

    @classmethod
    def of(cls, diff: PriceDiff, model: str | None = None) -> PriceSyncDiff:
        return cls(**_diff_fields(diff, model))


class PriceSyncResult(PriceSyncDiff):
    applied: list[ListedPrice] = Field(description="versions added, effective from `as_of`")

    @classmethod
    def of_applied(
        cls, diff: PriceDiff, applied: list[Price], model: str | None = None
    ) -> PriceSyncResult:
        return cls(**_diff_fields(diff, model), applied=[ListedPrice.of(p) for p in applied])


def _listed(entry: CatalogueEntry) -> ListedPrice:
    assert entry.input_units is not None and entry.output_units is not None
    return ListedPrice(
        model=entry.model,
        input_per_million_usd=_per_million(entry.input_units),
        output_per_million_usd=_per_million(entry.output_units),
        context_length=entry.context_length,
    )


def _diff_fields(diff: PriceDiff, model: str | None) -> dict[str, object]:
    changed = []
    for c in diff.changed:
        assert c.entry.input_units is not None and c.entry.output_units is not None
        changed.append(
            ChangedModel(
                model=c.entry.model,
                old_input_per_million_usd=_per_million(c.current.input_units),
                new_input_per_million_usd=_per_million(c.entry.input_units),
                old_output_per_million_usd=_per_million(c.current.output_units),
                new_output_per_million_usd=_per_million(c.entry.output_units),
                old_context_length=c.current.context_length,
                new_context_length=c.context_length,
                old_effective_from=format_timestamp(c.current.effective_from),
            )
        )
    return {
        "as_of": format_timestamp(diff.at),
        "model": model,
        "listed": diff.listed,
        "unchanged": diff.unchanged,
        "new": [_listed(e) for e in diff.new],
        "changed": changed,
        "gone": [
            GoneModel(
                **ListedPrice.of(p).model_dump(), effective_from=format_timestamp(p.effective_from)
            )
            for p in diff.gone
        ],
        "unpriced_components": [
            UnpricedComponent(model=m, component=c, listed_price_usd=v)
            for (m, c, v) in diff.unpriced
        ],
        "skipped": [
            SkippedEntry(model=e.model, problem=e.problem or "malformed", reason=e.skipped or "")
            for e in diff.skipped
        ],
    }


def audit_details(applied: list[Price], model: str | None) -> dict[str, object]:
    """What the audit log keeps of an applied sync: the versions it added, effective then."""
    return {"model": model, "added": [ListedPrice.of(p).model_dump() for p in applied]}
