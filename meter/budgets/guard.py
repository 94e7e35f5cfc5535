"""Budget enforcement for the client: a cached, microsecond check. (Being written.)"""

from __future__ import annotations

from typing import Any


class BudgetGuard:
    """Raises BudgetExceeded before a call that an enforced budget forbids; fails open."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter

    def check(self, *, team: str | None, user: str | None) -> None:
        return None

    def close(self) -> None:
        return None
