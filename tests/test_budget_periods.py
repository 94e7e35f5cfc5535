"""Budgets per day, week or month and tag budgets (SPEC section 8), on a New York database:
alerts fire once per period with its label and re-arm in the next one; spend is the exact sum
of the events in the budget's window; a budget's period is fixed; tag keys and their 409."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meter import audit
from meter.api.app import create_app
from meter.budgets import service
from meter.budgets.evaluate import evaluate_weeks
from meter.budgets.repository import get_budget, spend_in
from meter.budgets.rules import budget_window
from meter.budgets.schemas import BudgetCreate
from meter.cli import app
from meter.db import models
from meter.db.session import Database
from meter.periods import parse_period
from meter.rollup import run_rollup
from meter.settings import get_settings
from meter.weeks import week_of
from tests.budget_helpers import loopback_settings
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.test_rollup_helpers import store

NY = ZoneInfo("America/New_York")
ADMIN = {"Authorization": "Bearer test-admin-key"}
OCTOBER = datetime(2026, 10, 1, tzinfo=NY)
MILLION = 1_000_000  # prompt tokens: $0.11 at the seed price
# The roll-up judges the current month with the real clock, whose pace may project an overspend.
CROSSED = "budget.threshold_crossed"


@pytest.fixture
def ny(databases: DatabaseFactory) -> Iterator[tuple[Database, TestClient]]:
    db = databases.database("America/New_York")
    settings = get_settings(admin_key="test-admin-key", timezone="America/New_York")
    yield db, TestClient(create_app(settings, db, scheduler=False), headers=ADMIN)


def make_budget(db: Database, at: datetime = OCTOBER, **fields: Any) -> int:
    doc: dict[str, Any] = {"scope": "team", "subject": "search"}
    doc.update(fields)
    with db.engine.begin() as conn:
        return service.create_budget(
            conn, BudgetCreate(**doc), loopback_settings(), service.Clock(at, db.tz)
        )


def alerts(db: Database, only: str | None = None) -> list[tuple[str, str, str, str]]:
    """(period, period start, type, threshold) of every alert (or of one type), oldest first."""
    a = models.Alert
    query = sa.select(a.period, a.week_start, a.type, a.threshold).order_by(a.id)
    if only is not None:
        query = query.where(a.type == only)
    with db.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [(r[0], str(r[1]), r[2], r[3]) for r in rows]


def spend(db: Database, budget_id: int, now: datetime) -> int:
    with db.engine.connect() as conn:
        budget = get_budget(conn, budget_id)
        assert budget is not None
        return spend_in(conn, budget_window(budget, now, db.tz), [budget])[budget_id]


def test_a_monthly_budget_fires_once_a_month_and_rearms_the_next(ny):
    db, client = ny
    bid = make_budget(db, period="month", limit_usd="1.1", thresholds=["0.5", "0.8"])
    team = {"team": "search", "user": "alice"}
    store(db, [event(occurred_at=datetime(2026, 11, 10, 12, tzinfo=NY), prompt_tokens=4 * MILLION,
                     **team)])  # fmt: skip
    run_rollup(db)
    assert alerts(db, CROSSED) == []  # 40%
    # 23:30 on November 30th in New York is already December in UTC: still November's spend.
    store(db, [event(occurred_at=datetime(2026, 11, 30, 23, 30, tzinfo=NY),
                     prompt_tokens=2 * MILLION, **team)])  # fmt: skip
    run_rollup(db)
    assert alerts(db, CROSSED) == [("month", "2026-11-01", "budget.threshold_crossed", "0.5")]
    store(db, [event(occurred_at=datetime(2026, 11, 15, tzinfo=NY), prompt_tokens=MILLION,
                     **team)])  # fmt: skip
    run_rollup(db)  # 70%: 0.5 does not fire again this month, 0.8 is not reached
    assert len(alerts(db, CROSSED)) == 1
    # Each event has one completion token too (the factory's default).
    assert spend(db, bid, datetime(2026, 11, 20, tzinfo=NY)) == 7 * MILLION * 110_000 + 3 * 190_000
    store(db, [event(occurred_at=datetime(2026, 12, 1, 0, 30, tzinfo=NY),
                     prompt_tokens=6 * MILLION, **team)])  # fmt: skip
    run_rollup(db)
    assert alerts(db, CROSSED) == [
        ("month", "2026-11-01", "budget.threshold_crossed", "0.5"),
        ("month", "2026-12-01", "budget.threshold_crossed", "0.5"),
    ]
    listed = client.get("/v1/alerts", params={"budget_id": bid}).json()["alerts"]
    november = next(a for a in listed if a["period"] == "2026-11" and a["type"] == CROSSED)
    assert november["period_start"] == "2026-11-01"
    assert november["week"] is None and november["week_start"] is None
    assert november["spend_usd"] == "0.66000038" and november["limit_usd"] == "1.1"
    with db.engine.connect() as conn:
        payload = json.loads(
            conn.execute(
                sa.select(models.Alert.payload).where(
                    models.Alert.week_start == date(2026, 11, 1), models.Alert.type == CROSSED
                )
            ).scalar_one()
        )
    assert (payload["period"], payload["period_start"], payload["week"]) == (
        "2026-11", "2026-11-01", None,
    )  # fmt: skip
    body = client.get(f"/v1/budgets/{bid}").json()
    assert (body["period"], body["limit_usd"], body["weekly_limit_usd"]) == ("month", "1.1", None)
    # GET /v1/alerts?period=: one period's alerts, of any kind of label.
    by_month = client.get("/v1/alerts", params={"period": "2026-12"}).json()["alerts"]
    assert [(a["period"], a["threshold"]) for a in by_month if a["type"] == CROSSED] == [
        ("2026-12", "0.5")
    ]
    assert client.get("/v1/alerts", params={"period": "2026-W49"}).json()["alerts"] == []
    assert client.get("/v1/alerts", params={"period": "2026-12-01"}).json()["alerts"] == []
    r = client.get("/v1/alerts", params={"period": "December"})
    assert r.status_code == 422 and "period" in r.text and "2026-W49" in r.text


def test_a_daily_budget_rearms_each_local_day(ny):
    db, _ = ny
    make_budget(db, period="day", limit_usd="0.11", thresholds=["1"])
    store(db, [
        event(team="search", occurred_at=datetime(2026, 11, 1, 0, 30, tzinfo=NY),
              prompt_tokens=MILLION),
        # 2026-11-01 lasts 25 h: 04:30Z on the 2nd is still its 23:30
        event(team="search", occurred_at=datetime(2026, 11, 2, 4, 30, tzinfo=UTC),
              prompt_tokens=MILLION),
        event(team="search", occurred_at=datetime(2026, 11, 2, 9, tzinfo=NY),
              prompt_tokens=MILLION),
    ])  # fmt: skip
    run_rollup(db)
    assert alerts(db) == [
        ("day", "2026-11-01", "budget.threshold_crossed", "1"),
        ("day", "2026-11-02", "budget.threshold_crossed", "1"),
    ]


def test_week_budgets_keep_their_fields_and_existing_alert_shape(ny):
    db, client = ny
    bid = make_budget(db, weekly_limit_usd="0.2")
    store(db, [event(team="search", occurred_at=datetime(2026, 11, 24, 12, tzinfo=NY),
                     prompt_tokens=MILLION)])  # fmt: skip
    run_rollup(db)
    assert alerts(db) == [("week", "2026-11-23", "budget.threshold_crossed", "0.5")]
    a = client.get("/v1/alerts", params={"week": "2026-W48"}).json()["alerts"][0]
    assert (a["week"], a["week_start"], a["period"], a["period_start"]) == (
        "2026-W48", "2026-11-23", "2026-W48", "2026-11-23",
    )  # fmt: skip
    body = client.get(f"/v1/budgets/{bid}").json()
    assert (body["period"], body["weekly_limit_usd"], body["limit_usd"]) == ("week", "0.2", "0.2")


def test_the_period_is_fixed_at_creation(ny):
    _db, client = ny
    r = client.post("/v1/budgets", json={"scope": "global", "period": "month", "limit_usd": "5"})
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    r = client.patch(f"/v1/budgets/{bid}", json={"period": "week"})
    assert r.status_code == 422
    assert "period" in r.text
    assert client.patch(f"/v1/budgets/{bid}", json={"period": "month"}).status_code == 200
    r = client.patch(f"/v1/budgets/{bid}", json={"limit_usd": "7.5"})
    assert r.status_code == 200 and r.json()["limit_usd"] == "7.5"
    r = client.patch(f"/v1/budgets/{bid}", json={"weekly_limit_usd": "7.5"})
    assert r.status_code == 422
    r = client.post(
        "/v1/budgets", json={"scope": "global", "period": "day", "weekly_limit_usd": "5"}
    )
    assert r.status_code == 422 and "limit_usd" in r.text
    r = client.post("/v1/budgets", json={"scope": "global", "period": "year", "limit_usd": "5"})
    assert r.status_code == 422
    r = client.post("/v1/budgets", json={"scope": "global"})
    assert r.status_code == 422 and "limit_usd" in r.text


def test_a_tag_budget_counts_only_events_with_its_tag(ny):
    db, client = ny
    r = client.post("/v1/budgets", json={"scope": "tag", "subject": "feature=chat",
                                         "limit_usd": "1", "period": "month"})  # fmt: skip
    assert r.status_code == 422 and "meter tags add feature" in r.text
    assert client.post("/v1/tags", json={"key": "feature"}).status_code == 201
    assert client.post("/v1/tags", json={"key": "feature"}).status_code == 409
    r = client.post("/v1/budgets", json={"scope": "tag", "subject": "feature=chat",
                                         "limit_usd": "1", "period": "month"})  # fmt: skip
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    at = datetime.now(UTC) - timedelta(minutes=1)
    store(db, [
        event(occurred_at=at, tags={"feature": "chat"}, prompt_tokens=3, completion_tokens=5),
        event(occurred_at=at, tags={"feature": "chat", "env": "prod"}, prompt_tokens=7),
        event(occurred_at=at, tags={"feature": "search"}, prompt_tokens=1_000),
        event(occurred_at=at, prompt_tokens=2_000),
    ])  # fmt: skip
    run_rollup(db)
    body = client.get(f"/v1/budgets/{bid}").json()
    # 3 + 7 prompt tokens, 5 + 1 completion tokens: the two chat events only.
    assert Decimal(body["spend_usd"]) == Decimal("0.00000011") * 10 + Decimal("0.00000019") * 6
    assert body["period_label"] == parse_period("month", body["period_start"][:7]).label
    assert client.get("/v1/tags").json()["tags"][0]["key"] == "feature"
    r = client.delete("/v1/tags/feature")
    assert r.status_code == 409 and str(bid) in r.text
    assert client.delete(f"/v1/budgets/{bid}").status_code == 204
    assert client.delete("/v1/tags/feature").status_code == 204
    assert client.delete("/v1/tags/feature").status_code == 404
    assert client.get("/v1/tags").json() == {"tags": []}
    # Each change once in the audit log (the refused ones, none): tag, budget, budget, tag.
    with db.engine.connect() as conn:
        entries = list(reversed(audit.list_entries(conn)))
    assert [(e.action, e.target) for e in entries] == [
        ("tag.add", "feature"),
        ("budget.create", f"budget:{bid}"),
        ("budget.delete", f"budget:{bid}"),
        ("tag.remove", "feature"),
    ]
    assert entries[0].details == {"rows_backfilled": 0}


def test_projected_overspend_uses_the_months_real_length(ny):
    db, _client = ny
    make_budget(db, period="month", limit_usd="3.1", thresholds=["10"])
    store(db, [event(team="search", occurred_at=datetime(2026, 11, 2, tzinfo=NY),
                     prompt_tokens=10 * MILLION)])  # fmt: skip
    run_rollup(db)
    week = [week_of(datetime(2026, 11, 2, tzinfo=NY), NY)]
    with db.engine.begin() as conn:
        # 1/10 of the month passed: less than 1/7, no projection yet.
        assert evaluate_weeks(conn, NY, week, datetime(2026, 11, 4, tzinfo=NY)) == 0
        # Past 1/7 (103 of its 721 hours: DST adds one): $1.1 in 121 hours projects $6.55.
        assert evaluate_weeks(conn, NY, week, datetime(2026, 11, 6, tzinfo=NY)) == 1
        assert evaluate_weeks(conn, NY, week, datetime(2026, 11, 7, tzinfo=NY)) == 0
    assert alerts(db) == [("month", "2026-11-01", "budget.projected_overspend", "")]


def test_budget_window_is_the_local_period_of_now():
    now = datetime(2026, 11, 2, 4, 30, tzinfo=UTC)  # 23:30 on 2026-11-01 in New York

    class B:
        def __init__(self, period: str) -> None:
            self.period = period

    day = budget_window(B("day"), now, NY)
    assert (day.start, day.end, day.label) == (date(2026, 11, 1), date(2026, 11, 2), "2026-11-01")
    start, end = day.bounds(NY)
    assert end - start == timedelta(hours=25)
    week = budget_window(B("week"), now, NY)
    assert (week.start, week.end, week.label) == (date(2026, 10, 26), date(2026, 11, 2), "2026-W44")
    month = budget_window(B("month"), now, NY)
    assert (month.start, month.end, month.label) == (
        date(2026, 11, 1),
        date(2026, 12, 1),
        "2026-11",
    )


def test_tags_cli_adds_lists_and_removes(db_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METER_DATABASE_URL", db_url)
    runner = CliRunner()
    result = runner.invoke(app, ["tags", "add", "project"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["tags", "list"]).output == "project\n"
    result = runner.invoke(app, ["budgets", "create", "--scope", "tag", "--subject", "project=x",
                                 "--limit", "2", "--period", "month"])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["tags", "remove", "project"])
    assert result.exit_code != 0
    assert "budget" in result.output
    assert runner.invoke(app, ["tags", "list"]).output == "project\n"
