"""The difference between a provider's catalogue and the price book. Pure, no I/O.

A model's price in the book is the version in effect at the moment of the comparison; a change
becomes a new version effective from that moment, so events already priced keep their cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from meter.pricing import CatalogueEntry, Price, PriceBook


@dataclass(frozen=True)
class Changed:
    """A model whose listed price or context length differs from the one in effect."""

    entry: CatalogueEntry
    current: Price

    @property
    def price_changed(self) -> bool:
        return (self.entry.input_units, self.entry.output_units) != (
            self.current.input_units,
            self.current.output_units,
        )

    @property
    def context_length(self) -> int | None:
        """The context length of the new version: the listed one, else the current one."""
        return self.entry.context_length or self.current.context_length


@dataclass(frozen=True)
class PriceDiff:
    at: datetime
    new: tuple[CatalogueEntry, ...]
    changed: tuple[Changed, ...]
    gone: tuple[Price, ...]  # in the book, no longer listed: reported, never removed
    unchanged: int
    skipped: tuple[CatalogueEntry, ...]  # variable, conditional, too fine, malformed
    unpriced: tuple[tuple[str, str, str], ...]  # (model, component, listed price)
    listed: int  # catalogue entries compared

    @property
    def has_changes(self) -> bool:
        return bool(self.new or self.changed)

    def prices(self) -> list[Price]:
        """The versions that applying this difference adds, all effective from `at`."""
        out = [self._price(e, e.context_length) for e in self.new]
        out += [self._price(c.entry, c.context_length) for c in self.changed]
        return sorted(out, key=lambda p: p.model)

    def _price(self, entry: CatalogueEntry, context_length: int | None) -> Price:
        assert entry.input_units is not None and entry.output_units is not None
        return Price(entry.model, entry.input_units, entry.output_units, self.at, context_length)


def diff_catalogue(
    entries: Iterable[CatalogueEntry], book: PriceBook, at: datetime, model: str | None = None
) -> PriceDiff:
    """Compare `entries` (one model when `model` is given) with the prices in effect at `at`."""
    entries = [e for e in entries if model is None or e.model == model]
    new: list[CatalogueEntry] = []
    changed: list[Changed] = []
    skipped: list[CatalogueEntry] = []
    unpriced: list[tuple[str, str, str]] = []
    unchanged = 0
    for entry in entries:
        if entry.skipped is not None or entry.input_units is None or entry.output_units is None:
            skipped.append(entry)
            continue
        unpriced += [(entry.model, name, price) for name, price in entry.unpriced]
        current = book.price_at(entry.model, at)
        if current is None:
            new.append(entry)
            continue
        change = Changed(entry, current)
        context_changed = (
            entry.context_length is not None and entry.context_length != current.context_length
        )
        if change.price_changed or context_changed:
            changed.append(change)
        else:
            unchanged += 1
    listed = {e.model for e in entries}
    in_book = {p.model for p in book if model is None or p.model == model}
    gone = [p for m in sorted(in_book - listed) if (p := book.price_at(m, at) or book.latest(m))]
    return PriceDiff(
        at=at,
        new=tuple(sorted(new, key=lambda e: e.model)),
        changed=tuple(sorted(changed, key=lambda c: c.entry.model)),
        gone=tuple(gone),
        unchanged=unchanged,
        skipped=tuple(sorted(skipped, key=lambda e: e.model)),
        unpriced=tuple(sorted(unpriced)),
        listed=len(entries),
    )
