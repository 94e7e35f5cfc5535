"""The read side of the API, exact values: usage, user reports (JSON and CSV), team summaries,
`POST /v1/rollup`, team scoping, the 422s, and week boundaries of SPEC section 3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.db import models
from meter.db.session import Database
from meter.pricing import SEED_MODEL
from meter.settings import get_settings
from meter.weeks import Week, now_utc, week_of
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.test_rollup_helpers import store

ADMIN = {"Authorization": "Bearer test-admin-key"}
W47 = datetime(2026, 11, 17, 9, tzinfo=UTC)
W48 = datetime(2026, 11, 24, 9, tzinfo=UTC)
RANGE = {"from": "2026-W47", "to": "2026-W48"}


def client_for(db: Database) -> TestClient:
    settings = get_settings(admin_key="test-admin-key", timezone=db.tz.key)
    return TestClient(create_app(settings, db, scheduler=False))


def usage_events(at: datetime, earlier: datetime) -> list:
    return [
        event(
            occurred_at=at,
            user="alice",
            team="search",
            prompt_tokens=1_000_000,
            completion_tokens=1_000_000,
        ),
        event(
            occurred_at=at,
            user="alice",
            team="ads",
            prompt_tokens=0,
            completion_tokens=0,
            status="error",
            usage_source="none",
        ),
        event(occurred_at=at, user="org/carol", team="ads", prompt_tokens=1, completion_tokens=1),
        event(
            occurred_at=at,
            user="bob",
            team="search",
            model="acme/unpriced",
            prompt_tokens=100,
            completion_tokens=50,
        ),
        event(
            occurred_at=at,
            user="bob",
            team="search",
            prompt_tokens=2_000,
            completion_tokens=1_000,
            status="incomplete",
            usage_source="estimated",
        ),
        event(occurred_at=at, prompt_tokens=10, completion_tokens=10),  # no user, no team
        event(
            occurred_at=earlier,
            user="alice",
            team="search",
            prompt_tokens=1_000,
            completion_tokens=0,
        ),
    ]


@pytest.fixture
def client(db: Database) -> TestClient:
    store(db, usage_events(W48, W47))
    c = client_for(db)
    assert c.post("/v1/rollup", headers=ADMIN).status_code == 200
    return c


def row(
    week: str,
    week_start: str,
    team: str | None,
    user: str | None,
    model: str | None,
    requests: int,
    prompt: int,
    completion: int,
    errors: int,
    estimated: int,
    unpriced: int,
    cost_in: str | None,
    cost_out: str | None,
    cost: str | None,
) -> dict:
    return {
        "week": week, "week_start": week_start, "team": team, "user": user, "model": model,
        "requests": requests, "prompt_tokens": prompt, "completion_tokens": completion,
        "errors": errors, "estimated": estimated, "unpriced": unpriced,
        "input_cost_usd": cost_in, "output_cost_usd": cost_out, "cost_usd": cost,
    }  # fmt: skip


def test_post_rollup_reports_what_it_did(db: Database):
    store(db, usage_events(W48, W47))
    c = client_for(db)
    first = c.post("/v1/rollup", headers=ADMIN)
    assert first.status_code == 200
    body = first.json()
    assert isinstance(body.pop("duration_ms"), int)
    assert body == {"events_rolled_up": 7, "weeks": ["2026-W47", "2026-W48"], "alerts_fired": 0}
    again = c.post("/v1/rollup", headers=ADMIN).json()
    assert (again["events_rolled_up"], again["weeks"]) == (0, [])


def test_weekly_usage_by_team_user_and_model(client: TestClient):
    body = client.get("/v1/usage/weekly", params=RANGE, headers=ADMIN).json()
    assert body["as_of"].endswith("Z")
    assert body["rows"] == [
        row("2026-W47", "2026-11-16", "search", "alice", SEED_MODEL,
            1, 1_000, 0, 0, 0, 0, "0.00011", "0", "0.00011"),
        row("2026-W48", "2026-11-23", None, None, SEED_MODEL,
            1, 10, 10, 0, 0, 0, "0.0000011", "0.0000019", "0.000003"),
        row("2026-W48", "2026-11-23", "ads", "alice", SEED_MODEL,
            1, 0, 0, 1, 0, 0, "0", "0", "0"),
        row("2026-W48", "2026-11-23", "ads", "org/carol", SEED_MODEL,
            1, 1, 1, 0, 0, 0, "0.00000011", "0.00000019", "0.0000003"),
        row("2026-W48", "2026-11-23", "search", "alice", SEED_MODEL,
            1, 1_000_000, 1_000_000, 0, 0, 0, "0.11", "0.19", "0.3"),
        row("2026-W48", "2026-11-23", "search", "bob", "acme/unpriced",
            1, 100, 50, 0, 0, 1, None, None, None),
        row("2026-W48", "2026-11-23", "search", "bob", SEED_MODEL,
            1, 2_000, 1_000, 0, 1, 0, "0.00022", "0.00019", "0.00041"),
    ]  # fmt: skip


def test_weekly_usage_grouped_by_team_sums_priced_costs_only(client: TestClient):
    body = client.get(
        "/v1/usage/weekly", params={**RANGE, "group_by": "team"}, headers=ADMIN
    ).json()
    assert body["rows"] == [
        row("2026-W47", "2026-11-16", "search", None, None,
            1, 1_000, 0, 0, 0, 0, "0.00011", "0", "0.00011"),
        row("2026-W48", "2026-11-23", None, None, None,
            1, 10, 10, 0, 0, 0, "0.0000011", "0.0000019", "0.000003"),
        row("2026-W48", "2026-11-23", "ads", None, None,
            2, 1, 1, 1, 0, 0, "0.00000011", "0.00000019", "0.0000003"),
        row("2026-W48", "2026-11-23", "search", None, None,
            3, 1_002_100, 1_001_050, 0, 1, 1, "0.11022", "0.19019", "0.30041"),
    ]  # fmt: skip


def test_weekly_usage_filters_and_week_only_totals(client: TestClient):
    by_model = client.get(
        "/v1/usage/weekly",
        params={**RANGE, "group_by": "model", "team": "search", "user": "bob"},
        headers=ADMIN,
    ).json()["rows"]
    assert [(r["week"], r["model"], r["requests"], r["cost_usd"]) for r in by_model] == [
        ("2026-W48", "acme/unpriced", 1, None),
        ("2026-W48", SEED_MODEL, 1, "0.00041"),
    ]
    totals = client.get("/v1/usage/weekly", params={**RANGE, "group_by": ""}, headers=ADMIN).json()[
        "rows"
    ]
    assert [(r["week"], r["team"], r["requests"], r["cost_usd"]) for r in totals] == [
        ("2026-W47", None, 1, "0.00011"),
        ("2026-W48", None, 6, "0.3004133"),
    ]
    only_unpriced = client.get(
        "/v1/usage/weekly",
        params={**RANGE, "model": "acme/unpriced", "group_by": "model"},
        headers=ADMIN,
    ).json()["rows"]
    assert [(r["unpriced"], r["cost_usd"]) for r in only_unpriced] == [(1, None)]


def test_weekly_usage_defaults_to_the_last_12_weeks(db: Database):
    this = week_of(now_utc(), db.tz)
    start = this.bounds(db.tz)[0]
    store(db, [
        event(occurred_at=start + timedelta(minutes=1), user="now"),
        event(occurred_at=start - timedelta(weeks=11), user="eleven-weeks-ago"),
        event(occurred_at=start - timedelta(weeks=12), user="twelve-weeks-ago"),
    ])  # fmt: skip
    c = client_for(db)
    c.post("/v1/rollup", headers=ADMIN)
    rows = c.get("/v1/usage/weekly", headers=ADMIN).json()["rows"]
    assert [(r["week"], r["user"]) for r in rows] == [
        (Week(this.start - timedelta(weeks=11)).label, "eleven-weeks-ago"),
        (this.label, "now"),
    ]


def test_as_of_is_null_before_the_first_roll_up(db: Database):
    c = client_for(db)
    assert c.get("/v1/usage/weekly", params=RANGE, headers=ADMIN).json() == {
        "as_of": None,
        "rows": [],
    }


def test_user_report_per_model_across_teams(client: TestClient):
    body = client.get("/v1/reports/users/alice", params={"week": "2026-W48"}, headers=ADMIN).json()
    assert body.pop("as_of").endswith("Z")
    assert body == {
        "user": "alice",
        "week": "2026-W48",
        "week_start": "2026-11-23",
        "from": "2026-11-23",  # SPEC section 8: every user report says which dates it covers
        "to": "2026-11-29",
        "lines": [
            {
                "model": SEED_MODEL,
                "requests": 2,
                "prompt_tokens": 1_000_000,
                "completion_tokens": 1_000_000,
                "unpriced": 0,
                "input_cost_usd": "0.11",
                "output_cost_usd": "0.19",
                "cost_usd": "0.3",
            }
        ],
        "total_cost_usd": "0.3",
    }


def test_user_report_of_a_user_id_with_a_slash(client: TestClient):
    body = client.get(
        "/v1/reports/users/org/carol", params={"week": "2026-W48"}, headers=ADMIN
    ).json()
    assert body["user"] == "org/carol"
    assert [(line["model"], line["cost_usd"]) for line in body["lines"]] == [
        (SEED_MODEL, "0.0000003")
    ]
    assert body["total_cost_usd"] == "0.0000003"


def test_user_report_as_csv(client: TestClient):
    response = client.get(
        "/v1/reports/users/bob", params={"week": "2026-W48", "format": "csv"}, headers=ADMIN
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.text == (
        "model,requests,prompt_tokens,completion_tokens,unpriced,"
        "input_cost_usd,output_cost_usd,cost_usd\r\n"
        "acme/unpriced,1,100,50,1,,,\r\n"
        f"{SEED_MODEL},1,2000,1000,0,0.00022,0.00019,0.00041\r\n"
    )


def test_user_report_of_an_empty_week(client: TestClient):
    body = client.get("/v1/reports/users/alice", params={"week": "2026-W01"}, headers=ADMIN).json()
    assert (body["week_start"], body["lines"], body["total_cost_usd"]) == ("2025-12-29", [], "0")


def add_budget(db: Database, scope: str, subject: str, limit_units: int) -> int:
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        return int(
            conn.execute(
                sa.insert(models.Budget)
                .values(
                    scope=scope,
                    subject=subject,
                    weekly_limit_units=limit_units,
                    thresholds=["0.5", "0.8", "1"],
                    enforce=False,
                    created_at=now,
                    updated_at=now,
                )
                .returning(models.Budget.id)
            ).scalar_one()
        )


def test_team_summary_weeks_top_users_and_budgets(db: Database):
    this = week_of(now_utc(), db.tz)
    start = this.bounds(db.tz)[0]
    store(db, usage_events(start + timedelta(minutes=5), start - timedelta(weeks=1)))
    store(db, [
        event(occurred_at=start + timedelta(minutes=5), team="search", user=f"user{i:02d}",
              prompt_tokens=i, completion_tokens=0)
        for i in range(1, 12)
    ])  # fmt: skip
    dollar = add_budget(db, "team", "search", 10**12)
    third = add_budget(db, "team", "search", 3 * 10**12)
    add_budget(db, "user", "search", 10**12)  # a user budget named like the team: not shown
    add_budget(db, "team", "ads", 10**12)
    c = client_for(db)
    c.post("/v1/rollup", headers=ADMIN)

    body = c.get("/v1/teams/search/summary", params={"weeks": 3}, headers=ADMIN).json()
    assert body.pop("as_of").endswith("Z")
    weeks = [this.previous().previous(), this.previous(), this]
    assert body == {
        "team": "search",
        "weeks": [
            {"week": weeks[0].label, "week_start": weeks[0].start.isoformat(),
             "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": "0"},
            {"week": weeks[1].label, "week_start": weeks[1].start.isoformat(),
             "requests": 1, "prompt_tokens": 1_000, "completion_tokens": 0,
             "cost_usd": "0.00011"},
            {"week": weeks[2].label, "week_start": weeks[2].start.isoformat(),
             "requests": 14, "prompt_tokens": 1_002_166, "completion_tokens": 1_001_050,
             "cost_usd": "0.30041726"},
        ],
        "top_users": [
            {"user": "alice", "cost_usd": "0.3"},
            {"user": "bob", "cost_usd": "0.00041"},
            *({"user": f"user{i:02d}", "cost_usd": f"0.00000{i * 11:03d}".rstrip("0")}
              for i in range(11, 3, -1)),
        ],
        "budgets": [
            {"id": dollar, "weekly_limit_usd": "1", "limit_usd": "1", "period": this.label,
             "period_start": this.start.isoformat(), "spend_usd": "0.30041726",
             "ratio": "0.300417"},
            {"id": third, "weekly_limit_usd": "3", "limit_usd": "3", "period": this.label,
             "period_start": this.start.isoformat(), "spend_usd": "0.30041726",
             "ratio": "0.100139"},
        ],
    }  # fmt: skip
    default = c.get("/v1/teams/search/summary", headers=ADMIN).json()
    assert len(default["weeks"]) == 12
    assert default["weeks"][-1]["week"] == this.label


# --- scoping --------------------------------------------------------------------------------


def test_a_team_scoped_key_sees_only_its_team(db: Database, client: TestClient):
    with db.engine.begin() as conn:
        _, key, _ = create_key(conn, "read", "ads", "ads dashboard")
    ads = {"Authorization": f"Bearer {key}"}
    rows = client.get("/v1/usage/weekly", params=RANGE, headers=ads).json()["rows"]
    assert {(r["team"], r["user"]) for r in rows} == {("ads", "alice"), ("ads", "org/carol")}
    forbidden = client.get("/v1/usage/weekly", params={**RANGE, "team": "search"}, headers=ads)
    assert forbidden.status_code == 403
    assert client.get("/v1/teams/search/summary", headers=ads).status_code == 403
    assert client.get("/v1/teams/ads/summary", headers=ads).status_code == 200
    alice = client.get("/v1/reports/users/alice", params={"week": "2026-W48"}, headers=ads)
    assert [(line["requests"], line["cost_usd"]) for line in alice.json()["lines"]] == [(1, "0")]
    bob = client.get("/v1/reports/users/bob", params={"week": "2026-W48"}, headers=ads).json()
    assert (bob["lines"], bob["total_cost_usd"]) == ([], "0")
    assert client.post("/v1/rollup", headers=ads).status_code == 403
    assert client.get("/v1/usage/weekly").status_code == 401


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/usage/weekly", {"from": "2025-W53"}, "from"),
        ("/v1/usage/weekly", {"to": "2026-W5"}, "to"),
        ("/v1/usage/weekly", {"from": "2026-W48", "to": "2026-W47"}, "from"),
        ("/v1/usage/weekly", {"group_by": "team,colour"}, "group_by"),
        ("/v1/usage/weekly", {"tema": "search"}, "tema"),
        ("/v1/reports/users/alice", {"week": "last week"}, "week"),
        ("/v1/reports/users/alice", {"format": "xml"}, "format"),
        ("/v1/teams/search/summary", {"weeks": "0"}, "weeks"),
        ("/v1/teams/search/summary", {"weeks": "261"}, "weeks"),
        ("/v1/teams/search/summary", {"weeks": "many"}, "weeks"),
    ],
)
def test_bad_parameters_get_422_naming_the_field(db: Database, path: str, params: dict, field: str):
    response = client_for(db).get(path, params=params, headers=ADMIN)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["query", field]]
    assert response.json()["message"].startswith(f"{field}: ")


def test_2025_w53_is_named_in_the_message(db: Database):
    response = client_for(db).get("/v1/usage/weekly", params={"from": "2025-W53"}, headers=ADMIN)
    assert response.json()["message"] == "from: '2025-W53': ISO year 2025 has no week 53"


# --- weeks at their boundaries (SPEC section 3) -------------------------------------------------


def test_week_boundaries_in_new_york_through_the_api(databases: DatabaseFactory):
    db = databases.database(timezone="America/New_York")
    ms = timedelta(milliseconds=1)
    store(db, [
        # Spring forward: the week of 2026-03-02 lasts 167 hours.
        event(user="a", occurred_at=datetime(2026, 3, 2, 5, tzinfo=UTC) - ms),  # Sun 23:59:59.999
        event(user="b", occurred_at=datetime(2026, 3, 2, 5, tzinfo=UTC)),  # Mon 00:00 EST
        event(user="c", occurred_at=datetime(2026, 3, 9, 4, tzinfo=UTC) - ms),  # Sun 23:59:59.999
        event(user="d", occurred_at=datetime(2026, 3, 9, 4, tzinfo=UTC)),  # Mon 00:00 EDT
        # Fall back: the week of 2026-10-26 lasts 169 hours.
        event(user="e", occurred_at=datetime(2026, 11, 2, 5, tzinfo=UTC) - ms),
        event(user="f", occurred_at=datetime(2026, 11, 2, 5, tzinfo=UTC)),
        # The ISO year 2026 has 53 weeks.
        event(user="g", occurred_at=datetime(2027, 1, 4, 5, tzinfo=UTC) - ms),
        event(user="h", occurred_at=datetime(2027, 1, 4, 5, tzinfo=UTC)),
    ])  # fmt: skip
    c = client_for(db)
    c.post("/v1/rollup", headers=ADMIN)
    rows = c.get(
        "/v1/usage/weekly",
        params={"from": "2026-W09", "to": "2027-W01", "group_by": "user"},
        headers=ADMIN,
    ).json()["rows"]
    assert [(r["week"], r["week_start"], r["user"]) for r in rows] == [
        ("2026-W09", "2026-02-23", "a"),
        ("2026-W10", "2026-03-02", "b"),
        ("2026-W10", "2026-03-02", "c"),
        ("2026-W11", "2026-03-09", "d"),
        ("2026-W44", "2026-10-26", "e"),
        ("2026-W45", "2026-11-02", "f"),
        ("2026-W53", "2026-12-28", "g"),
        ("2027-W01", "2027-01-04", "h"),
    ]
    w53 = c.get("/v1/reports/users/g", params={"week": "2026-W53"}, headers=ADMIN).json()
    assert (w53["week_start"], len(w53["lines"])) == ("2026-12-28", 1)
