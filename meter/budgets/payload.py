"""The webhook body: built once when an alert fires and stored as the exact text to send."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from meter.budgets.repository import BudgetRow
from meter.events import format_timestamp
from meter.money import render_usd
from meter.weeks import Week

THRESHOLD_CROSSED = "budget.threshold_crossed"
PROJECTED_OVERSPEND = "budget.projected_overspend"
TEST = "budget.test"
ALERT_TYPES = (THRESHOLD_CROSSED, PROJECTED_OVERSPEND)


def build_payload(
    *,
    type: str,
    alert_id: str,
    budget: BudgetRow,
    week: Week,
    threshold: str | None,
    limit_units: int,
    spend_units: int,
    fired_at: datetime,
    projected_units: int | None = None,
) -> str:
    """The JSON text of a delivery; money as exact decimal strings, never JSON numbers."""
    doc: dict[str, Any] = {
        "type": type,
        "alert_id": alert_id,
        "budget_id": budget.id,
        "scope": budget.scope,
        "subject": budget.subject or None,
        "week": week.label,
        "week_start": week.start.isoformat(),
        "threshold": threshold,
        "limit_usd": render_usd(limit_units),
        "spend_usd": render_usd(spend_units),
        "fired_at": format_timestamp(fired_at),
    }
    if projected_units is not None:
        doc["projected_spend_usd"] = render_usd(projected_units)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
