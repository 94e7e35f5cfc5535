"""How the dashboard shows numbers: money to the cent (the exact string on hover), counts grouped.

The exact amounts come from the reports as meter.money renders them; this module only rounds
them for the eye, in Decimal, and never changes what the title attribute carries.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from markupsafe import Markup, escape

CENT = Decimal("0.01")


def to_cents(usd: str) -> str:
    """ "12.3456789" -> "$12.35"; a positive amount under half a cent -> "<$0.01", never $0.00."""
    exact = Decimal(usd)
    rounded = exact.quantize(CENT, rounding=ROUND_HALF_UP)
    if exact > 0 and rounded == 0:
        return "<$0.01"
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.2f}"


def money(usd: str | None) -> Markup:
    """A money cell: to the cent, the exact amount in `title` and `data-usd`."""
    if usd is None:
        return Markup(
            '<span class="money unpriced" title="no price for this model">unpriced</span>'
        )
    return Markup('<span class="money" title="{0}" data-usd="{0}">{1}</span>').format(
        usd, to_cents(usd)
    )


def exact(usd: str) -> Markup:
    """A money cell shown exactly, not to the cent (a drift is often a fraction of a cent)."""
    value = Decimal(usd)
    sign = "-" if value < 0 else ""
    return Markup('<span class="money exact" data-usd="{0}">{1}${2}</span>').format(
        usd, sign, format(abs(value), ",f")
    )


def drift(usd: str) -> Markup:
    """meter's cost minus the provider's, exactly and signed; class `drift over` (meter counts
    more than the provider billed) or `drift under` (the provider billed more), `drift zero`."""
    value = Decimal(usd)
    if value == 0:
        return Markup('<span class="drift zero" data-usd="{0}">$0</span>').format(usd)
    over = value > 0
    return Markup('<span class="drift {0}" data-usd="{1}" title="{2}">{3}${4}</span>').format(
        "over" if over else "under",
        usd,
        "meter counts more than the provider billed"
        if over
        else "the provider billed more than meter counts",
        "+" if over else "-",
        format(abs(value), ",f"),
    )


def count(value: int) -> str:
    return f"{value:,}"


def percent(ratio: str | None) -> str:
    """A budget ratio ("0.8234") as a percent to one decimal, half up ("82.3%", "50%")."""
    if ratio is None:
        return "-"
    value = (Decimal(ratio) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return f"{value.normalize():f}%" if value == value.to_integral() else f"{value}%"


def text(value: str | None, empty: str = "(none)") -> Markup:
    return escape(value) if value else Markup('<span class="muted">{}</span>').format(empty)


def moment(timestamp: str | None) -> Markup:
    """An RFC 3339 UTC timestamp to the minute, the exact one on hover."""
    if not timestamp:
        return Markup("")
    short = timestamp[:16].replace("T", " ") + " UTC"
    return Markup('<time datetime="{0}" title="{0}">{1}</time>').format(timestamp, short)
