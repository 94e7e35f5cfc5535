"""What the audit log says about a budget or an alert: its settings, never its webhook secret."""

from __future__ import annotations

from typing import Any

from meter.budgets.repository import AlertRow
from meter.budgets.schemas import BudgetOut
from meter.weeks import Week

# This week's spend is not a setting of the budget: it changes without anyone changing it.
_NOT_SETTINGS = {"week", "spend_usd", "ratio"}


def budget_details(view: BudgetOut) -> dict[str, Any]:
    """The budget's settings as the API shows them (`has_webhook_secret`, never the secret)."""
    return view.model_dump(mode="json", exclude=_NOT_SETTINGS)


def alert_details(alert: AlertRow) -> dict[str, Any]:
    return {
        "budget_id": alert.budget_id,
        "type": alert.type,
        "week": Week(alert.week_start).label,
        "threshold": alert.threshold or None,
    }
