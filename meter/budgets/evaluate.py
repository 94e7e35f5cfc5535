"""Budget evaluation after each roll-up: fire each (budget, type, period, threshold) exactly once.

The claim is the `alerts` unique key (INSERT ... ON CONFLICT DO NOTHING), not a cache, so any
number of `meter serve` processes may evaluate the same week. The fired alert row is also the
delivery's outbox entry (meter.budgets.delivery sends it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection

from meter.budgets import repository as repo
from meter.budgets.payload import PROJECTED_OVERSPEND, THRESHOLD_CROSSED, build_payload
from meter.budgets.rules import crossed_thresholds, min_elapsed, projected_spend, threshold_key
from meter.db.session import Database
from meter.ids import uuid7
from meter.money import MAX_UNITS
from meter.periods import (
    PERIOD_KINDS,
    PeriodKind,
    Window,
    local_date,
    window_at,
    window_of,
    window_of_week,
)
from meter.weeks import Week, week_of

log = logging.getLogger("meter.budgets")


def evaluate_after_rollup(db: Database, weeks: list[Week], now: datetime) -> int:
    """Evaluate every budget for the periods touching the weeks just rolled up; return how many
    alerts fired."""
    if not weeks:
        return 0
    with db.engine.begin() as conn:
        fired = evaluate_weeks(conn, db.tz, weeks, now)
    if fired:
        log.info("budgets: %d alert(s) fired", fired)
    return fired


def windows_touching(weeks: Iterable[Week], kind: PeriodKind, today: date) -> set[Window]:
    """The periods of one kind that share a day with these weeks, up to today's."""
    out: set[Window] = set()
    for week in weeks:
        if kind == "week":
            out.add(window_of_week(week))
            continue
        for i in range(7):
            day = week.start + timedelta(days=i)
            if day <= today:
                out.add(window_at(kind, day))
    return out


def evaluate_weeks(
    conn: Connection,
    tz: ZoneInfo,
    weeks: Iterable[Week],
    now: datetime,
    budgets: Sequence[repo.BudgetRow] | None = None,
) -> int:
    """Fire what the roll-up's spend crosses, in the caller's transaction: for each budget,
    every period of its kind that shares a day with `weeks` (a day, week or month).

    A period is judged only for budgets that existed before it ended: a new budget does not
    fire about periods already over. The projection is judged for the current period only.
    """
    if budgets is None:
        budgets = repo.list_budgets(conn)
    weeks = sorted(set(weeks))
    today = local_date(now, tz)
    by_window: dict[Window, list[repo.BudgetRow]] = {}
    for kind in PERIOD_KINDS:
        members = [b for b in budgets if b.period == kind]
        if members:
            for window in windows_touching(weeks, kind, today):
                by_window[window] = members
    fired = 0
    for window in sorted(by_window, key=lambda w: (w.start, w.end)):
        start, end = window.bounds(tz)
        active = [b for b in by_window[window] if b.created_at < end]
        if not active:
            continue
        current = window == window_of(window.kind, now, tz)
        spends = repo.spend_in(conn, window, active)
        done = repo.fired_keys(conn, window.start)
        for budget in active:
            spend = spends[budget.id]
            for values in _due_alerts(budget, window, spend, start, end, now, current):
                if (budget.id, values["type"], values["threshold"]) in done:
                    continue
                if repo.claim_alert(conn, values):
                    fired += 1
    return fired


def evaluate_current(
    conn: Connection, tz: ZoneInfo, now: datetime, budgets: Sequence[repo.BudgetRow]
) -> int:
    """Judge budgets against their current period now (a budget just created or changed)."""
    return evaluate_weeks(conn, tz, [week_of(now, tz)], now, budgets)


def _due_alerts(
    budget: repo.BudgetRow,
    window: Window,
    spend: int,
    start: datetime,
    end: datetime,
    now: datetime,
    is_current: bool,
) -> list[dict[str, object]]:
    """Rows to claim, in delivery order: thresholds ascending, then the projection.

    Ids are UUIDv7 made in that order, and the outbox delivers a budget's alerts by id.
    """
    limit = budget.limit_units
    rows = []
    for threshold in crossed_thresholds(spend, limit, budget.thresholds):
        rows.append(_row(budget, window, THRESHOLD_CROSSED, threshold_key(threshold), spend, now))
    projected = (
        projected_spend(spend, limit, start, end, now, min_elapsed(start, end))
        if is_current
        else None
    )
    if projected is not None:
        rows.append(_row(budget, window, PROJECTED_OVERSPEND, "", spend, now, projected))
    return rows


def _row(
    budget: repo.BudgetRow,
    window: Window,
    type: str,
    threshold: str,
    spend: int,
    now: datetime,
    projected: int | None = None,
) -> dict[str, object]:
    alert_id = str(uuid7())
    payload = build_payload(
        type=type,
        alert_id=alert_id,
        budget=budget,
        window=window,
        threshold=threshold or None,
        limit_units=budget.limit_units,
        spend_units=spend,
        fired_at=now,
        projected_units=projected,
    )
    deliverable = bool(budget.webhook_url)
    return {
        "id": alert_id,
        "budget_id": budget.id,
        "type": type,
        "period": window.kind,
        "week_start": window.start,  # the period's start
        "threshold": threshold,
        # The columns are int64; a period's spend past $9.2M saturates there, while the payload
        # (what the API shows and the webhook sends) keeps the exact amount.
        "spend_units": min(spend, MAX_UNITS),
        "limit_units": budget.limit_units,
        "projected_units": None if projected is None else min(projected, MAX_UNITS),
        "fired_at": now,
        "payload": payload,
        # Without a webhook there is nothing to send: the alert is kept, visible in the API,
        # and can be redelivered once a URL is set.
        "delivery_status": "pending" if deliverable else "failed",
        "attempts": 0,
        "last_error": None if deliverable else "the budget has no webhook_url",
        "next_attempt_at": now if deliverable else None,
        "delivered_at": None,
    }
