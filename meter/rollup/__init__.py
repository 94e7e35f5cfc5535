"""The weekly roll-up: exact, incremental totals per (week, team, user, model).

`run_rollup` is the one entry point (scheduler, `meter rollup`, `POST /v1/rollup`).
"""

from meter.rollup.engine import RollupResult, run_rollup
from meter.rollup.lease import LeaseLost, RollupBusy

__all__ = ["LeaseLost", "RollupBusy", "RollupResult", "run_rollup"]
