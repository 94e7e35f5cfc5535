"""Evaluation after a roll-up: each (budget, type, week, threshold) fires exactly once."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

from meter.budgets import service
from meter.budgets.evaluate import evaluate_after_rollup
from meter.budgets.schemas import BudgetCreate, BudgetPatch
from meter.db.session import Database
from meter.weeks import Week, week_of
from tests.budget_helpers import USD, alert_rows, api, loopback_settings, put_usage

W48 = Week(date(2026, 11, 23))
W49 = W48.next()
MONDAY = datetime(2026, 11, 23, tzinfo=UTC)
WEDNESDAY_NOON = datetime(2026, 11, 25, 12, tzinfo=UTC)


def make_budget(db: Database, at: datetime = MONDAY, **fields: Any) -> int:
    doc: dict[str, Any] = {"scope": "team", "subject": "search", "weekly_limit_usd": "50"}
    doc.update(fields)
    if doc["scope"] == "global":
        doc.pop("subject", None)
    with db.engine.begin() as conn:
        return service.create_budget(
            conn, BudgetCreate(**doc), loopback_settings(), service.Clock(at, db.tz)
        )


def patch_budget(db: Database, budget_id: int, at: datetime, **fields: Any) -> None:
    with db.engine.begin() as conn:
        service.update_budget(
            conn, budget_id, BudgetPatch(**fields), loopback_settings(), service.Clock(at, db.tz)
        )


def evaluate(db: Database, week: Week = W48, now: datetime = MONDAY + timedelta(hours=1)) -> int:
    # Monday 01:00 by default: too early in the week for a projection to speak.
    return evaluate_after_rollup(db, [week], now)


def test_thresholds_fire_once_each_in_ascending_order(db: Database):
    bid = make_budget(db)
    put_usage(db, W48.start, 20 * USD)  # 40%
    assert evaluate(db, now=MONDAY + timedelta(hours=1)) == 0
    put_usage(db, W48.start, 25 * USD)  # 50% exactly: "at or over"
    assert evaluate(db, now=MONDAY + timedelta(hours=2)) == 1
    put_usage(db, W48.start, 50 * USD + 1)  # past 80% and 100% in one roll-up
    assert evaluate(db, now=MONDAY + timedelta(hours=3)) == 2
    for _ in range(3):
        assert evaluate(db, now=MONDAY + timedelta(hours=4)) == 0
    assert alert_rows(db) == [
        (bid, "budget.threshold_crossed", "2026-11-23", "0.5"),
        (bid, "budget.threshold_crossed", "2026-11-23", "0.8"),
        (bid, "budget.threshold_crossed", "2026-11-23", "1"),
    ]
    alerts = api(db).get("/v1/alerts", params={"week": "2026-W48"}).json()["alerts"]
    assert [(a["threshold"], a["spend_usd"], a["limit_usd"]) for a in alerts] == [
        ("1", "50.000000000001", "50"),
        ("0.8", "50.000000000001", "50"),
        ("0.5", "25", "50"),
    ]
    assert alerts[2] == {
        "id": alerts[2]["id"],
        "budget_id": bid,
        "type": "budget.threshold_crossed",
        "week": "2026-W48",
        "week_start": "2026-11-23",
        "period": "2026-W48",  # SPEC section 8: the period's label and start
        "period_start": "2026-11-23",
        "threshold": "0.5",
        "spend_usd": "25",
        "limit_usd": "50",
        "projected_spend_usd": None,
        "fired_at": "2026-11-23T02:00:00Z",
        "delivery": {
            "status": "failed",
            "attempts": 0,
            "last_error": "the budget has no webhook_url",
        },
    }


def test_a_budget_with_no_usage_fires_nothing(db: Database):
    make_budget(db)
    make_budget(db, scope="user", subject="carol")
    put_usage(db, W48.start, 500 * USD, team="ads", user="bob")
    put_usage(db, W48.start, 0, team="search", user="alice")  # a row, but no priced spend
    assert evaluate(db) == 0
    assert alert_rows(db) == []


def test_next_week_re_arms(db: Database):
    bid = make_budget(db, thresholds=[1])
    put_usage(db, W48.start, 60 * USD)
    assert evaluate(db) == 1
    put_usage(db, W49.start, 10 * USD)
    assert evaluate(db, W49, W49.bounds(db.tz)[0] + timedelta(hours=1)) == 0
    put_usage(db, W49.start, 50 * USD)
    assert evaluate(db, W49, W49.bounds(db.tz)[0] + timedelta(hours=2)) == 1
    assert alert_rows(db) == [
        (bid, "budget.threshold_crossed", "2026-11-23", "1"),
        (bid, "budget.threshold_crossed", "2026-11-30", "1"),
    ]


def test_user_budgets_count_across_teams_and_global_counts_everything(db: Database):
    alice = make_budget(db, scope="user", subject="alice", weekly_limit_usd="10", thresholds=[1])
    everyone = make_budget(db, scope="global", weekly_limit_usd="30", thresholds=[1])
    put_usage(db, W48.start, 6 * USD, team="search", user="alice")
    put_usage(db, W48.start, 4 * USD, team="ads", user="alice")
    put_usage(db, W48.start, 19 * USD, team="ads", user="bob")
    assert evaluate(db) == 1
    put_usage(db, W48.start, 1 * USD, team="", user="")
    assert evaluate(db) == 1
    assert [(r[0], r[3]) for r in alert_rows(db)] == [(alice, "1"), (everyone, "1")]


def test_exact_comparison_at_the_smallest_unit(db: Database):
    # limit 3 units; thresholds 0.333333 and 0.5 of it: 1 unit crosses the first only.
    bid = make_budget(db, weekly_limit_usd="0.000000000003", thresholds=["0.333333", "0.5"])
    put_usage(db, W48.start, 1)
    assert evaluate(db) == 1
    put_usage(db, W48.start, 2)
    assert evaluate(db) == 1
    assert [r[3] for r in alert_rows(db) if r[0] == bid] == ["0.333333", "0.5"]


def test_spend_beyond_int64_is_summed_exactly(db: Database):
    big = 2**63 - 1
    make_budget(db, scope="global", weekly_limit_usd="9000000", thresholds=[1])
    put_usage(db, W48.start, big, team="a")
    put_usage(db, W48.start, big, team="b")
    put_usage(db, W48.start, big, team="c")
    assert evaluate(db) == 1
    budgets = api(db).get("/v1/budgets").json()["budgets"]
    assert budgets[0]["spend_usd"] in ("0", "27670116.110564327421")  # this week or not
    alerts = api(db).get("/v1/alerts").json()["alerts"]
    assert alerts[0]["spend_usd"] == "27670116.110564327421"


def test_raising_the_limit_keeps_fired_thresholds_and_judges_the_rest_anew(db: Database):
    bid = make_budget(db)
    put_usage(db, W48.start, 45 * USD)  # 90% of 50
    assert evaluate(db, now=MONDAY + timedelta(hours=1)) == 2  # 0.5, 0.8
    patch_budget(db, bid, MONDAY + timedelta(hours=2), weekly_limit_usd="100")
    assert evaluate(db, now=MONDAY + timedelta(hours=3)) == 0  # 45%: nothing new, nothing again
    put_usage(db, W48.start, 99 * USD)
    assert evaluate(db, now=MONDAY + timedelta(hours=4)) == 0  # 0.5 and 0.8 already fired
    put_usage(db, W48.start, 100 * USD)
    assert evaluate(db, now=MONDAY + timedelta(hours=5)) == 1
    alerts = api(db).get("/v1/alerts").json()["alerts"]
    assert [(a["threshold"], a["limit_usd"], a["spend_usd"]) for a in alerts] == [
        ("1", "100", "100"),
        ("0.8", "50", "45"),
        ("0.5", "50", "45"),
    ]


def test_lowering_the_limit_fires_at_once_without_waiting_for_new_usage(db: Database):
    now = datetime.now(UTC)
    bid = make_budget(db, at=now - timedelta(seconds=1), thresholds=[1], weekly_limit_usd="100")
    week = week_of(now, db.tz)
    put_usage(db, week.start, 60 * USD)
    patch_budget(db, bid, now, weekly_limit_usd="60")
    assert [(r[0], r[3]) for r in alert_rows(db)] == [(bid, "1")]


def test_a_budget_does_not_fire_for_weeks_over_before_it_existed(db: Database):
    make_budget(db, at=W49.bounds(db.tz)[0] + timedelta(hours=1))
    put_usage(db, W48.start, 60 * USD)
    assert evaluate(db, W48, W49.bounds(db.tz)[0] + timedelta(hours=2)) == 0


def test_projected_overspend_fires_once_per_week_with_its_projection(db: Database):
    bid = make_budget(db, thresholds=[1])
    put_usage(db, W48.start, 20 * USD)
    # Monday 12:00: too early to judge the week's pace.
    assert evaluate(db, now=MONDAY + timedelta(hours=12)) == 0
    # Wednesday 12:00: 60 of 168 hours, $20 -> $56 projected, over $50.
    assert evaluate(db, now=WEDNESDAY_NOON) == 1
    put_usage(db, W48.start, 30 * USD)
    assert evaluate(db, now=WEDNESDAY_NOON + timedelta(hours=1)) == 0
    alerts = api(db).get("/v1/alerts").json()["alerts"]
    assert [
        (a["type"], a["threshold"], a["spend_usd"], a["projected_spend_usd"]) for a in alerts
    ] == [("budget.projected_overspend", None, "20", "56")]
    assert alerts[0]["budget_id"] == bid


def test_a_slow_pace_projects_nothing(db: Database):
    make_budget(db, thresholds=[1])
    put_usage(db, W48.start, 10 * USD)  # $10 in 60 h -> $28 by Monday
    assert evaluate(db, now=WEDNESDAY_NOON) == 0
    # a past week is never projected
    put_usage(db, W48.start, 49 * USD)
    assert evaluate(db, W48, W49.bounds(db.tz)[0] + timedelta(hours=30)) == 0


def test_concurrent_evaluations_fire_each_alert_once(db: Database):
    make_budget(db)
    put_usage(db, W48.start, 100 * USD)
    barrier = threading.Barrier(4)
    results: list[int] = []

    def run() -> None:
        barrier.wait(10)
        results.append(evaluate(db, now=MONDAY + timedelta(hours=1)))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(results) == 3
    assert [r[3] for r in alert_rows(db)] == ["0.5", "0.8", "1"]


def test_creating_a_budget_already_over_fires_at_once(db: Database):
    now = datetime.now(UTC)
    put_usage(db, week_of(now, db.tz).start, 60 * USD)
    # $60 can project to at most $420 (7 x a day's pace): no projection whatever today is.
    bid = make_budget(db, at=now, weekly_limit_usd="1000", thresholds=["0.01", "0.05", "0.5"])
    assert [(r[0], r[3]) for r in alert_rows(db)] == [(bid, "0.01"), (bid, "0.05")]
