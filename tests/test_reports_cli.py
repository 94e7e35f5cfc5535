"""`meter rollup` and `meter report user|team`: same numbers as the API, JSON identical to it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meter.api.app import create_app
from meter.cli import app
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.pricing import SEED_MODEL
from meter.settings import get_settings
from meter.weeks import load_timezone, now_utc, week_of
from tests.factories import event
from tests.test_rollup_helpers import store

runner = CliRunner()


@pytest.fixture
def cli_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("METER_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: room for whole amounts
    db = Database(make_engine(db_url), load_timezone("UTC"))
    yield db
    db.dispose()


def meter(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_rollup_prints_events_weeks_alerts_and_duration(cli_db: Database):
    store(cli_db, [
        event(user="alice", occurred_at=datetime(2026, 11, 24, tzinfo=UTC)),
        event(user="bob", occurred_at=datetime(2026, 11, 17, tzinfo=UTC)),
    ])  # fmt: skip
    code, out = meter("rollup")
    assert code == 0, out
    assert out.startswith("rolled up 2 new events; weeks: 2026-W47, 2026-W48; alerts fired: 0; ")
    assert out.rstrip().endswith(" ms")
    code, out = meter("rollup")
    assert out.startswith("rolled up 0 new events; weeks: none; alerts fired: 0; ")


def test_report_user_json_is_the_apis_json(cli_db: Database):
    store(cli_db, [
        event(user="org/alice", team="search", prompt_tokens=1_000_000, completion_tokens=0,
              occurred_at=datetime(2026, 11, 24, tzinfo=UTC)),
        event(user="org/alice", model="acme/unpriced",
              occurred_at=datetime(2026, 11, 24, tzinfo=UTC)),
    ])  # fmt: skip
    assert meter("rollup")[0] == 0
    code, out = meter("report", "user", "org/alice", "--week", "2026-W48", "--format", "json")
    assert code == 0, out
    api = TestClient(create_app(get_settings(), cli_db, scheduler=False)).get(
        "/v1/reports/users/org/alice", params={"week": "2026-W48"}
    )
    assert json.loads(out) == api.json()
    assert json.loads(out)["total_cost_usd"] == "0.11"


def test_report_user_csv_and_table(cli_db: Database):
    store(cli_db, [event(user="bob", prompt_tokens=2_000, completion_tokens=1_000,
                         occurred_at=datetime(2026, 11, 24, tzinfo=UTC))])  # fmt: skip
    meter("rollup")
    code, out = meter("report", "user", "bob", "--week", "2026-W48", "--format", "csv")
    assert code == 0
    assert out.splitlines() == [
        "model,requests,prompt_tokens,completion_tokens,unpriced,"
        "input_cost_usd,output_cost_usd,cost_usd",
        f"{SEED_MODEL},1,2000,1000,0,0.00022,0.00019,0.00041",
    ]
    code, out = meter("report", "user", "bob", "--week", "2026-W48")
    assert code == 0
    assert "bob: 2026-W48 (week of 2026-11-23)" in out
    assert "$0.00041" in out and "2,000" in out


def test_report_team_json_and_table(cli_db: Database):
    this = week_of(now_utc(), cli_db.tz)
    at = this.bounds(cli_db.tz)[0] + timedelta(minutes=1)
    store(cli_db, [
        event(user="alice", team="search", prompt_tokens=1_000_000, completion_tokens=0,
              occurred_at=at),
    ])  # fmt: skip
    meter("rollup")
    code, out = meter("report", "team", "search", "--weeks", "2", "--format", "json")
    assert code == 0, out
    body = json.loads(out)
    assert [(w["week"], w["requests"], w["cost_usd"]) for w in body["weeks"]] == [
        (this.previous().label, 0, "0"),
        (this.label, 1, "0.11"),
    ]
    assert body["top_users"] == [{"user": "alice", "cost_usd": "0.11"}]
    code, out = meter("report", "team", "search", "--weeks", "2")
    assert code == 0
    assert "team search: last 2 weeks" in out and "$0.11" in out and "alice" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("report", "user", "a", "--week", "2025-W53"),
         "--week: '2025-W53': ISO year 2025 has no week 53"),
        (("report", "user", "a", "--format", "xml"),
         "--format: must be one of table, json, csv, not 'xml'"),
        (("report", "team", "t", "--weeks", "0"), "--weeks: must be between 1 and 260, got 0"),
    ],
)  # fmt: skip
def test_bad_options_name_the_option(cli_db: Database, args: tuple[str, ...], message: str):
    code, out = meter(*args)
    assert code == 2
    assert message in " ".join(out.split())
