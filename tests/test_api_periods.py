"""Section 8's reads on a database in America/New_York: `GET /v1/usage` by day, week and month,
user reports by day, month and dates, the billing report (JSON and CSV), its CLI, team scoping.
Every amount is checked against the exact Decimal sum of the events it covers."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.cli import app
from meter.db.session import Database
from meter.events import EventRecord
from meter.pricing import SEED_MODEL
from meter.settings import get_settings
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.test_rollup_helpers import store

NY = ZoneInfo("America/New_York")
ADMIN = {"Authorization": "Bearer test-admin-key"}
IN_PRICE, OUT_PRICE = Decimal("0.11") / 10**6, Decimal("0.19") / 10**6


def cost(e: EventRecord) -> Decimal:
    if e.model != SEED_MODEL:
        return Decimal(0)
    return e.prompt_tokens * IN_PRICE + e.completion_tokens * OUT_PRICE


def local_day(e: EventRecord) -> date:
    return e.occurred_at.astimezone(NY).date()


def make_events() -> list[EventRecord]:
    """Events across October to December 2026 in New York, the edges of November included."""
    rng = random.Random(8)
    edges = [
        datetime(2026, 10, 31, 23, 30, tzinfo=NY),  # October's last half hour
        datetime(2026, 11, 1, 0, 30, tzinfo=NY),  # the 25-hour day
        datetime(2026, 11, 2, 4, 30, tzinfo=UTC),  # 2026-11-01 23:30 EST
        datetime(2026, 11, 30, 23, 30, tzinfo=NY),
        datetime(2026, 12, 1, 0, 30, tzinfo=NY),
    ]
    start = datetime(2026, 10, 20, tzinfo=UTC)
    moments = edges + [start + timedelta(minutes=rng.randint(0, 60 * 24 * 50)) for _ in range(80)]
    out = []
    for i, at in enumerate(moments):
        out.append(
            event(
                occurred_at=at,
                user=["alice", "bob", "org/carol", None][i % 4],
                team=["search", "ads", None][i % 3],
                model=SEED_MODEL if i % 7 else "acme/unpriced",
                prompt_tokens=rng.randint(0, 3_000_000),
                completion_tokens=rng.randint(0, 2_000_000),
                tags={"feature": ["chat", "search"][i % 2]} if i % 5 else None,
            )
        )
    return out


@pytest.fixture
def ny(databases: DatabaseFactory) -> Iterator[tuple[Database, TestClient, list[EventRecord]]]:
    db = databases.database("America/New_York")
    events = make_events()
    store(db, events)
    settings = get_settings(admin_key="test-admin-key", timezone="America/New_York")
    client = TestClient(create_app(settings, db, scheduler=False))
    assert client.post("/v1/rollup", headers=ADMIN).status_code == 200
    yield db, client, events


def usd(value: str | None) -> Decimal:
    return Decimal(value) if value else Decimal(0)


def in_november(e: EventRecord) -> bool:
    return local_day(e).year == 2026 and local_day(e).month == 11


def test_usage_by_day_month_and_week_are_exact_sums(ny):
    _db, client, events = ny
    r = client.get(
        "/v1/usage", params={"period": "day", "from": "2026-10-01", "to": "2026-12-31",
                             "group_by": ""}, headers=ADMIN,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["period"] == "day"
    days = {row["period"]: row for row in body["rows"]}
    expected_days: dict[str, list] = defaultdict(list)
    for e in events:
        expected_days[local_day(e).isoformat()].append(e)
    assert set(days) == set(expected_days)
    for label, evs in expected_days.items():
        assert days[label]["requests"] == len(evs)
        assert days[label]["prompt_tokens"] == sum(e.prompt_tokens for e in evs)
        assert usd(days[label]["cost_usd"]) == sum(cost(e) for e in evs)
        assert days[label]["period_start"] == label
    # The 25-hour day holds both of its events.
    assert days["2026-11-01"]["requests"] == len(expected_days["2026-11-01"]) >= 2

    r = client.get(
        "/v1/usage", params={"period": "month", "from": "2026-10", "to": "2026-12",
                             "group_by": ""}, headers=ADMIN,
    )  # fmt: skip
    months = {row["period"]: row for row in r.json()["rows"]}
    assert set(months) == {"2026-10", "2026-11", "2026-12"}
    for label, row in months.items():
        mine = [e for e in events if local_day(e).isoformat()[:7] == label]
        assert row["period_start"] == label + "-01"
        assert row["requests"] == len(mine)
        assert usd(row["cost_usd"]) == sum(cost(e) for e in mine)
        assert row["requests"] == sum(d["requests"] for k, d in days.items() if k[:7] == label)
        assert usd(row["cost_usd"]) == sum(
            usd(d["cost_usd"]) for k, d in days.items() if k[:7] == label
        )

    weekly = client.get(
        "/v1/usage/weekly", params={"from": "2026-W43", "to": "2026-W49"}, headers=ADMIN
    ).json()["rows"]
    by_week = client.get(
        "/v1/usage", params={"period": "week", "from": "2026-W43", "to": "2026-W49"},
        headers=ADMIN,
    ).json()["rows"]  # fmt: skip
    assert len(weekly) == len(by_week) > 0
    for w, p in zip(weekly, by_week, strict=True):
        assert (w["week"], w["week_start"]) == (p["period"], p["period_start"])
        assert {k: v for k, v in w.items() if k not in ("week", "week_start")} == {
            k: v for k, v in p.items() if k not in ("period", "period_start")
        }


def test_usage_422s_name_the_parameter(ny):
    _, client, _ = ny
    for params, field in [
        ({"period": "year"}, "period"),
        ({"period": "month", "from": "2026-13"}, "from"),
        ({"period": "day", "to": "2026-02-30"}, "to"),
        ({"period": "week", "from": "2025-W53"}, "from"),
        ({"period": "month", "from": "2026-12", "to": "2026-11"}, "from"),
        ({"group_by": "team,tag:a,tag:b"}, "group_by"),
        ({"group_by": "colour"}, "group_by"),
    ]:
        r = client.get("/v1/usage", params=params, headers=ADMIN)
        assert r.status_code == 422, (params, r.text)
        assert field in r.text


def test_a_users_november_report_is_the_exact_sum_of_their_november_events(ny):
    _, client, events = ny
    mine = [e for e in events if e.user == "alice" and in_november(e)]
    expected = sum(cost(e) for e in mine)
    for params in ({"month": "2026-11"}, {"from": "2026-11-01", "to": "2026-11-30"}):
        r = client.get("/v1/reports/users/alice", params=params, headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["from"], body["to"]) == ("2026-11-01", "2026-11-30")
        assert body["week"] is None
        assert Decimal(body["total_cost_usd"]) == expected
        assert sum(line["requests"] for line in body["lines"]) == len(mine)
    csv_text = client.get(
        "/v1/reports/users/alice", params={"month": "2026-11", "format": "csv"}, headers=ADMIN
    ).text
    lines = list(csv.DictReader(io.StringIO(csv_text)))
    assert sum(usd(line["cost_usd"]) for line in lines) == expected
    day = client.get("/v1/reports/users/alice", params={"day": "2026-11-01"}, headers=ADMIN).json()
    assert (day["from"], day["to"]) == ("2026-11-01", "2026-11-01")
    on_day = [e for e in events if e.user == "alice" and local_day(e) == date(2026, 11, 1)]
    assert sum(line["requests"] for line in day["lines"]) == len(on_day)
    week = client.get("/v1/reports/users/alice", params={"week": "2026-W48"}, headers=ADMIN).json()
    assert (week["week"], week["from"], week["to"]) == ("2026-W48", "2026-11-23", "2026-11-29")
    r = client.get(
        "/v1/reports/users/alice", params={"month": "2026-11", "day": "2026-11-02"}, headers=ADMIN
    )
    assert r.status_code == 422


def test_the_november_billing_report_is_exact_in_json_and_csv(ny):
    _, client, events = ny
    november = [e for e in events if in_november(e)]
    r = client.get("/v1/reports/billing", params={"month": "2026-11"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["from"], body["to"], body["timezone"]) == (
        "2026-11-01", "2026-11-30", "America/New_York",
    )  # fmt: skip
    assert Decimal(body["total_cost_usd"]) == sum(cost(e) for e in november)
    entries = {(u["user"], u["team"]): u for u in body["users"]}
    expected: dict[tuple, list] = defaultdict(list)
    for e in november:
        expected[(e.user, e.team)].append(e)
    assert set(entries) == set(expected)
    for k, evs in expected.items():
        assert entries[k]["requests"] == len(evs)
        assert usd(entries[k]["cost_usd"]) == sum(cost(e) for e in evs)
        assert entries[k]["unpriced"] == sum(e.model != SEED_MODEL for e in evs)
    costs = [usd(u["cost_usd"]) for u in body["users"]]
    assert costs == sorted(costs, reverse=True)

    r = client.get(
        "/v1/reports/billing", params={"month": "2026-11", "format": "csv"}, headers=ADMIN
    )
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == (
        "from,to,timezone,team,user,model,requests,prompt_tokens,completion_tokens,unpriced,"
        "input_cost_usd,output_cost_usd,cost_usd"
    )
    lines = list(csv.DictReader(io.StringIO(r.text)))
    assert sum(usd(line["cost_usd"]) for line in lines) == sum(cost(e) for e in november)
    assert sum(int(line["requests"]) for line in lines) == len(november)
    assert {line["from"] for line in lines} == {"2026-11-01"}
    for line in lines:
        assert usd(line["input_cost_usd"]) + usd(line["output_cost_usd"]) == usd(line["cost_usd"])
        assert "E" not in line["cost_usd"]

    week = client.get("/v1/reports/billing", params={"week": "2026-W48"}, headers=ADMIN).json()
    assert (week["from"], week["to"]) == ("2026-11-23", "2026-11-29")


def test_a_team_scoped_key_sees_only_its_team_in_the_billing_report(ny):
    db, client, events = ny
    with db.engine.begin() as conn:
        _, secret, _ = create_key(conn, "read", "search", None)
    scoped = {"Authorization": f"Bearer {secret}"}
    body = client.get("/v1/reports/billing", params={"month": "2026-11"}, headers=scoped).json()
    assert {u["team"] for u in body["users"]} == {"search"}
    mine = [e for e in events if in_november(e) and e.team == "search"]
    assert Decimal(body["total_cost_usd"]) == sum(cost(e) for e in mine)
    r = client.get("/v1/reports/billing", params={"team": "ads"}, headers=scoped)
    assert r.status_code == 403
    rows = client.get(
        "/v1/usage", params={"period": "month", "from": "2026-11", "to": "2026-11"},
        headers=scoped,
    ).json()["rows"]  # fmt: skip
    assert {row["team"] for row in rows} == {"search"}


def test_the_cli_billing_and_user_reports_are_the_apis(ny, monkeypatch: pytest.MonkeyPatch):
    db, client, _events = ny
    monkeypatch.setenv("METER_DATABASE_URL", db.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("METER_TIMEZONE", "America/New_York")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    result = runner.invoke(app, ["report", "billing", "--month", "2026-11", "--format", "json"])
    assert result.exit_code == 0, result.output
    api = client.get("/v1/reports/billing", params={"month": "2026-11"}, headers=ADMIN).json()
    assert json.loads(result.output) == api
    result = runner.invoke(app, ["report", "billing", "--month", "2026-11", "--format", "csv"])
    api_csv = client.get(
        "/v1/reports/billing", params={"month": "2026-11", "format": "csv"}, headers=ADMIN
    ).text
    assert result.output.replace("\r\n", "\n") == api_csv.replace("\r\n", "\n")
    result = runner.invoke(app, ["report", "billing", "--from", "2026-11-01", "--to", "2026-11-30"])
    assert result.exit_code == 0, result.output
    assert f"${api['total_cost_usd']}" in result.output
    result = runner.invoke(
        app, ["report", "user", "alice", "--month", "2026-11", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    api_user = client.get(
        "/v1/reports/users/alice", params={"month": "2026-11"}, headers=ADMIN
    ).json()
    assert json.loads(result.output) == api_user
    result = runner.invoke(app, ["report", "billing", "--month", "2026-13"])
    assert result.exit_code != 0
    assert "--month" in result.output


def test_usage_by_tag_rows_sum_to_the_totals_once_the_key_is_added(ny):
    _db, client, events = ny
    params = {"period": "month", "from": "2026-11", "to": "2026-11", "group_by": "tag:feature"}
    r = client.get("/v1/usage", params=params, headers=ADMIN)
    assert r.status_code == 422
    assert "meter tags add feature" in r.text
    assert client.post("/v1/tags", json={"key": "feature"}, headers=ADMIN).status_code == 201
    r = client.get("/v1/usage", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    rows = {row["tags"]["feature"]: row for row in r.json()["rows"]}
    november = [e for e in events if in_november(e)]
    for value in ("chat", "search", None):
        mine = [e for e in november if (e.tags or {}).get("feature") == value]
        assert rows[value]["requests"] == len(mine)
        assert usd(rows[value]["cost_usd"]) == sum(cost(e) for e in mine)
        assert rows[value]["team"] is None and rows[value]["model"] is None
