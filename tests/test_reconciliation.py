"""GET /v1/reconciliation and `meter report reconcile` (SPEC section 9): meter's cost against the
provider's per period and model, from the roll-up, exact; a provider charging 10 % more for one
model shows that drift on that model only."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from meter.api.auth import create_key
from meter.cli import app
from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database
from meter.rollup.engine import run_rollup
from tests.budget_helpers import api
from tests.factories import event
from tests.gateway_helpers import database_at

LARGE = "acme/large"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The database at `db_url`, which the CLI test also opens."""
    yield from database_at(db_url)


def seed(db: Database) -> None:
    client = api(db)
    r = client.post(
        "/v1/prices",
        json={
            "model": LARGE,
            "input_per_million_usd": "2.5",
            "output_per_million_usd": "10",
            "effective_from": "2026-01-01T00:00:00Z",
        },
    )
    assert r.status_code == 201, r.text
    events = [
        # The seed model: the provider agrees with meter (1000 x $0.11/1M + 500 x $0.19/1M).
        *(event(prompt_tokens=1000, completion_tokens=500, provider_cost_usd="0.000205")
          for _ in range(3)),
        event(prompt_tokens=10, completion_tokens=10),  # no provider cost: not compared
        event(prompt_tokens=10, completion_tokens=10, status="cancelled",
              usage_source="estimated", generation_id="gen-pending"),
        # The large model: the provider charges 10 % more than meter's $0.0035.
        *(event(model=LARGE, prompt_tokens=1000, completion_tokens=100,
                provider_cost_usd="0.00385") for _ in range(2)),
    ]  # fmt: skip
    with db.engine.begin() as conn:
        insert_events(conn, events, load_price_book(conn), db.tz)
    run_rollup(db)


def test_rows_per_model_with_exact_drift(db: Database) -> None:
    seed(db)
    r = api(db).get("/v1/reconciliation", params={"from": "2026-W48", "to": "2026-W48"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["as_of"] is not None
    assert body["rows"] == [
        {
            "period": "2026-W48",
            "period_start": "2026-11-23",
            "model": LARGE,
            "events": 2,
            "events_with_provider_cost": 2,
            "cost_usd": "0.007",
            "provider_cost_usd": "0.0077",
            "drift_usd": "-0.0007",
            "estimated": 0,
            "reconciled": 0,
            "lookups_pending": 0,
        },
        {
            "period": "2026-W48",
            "period_start": "2026-11-23",
            "model": "mistralai/mistral-7b-instruct-v0.1",
            "events": 5,
            "events_with_provider_cost": 3,
            "cost_usd": "0.000615",
            "provider_cost_usd": "0.000615",
            "drift_usd": "0",
            "estimated": 1,
            "reconciled": 0,
            "lookups_pending": 1,
        },
    ]
    large = body["rows"][0]
    assert Decimal(large["provider_cost_usd"]) == Decimal(large["cost_usd"]) * Decimal("1.1")
    by_day = api(db).get(
        "/v1/reconciliation", params={"period": "day", "from": "2026-11-24", "to": "2026-11-24"}
    )
    assert [(r["period"], r["drift_usd"]) for r in by_day.json()["rows"]] == [
        ("2026-11-24", "-0.0007"),
        ("2026-11-24", "0"),
    ]
    assert api(db).get("/v1/reconciliation", params={"period": "year"}).status_code == 422


def test_cli_prints_the_apis_json(db: Database, db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seed(db)
    monkeypatch.setenv("METER_DATABASE_URL", db_url)
    result = CliRunner().invoke(
        app, ["report", "reconcile", "--from", "2026-W48", "--to", "2026-W48", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    api_rows = (
        api(db)
        .get("/v1/reconciliation", params={"from": "2026-W48", "to": "2026-W48"})
        .json()["rows"]
    )
    import json

    assert json.loads(result.output)["rows"] == api_rows
    table = CliRunner().invoke(
        app, ["report", "reconcile", "--from", "2026-W48", "--to", "2026-W48"]
    )
    assert table.exit_code == 0 and "$-0.0007" in table.output


def test_a_team_scoped_key_reconciles_its_own_team_only(db: Database) -> None:
    seed(db)  # events without a team
    ads = [
        event(model=LARGE, team="ads", prompt_tokens=1000, completion_tokens=100,
              provider_cost_usd="0.0035"),
        event(team="ads", status="cancelled", usage_source="estimated", generation_id="gen-ads"),
    ]  # fmt: skip
    with db.engine.begin() as conn:
        insert_events(conn, ads, load_price_book(conn), db.tz)
        admin_key = create_key(conn, "admin", None, "admin")[1]
        ads_key = create_key(conn, "read", "ads", "ads")[1]
    run_rollup(db)

    def rows(key: str) -> list[tuple[str, int, int, str, str, str, int, int]]:
        r = api(db).get(
            "/v1/reconciliation",
            params={"from": "2026-W48", "to": "2026-W48"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200, r.text
        return [
            (row["model"], row["events"], row["events_with_provider_cost"], row["cost_usd"],
             row["provider_cost_usd"], row["drift_usd"], row["estimated"],
             row["lookups_pending"])
            for row in r.json()["rows"]
        ]  # fmt: skip

    seed_model = "mistralai/mistral-7b-instruct-v0.1"
    assert rows(ads_key) == [
        (LARGE, 1, 1, "0.0035", "0.0035", "0", 0, 0),
        (seed_model, 1, 0, "0", "0", "0", 1, 1),
    ]
    assert rows(admin_key) == [
        (LARGE, 3, 3, "0.0105", "0.0112", "-0.0007", 0, 0),
        (seed_model, 6, 3, "0.000615", "0.000615", "0", 2, 2),
    ]
