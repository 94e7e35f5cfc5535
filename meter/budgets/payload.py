"""The webhook body: built once when an alert fires and stored as the exact text to send."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from meter.budgets.repository import BudgetRow
from meter.events import format_timestamp
from meter.money import render_usd
from meter.periods import Window

THRESHOLD_CROSSED = "budget.threshold_crossed"
PROJECTED_OVERSPEND = "budget.projected_overspend"
TEST = "budget.test"
ALERT_TYPES = (THRESHOLD_CROSSED, PROJECTED_OVERSPEND)


def build_payload(
    *,
    type: str,
    alert_id: str,
    budget: BudgetRow,
    window: Window,
    threshold: str | None,
    limit_units: int,
    spend_units: int,
    fired_at: datetime,
    projected_units: int | None = None,
) -> str:
    """The JSON text of a delivery; money as exact decimal strings, never JSON numbers.
    `period` is the window's label (2026-11-30, 2026-W49, 2026-11); `week` and `week_start`
    are those of a week budget's window, null for other periods."""
    week = window.week
    doc: dict[str, Any] = {
        "type": type,
        "alert_id": alert_id,
        "budget_id": budget.id,
        "scope": budget.scope,
        "subject": budget.subject or None,
        "week": week.label if week else None,
        "week_start": week.start.isoformat() if week else None,
        "period": window.label,
        "period_start": window.start.isoformat(),
        "threshold": threshold,
        "limit_usd": render_usd(limit_units),
        "spend_usd": render_usd(spend_units),
        "fired_at": format_timestamp(fired_at),
    }
    if projected_units is not None:
        doc["projected_spend_usd"] = render_usd(projected_units)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
