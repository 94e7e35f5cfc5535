"""Server-rendered SVG: the weekly spend bars and a budget's gauge. Pure functions, no I/O.

Every bar carries its exact amount (`data-cost-usd`, and `<title>` for the hover); floats appear
only as pixel coordinates derived from those exact amounts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from markupsafe import Markup, escape

from meter.budgets.rules import crossed
from meter.dashboard.display import percent, to_cents
from meter.money import usd_to_units

WIDTH, HEIGHT = 760, 270
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 24, 46
TICKS = 4
_NICE = (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10))


@dataclass(frozen=True)
class Bar:
    week: str  # "2026-W48"
    week_start: date
    usd: str | None  # exact, as the API renders it; None when every event is unpriced
    current: bool = False


def nice_step(top: Decimal, ticks: int = TICKS) -> Decimal:
    """The smallest 1/2/2.5/5 x 10^k step whose `ticks` multiples reach `top`."""
    if top <= 0:
        return Decimal("0.25")
    raw = top / ticks
    magnitude = Decimal(1).scaleb(raw.adjusted())
    for factor in _NICE:
        step = factor * magnitude
        if step * ticks >= top:
            return step
    raise AssertionError("unreachable: 10 x magnitude always reaches")


def tick_label(value: Decimal, step: Decimal) -> str:
    places = max(0, -step.normalize().as_tuple().exponent)  # type: ignore[operator]
    if places <= 2:
        return f"${value:,.{2 if value % 1 else 0}f}"
    return f"${value:,.{places}f}"


def _y(value: Decimal, top: Decimal) -> float:
    plot = HEIGHT - TOP - BOTTOM
    return HEIGHT - BOTTOM - float(value / top) * plot  # pixels only


def weekly_spend_chart(bars: Sequence[Bar]) -> Markup:
    """Bars for weeks oldest first, a labelled dollar axis and the week under each bar."""
    amounts = [Decimal(b.usd) if b.usd is not None else Decimal(0) for b in bars]
    step = nice_step(max(amounts, default=Decimal(0)))
    top = step * TICKS
    parts: list[Markup] = [
        Markup(
            '<svg class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" '
            'aria-label="weekly spend, last {n} weeks">'
        ).format(w=WIDTH, h=HEIGHT, n=len(bars))
    ]
    for i in range(TICKS + 1):
        value = step * i
        y = _y(value, top)
        parts.append(
            Markup(
                '<line class="grid" x1="{x1}" x2="{x2}" y1="{y:.1f}" y2="{y:.1f}"/>'
                '<text class="axis" x="{tx}" y="{ty:.1f}" text-anchor="end">{label}</text>'
            ).format(
                x1=LEFT, x2=WIDTH - RIGHT, y=y, tx=LEFT - 8, ty=y + 4, label=tick_label(value, step)
            )
        )
    slot = (WIDTH - LEFT - RIGHT) / max(len(bars), 1)
    for i, (bar, amount) in enumerate(zip(bars, amounts, strict=True)):
        x = LEFT + slot * i + slot * 0.18
        width = slot * 0.64
        y = _y(amount, top)
        shown = to_cents(bar.usd) if bar.usd is not None else "unpriced"
        exact = bar.usd if bar.usd is not None else "unpriced"
        classes = "bar current" if bar.current else "bar"
        parts.append(
            Markup(
                '<g class="week"><rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
                'height="{h:.1f}" rx="3" data-week="{week}" data-cost-usd="{usd}">'
                "<title>{week} (from {start}): {shown}, exactly {exact} USD</title></rect>"
            ).format(
                cls=classes,
                x=x,
                y=y,
                w=width,
                h=HEIGHT - BOTTOM - y,
                week=bar.week,
                usd=bar.usd or "",
                start=bar.week_start.isoformat(),
                shown=shown,
                exact=exact,
            )
        )
        centre = x + width / 2
        if amount > 0 or bar.usd is None:
            parts.append(
                Markup(
                    '<text class="value" x="{x:.1f}" y="{y:.1f}" text-anchor="middle">{v}</text>'
                ).format(x=centre, y=y - 6, v=shown)
            )
        parts.append(
            Markup(
                '<text class="axis{cur}" x="{x:.1f}" y="{y1}" text-anchor="middle">W{n}</text>'
                '<text class="axis small" x="{x:.1f}" y="{y2}" text-anchor="middle">{d}</text></g>'
            ).format(
                cur=" current" if bar.current else "",
                x=centre,
                y1=HEIGHT - BOTTOM + 17,
                y2=HEIGHT - BOTTOM + 32,
                n=bar.week[-2:],
                d=bar.week_start.strftime("%d %b"),
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


GAUGE_WIDTH, GAUGE_HEIGHT = 600, 50


def budget_gauge(spend_usd: str, limit_usd: str, thresholds: Sequence[str]) -> Markup:
    """Spend against a limit, with a mark at each threshold (a ratio of the limit)."""
    spend, limit = Decimal(spend_usd), Decimal(limit_usd)
    marks = [Decimal(t) for t in thresholds]
    scale = max([Decimal(1), *marks])  # the gauge always reaches the limit and every mark
    spend_units, limit_units = usd_to_units(spend), usd_to_units(limit)
    hit = [t for t in marks if crossed(spend_units, limit_units, t)] if spend_units > 0 else []
    if crossed(spend_units, limit_units, Decimal(1)):
        state = "over"
    elif hit:
        state = "warn"
    else:
        state = "ok"
    filled = min(spend / (limit * scale), Decimal(1)) if limit > 0 else Decimal(1)
    track_y, track_h = 22, 16
    parts: list[Markup] = [
        Markup(
            '<svg class="gauge" viewBox="0 0 {w} {h}" width="100%" role="img" '
            'aria-label="spend against the weekly limit">'
            '<rect class="track" x="0" y="{ty}" width="{w}" height="{th}" rx="4"/>'
            '<rect class="fill {state}" x="0" y="{ty}" width="{fw:.1f}" height="{th}" rx="4">'
            "<title>{shown} of {limit} (exactly {spend} of {limit_exact} USD)</title></rect>"
        ).format(
            w=GAUGE_WIDTH,
            h=GAUGE_HEIGHT,
            ty=track_y,
            th=track_h,
            state=state,
            fw=float(filled) * GAUGE_WIDTH,  # pixels only
            shown=to_cents(spend_usd),
            limit=to_cents(limit_usd),
            spend=spend_usd,
            limit_exact=limit_usd,
        )
    ]
    for mark in marks:
        x = float(mark / scale) * GAUGE_WIDTH
        anchor = "end" if x > GAUGE_WIDTH - 20 else "middle"
        parts.append(
            Markup(
                '<line class="mark{c}" x1="{x:.1f}" x2="{x:.1f}" y1="{y1}" y2="{y2}" '
                'data-threshold="{t}"/>'
                '<text class="axis" x="{x:.1f}" y="14" text-anchor="{a}">{label}</text>'
            ).format(
                c=" crossed" if mark in hit else "",
                x=x,
                y1=track_y - 4,
                y2=track_y + track_h + 4,
                t=escape(str(mark)),
                a=anchor,
                label=percent(str(mark)),
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)
