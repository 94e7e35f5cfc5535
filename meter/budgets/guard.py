"""Budget enforcement for the client: a check that costs microseconds, and fails open.

The guard keeps a snapshot of the enforced budgets at or over their limit in their current period
(day, week or month), read from the roll-up (directly from the database, or from a meter
server's `GET /v1/budgets`), and refreshes it in a background thread every min(roll-up
interval, 30 s). `check` only looks the call's team, user, tags and "global" up in that
snapshot: no query on the caller's path. The first
check waits (at most `first_load_timeout`) for the first snapshot. When the budget state cannot
be read, or the last snapshot is too old, calls go through and a warning is logged: a metering
outage must not stop LLM traffic.

Spend is the roll-up's, so a budget blocks calls from the refresh after the roll-up that put it
over its limit; a new period starts unblocked. Tag budgets block calls carrying their tag.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from meter._exceptions import BudgetExceeded, StoreUnavailable
from meter.money import format_decimal, to_decimal, units_to_usd
from meter.weeks import week_of

log = logging.getLogger("meter.budgets")

MAX_REFRESH_SECONDS = 30.0
FIRST_LOAD_TIMEOUT = 2.0
HTTP_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}


@dataclass(frozen=True)
class Blocked:
    budget_id: int
    scope: str
    subject: str | None
    limit_usd: Decimal
    spend_usd: Decimal
    period: str = "week"

    def error(self) -> BudgetExceeded:
        who = "all usage" if self.scope == "global" else f"{self.scope} {self.subject}"
        return BudgetExceeded(
            f"budget {self.budget_id} ({who}) has spent ${format_decimal(self.spend_usd)} of its "
            f"${format_decimal(self.limit_usd)} {_ADJECTIVE.get(self.period, self.period)} limit; "
            "the call was not sent",
            budget_id=self.budget_id,
            scope=self.scope,
            subject=self.subject,
            limit_usd=self.limit_usd,
            spend_usd=self.spend_usd,
        )


@dataclass(frozen=True)
class Snapshot:
    blocked: dict[tuple[str, str], Blocked]  # (scope, subject or '') -> the budget over its limit
    valid_until: float  # time.time(): the end of the week it is for, or when it is too old


class BudgetGuard:
    """Raises BudgetExceeded before a call that an enforced budget forbids; fails open."""

    def __init__(
        self,
        meter: Any,
        *,
        refresh_seconds: float | None = None,
        first_load_timeout: float = FIRST_LOAD_TIMEOUT,
    ) -> None:
        # A weak reference: the refresh thread must not keep an abandoned Meter alive.
        self._meter_ref = weakref.ref(meter)
        interval = float(meter.settings.rollup_interval_seconds)
        self.refresh_seconds = refresh_seconds or min(interval, MAX_REFRESH_SECONDS)
        # A snapshot older than this is not trusted: the state "cannot be read", so fail open.
        self.stale_after = 3 * self.refresh_seconds + 30.0
        self.first_load_timeout = first_load_timeout
        self._snapshot: Snapshot | None = None
        self._first_done = threading.Event()
        self._waited = False
        self._failing = False
        self._stop = threading.Event()
        self._http: httpx.Client | None = None
        self._thread = threading.Thread(target=self._run, name="meter-budget-guard", daemon=True)
        self._thread.start()

    @property
    def meter(self) -> Any:
        meter = self._meter_ref()
        if meter is None:
            self._stop.set()
            raise StoreUnavailable("the meter is gone")
        return meter

    # -- the caller's path ------------------------------------------------------------------

    def check(
        self, *, team: str | None, user: str | None, tags: dict[str, str] | None = None
    ) -> None:
        snapshot = self._snapshot
        if snapshot is None:
            if self._waited:
                return
            self._first_done.wait(self.first_load_timeout)
            self._waited = True
            snapshot = self._snapshot
            if snapshot is None:
                return
        blocked = snapshot.blocked
        if not blocked or time.time() >= snapshot.valid_until:
            return
        hit = (
            (team is not None and blocked.get(("team", team)))
            or (user is not None and blocked.get(("user", user)))
            or blocked.get(("global", ""))
        )
        if not hit and tags:
            for key, value in tags.items():
                hit = blocked.get(("tag", f"{key}={value}"))
                if hit:
                    break
        if hit:
            raise hit.error()

    # -- the background refresh -------------------------------------------------------------

    def refresh(self) -> bool:
        """Read the budget state once; False (and a warning) when it cannot be read."""
        try:
            self._snapshot = self._load()
        except Exception as exc:  # whatever the reason, the answer is the same: fail open
            if not self._failing:
                log.warning(
                    "budget enforcement is off until the budget state can be read again: %s",
                    _reason(exc),
                )
            self._failing = True
            snapshot = self._snapshot
            if snapshot is not None and time.time() >= snapshot.valid_until:
                self._snapshot = None
            return False
        if self._failing:
            log.info("budget enforcement is on again")
        self._failing = False
        return True

    def _run(self) -> None:
        self.refresh()
        self._first_done.set()
        while not self._stop.wait(self.refresh_seconds):
            self.refresh()

    def _load(self) -> Snapshot:
        if self.meter.api_url:
            return self._load_from_server()
        return self._load_from_database()

    def _load_from_database(self) -> Snapshot:
        from meter.budgets import repository as repo  # SQLAlchemy: only for a database store

        db = self.meter.database()
        if db is None:
            raise StoreUnavailable("the database cannot be reached")
        now = datetime.now(UTC)
        # Valid until the end of the current week at the latest (and of the current day, once
        # a day budget is blocked: the next day starts unblocked).
        valid_until = week_of(now, db.tz).bounds(db.tz)[1].timestamp()
        with db.engine.connect() as conn:
            conn = conn.execution_options(readonly=True)
            budgets = repo.list_budgets(conn, enforced_only=True)
            spends = repo.spend_now(conn, budgets, now, db.tz)
        blocked: dict[tuple[str, str], Blocked] = {}
        for b in budgets:
            window, spend = spends[b.id]
            valid_until = min(valid_until, window.bounds(db.tz)[1].timestamp())
            if spend >= b.limit_units:
                blocked.setdefault(
                    (b.scope, b.subject),
                    Blocked(
                        b.id,
                        b.scope,
                        b.subject or None,
                        units_to_usd(b.limit_units),
                        units_to_usd(spend),
                        b.period,
                    ),
                )
        return Snapshot(blocked, min(valid_until, time.time() + self.stale_after))

    def _load_from_server(self) -> Snapshot:
        if self._http is None:
            key = getattr(self.meter, "api_key", None) or getattr(self.meter, "_api_key", None)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._http = httpx.Client(timeout=HTTP_TIMEOUT, headers=headers)
        response = self._http.get(f"{self.meter.api_url}/v1/budgets")
        if response.status_code != 200:
            raise StoreUnavailable(
                f"GET /v1/budgets answered HTTP {response.status_code} "
                "(the guard needs a key with the read role)"
            )
        blocked: dict[tuple[str, str], Blocked] = {}
        for b in response.json()["budgets"]:
            if not b.get("enforce"):
                continue
            limit = to_decimal(b.get("limit_usd") or b["weekly_limit_usd"], "limit_usd")
            spend = to_decimal(b["spend_usd"], "spend_usd")
            if spend >= limit:
                subject = b.get("subject") or ""
                blocked.setdefault(
                    (b["scope"], subject),
                    Blocked(
                        int(b["id"]),
                        b["scope"],
                        subject or None,
                        limit,
                        spend,
                        b.get("period", "week"),
                    ),
                )
        return Snapshot(blocked, time.time() + self.stale_after)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self._http is not None:
            self._http.close()


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return (text.splitlines()[0] if text else "") or type(exc).__name__
