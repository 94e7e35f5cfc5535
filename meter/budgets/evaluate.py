"""Budget evaluation after each roll-up. (Being written: fires alerts exactly once.)"""

from __future__ import annotations

from datetime import datetime

from meter.db.session import Database
from meter.weeks import Week


def evaluate_after_rollup(db: Database, weeks: list[Week], now: datetime) -> int:
    """Evaluate every budget for the weeks just rolled up; return how many alerts fired."""
    return 0
