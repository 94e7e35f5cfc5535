"""A team-scoped key sees nothing of another team, through any endpoint.

Two teams share a user; the other team has its own user, budget and alerts. Every read endpoint
is asked, as a key scoped to one team, and no answer may mention the other team, its user, or
include its money; naming the other team is a 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.db.session import Database
from meter.ids import uuid7
from meter.pricing import SEED_MODEL
from meter.settings import Settings
from meter.weeks import week_of

MINE, OTHER = "team-mine", "team-other-xyz"
SHARED_USER, OTHER_USER = "alice", "carol-other-only"


def key(db: Database, role: str, team: str | None = None) -> dict[str, str]:
    with db.engine.begin() as conn:
        _, secret, _ = create_key(conn, role, team, None)
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def world(db: Database) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    now = datetime.now(UTC) - timedelta(seconds=5)
    when = now.isoformat()

    def ev(team: str, user: str, prompt: int) -> dict[str, Any]:
        return {
            "id": str(uuid7()),
            "occurred_at": when,
            "model": SEED_MODEL,
            "prompt_tokens": prompt,
            "completion_tokens": 0,
            "user": user,
            "team": team,
            "tags": {"team": team},
        }

    with TestClient(create_app(Settings(), db, scheduler=False)) as c:
        admin = key(db, "admin")
        events = [
            ev(MINE, SHARED_USER, 1000),  # $0.00011
            ev(OTHER, SHARED_USER, 7000),  # $0.00077
            ev(OTHER, OTHER_USER, 9000),  # $0.00099
        ]
        r = c.post("/v1/events", headers=admin, json={"events": events})
        assert r.json() == {"inserted": 3, "duplicates": 0, "expired": 0}
        budget_ids = {}
        for scope, subject in (("team", MINE), ("team", OTHER), ("user", OTHER_USER)):
            r = c.post(
                "/v1/budgets",
                headers=admin,
                json={"scope": scope, "subject": subject, "weekly_limit_usd": "0.0001"},
            )
            assert r.status_code == 201, r.text
            budget_ids[subject] = r.json()["id"]
        r = c.post("/v1/rollup", headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["alerts_fired"] >= 3
        facts = {"budgets": budget_ids, "week": week_of(now, UTC).label, "admin": admin}
        yield c, facts


def leaks(text: str) -> list[str]:
    return [s for s in (OTHER, OTHER_USER, "0.00077", "0.00099", "0.00187") if s in text]


def test_a_scoped_read_key_sees_nothing_of_another_team(
    db: Database, world: tuple[TestClient, dict[str, Any]]
) -> None:
    c, facts = world
    mine = key(db, "read", team=MINE)
    week = facts["week"]
    other_budget = facts["budgets"][OTHER]
    other_user_budget = facts["budgets"][OTHER_USER]

    visible = [
        "/v1/events",
        f"/v1/events?user={SHARED_USER}",
        "/v1/usage/weekly",
        "/v1/usage/weekly?group_by=user",
        "/v1/usage/weekly?group_by=model",
        f"/v1/usage/weekly?user={SHARED_USER}",
        f"/v1/reports/users/{SHARED_USER}?week={week}",
        f"/v1/reports/users/{SHARED_USER}?week={week}&format=csv",
        f"/v1/teams/{MINE}/summary",
        "/v1/budgets",
        "/v1/alerts",
        f"/v1/alerts?week={week}",
        "/v1/prices",
    ]
    for path in visible:
        r = c.get(path, headers=mine)
        assert r.status_code == 200, (path, r.text)
        assert leaks(r.text) == [], (path, r.text)

    forbidden = [
        f"/v1/events?team={OTHER}",
        f"/v1/usage/weekly?team={OTHER}",
        f"/v1/teams/{OTHER}/summary",
        f"/v1/budgets/{other_budget}",
        f"/v1/budgets/{other_user_budget}",
        f"/v1/alerts?budget_id={other_budget}",
    ]
    for path in forbidden:
        r = c.get(path, headers=mine)
        assert r.status_code in (403, 404), (path, r.status_code, r.text)
        assert leaks(r.text) == [], (path, r.text)

    # The other team's user has no bill this key can see (the name is only echoed back).
    r = c.get(f"/v1/reports/users/{OTHER_USER}?week={week}", headers=mine)
    assert (r.status_code, r.json()["lines"], r.json()["total_cost_usd"]) == (200, [], "0")

    # What it does see is its own team's, exactly.
    events = c.get("/v1/events", headers=mine).json()["events"]
    assert [(e["team"], e["cost_usd"]) for e in events] == [(MINE, "0.00011")]
    report = c.get(f"/v1/reports/users/{SHARED_USER}?week={week}", headers=mine).json()
    assert report["total_cost_usd"] == "0.00011"
    summary = c.get(f"/v1/teams/{MINE}/summary", headers=mine).json()
    assert [u["user"] for u in summary["top_users"]] == [SHARED_USER]
    budgets = c.get("/v1/budgets", headers=mine).json()["budgets"]
    assert [b["id"] for b in budgets] == [facts["budgets"][MINE]]
    alerts = c.get("/v1/alerts", headers=mine).json()["alerts"]
    assert alerts and {a["budget_id"] for a in alerts} == {facts["budgets"][MINE]}

    # The admin sees both teams: the test above is not passing for want of data.
    everything = c.get("/v1/events", headers=facts["admin"]).text
    assert OTHER in everything and OTHER_USER in everything


def test_a_scoped_ingest_key_writes_only_its_team(
    db: Database, world: tuple[TestClient, dict[str, Any]]
) -> None:
    c, facts = world
    ingest = key(db, "ingest", team=MINE)
    event = {
        "id": str(uuid.uuid4()),
        "occurred_at": "2026-01-05T00:00:00Z",
        "model": SEED_MODEL,
        "prompt_tokens": 1,
        "completion_tokens": 1,
    }
    r = c.post("/v1/events", headers=ingest, json={"events": [{**event, "team": OTHER}]})
    assert r.status_code == 403
    assert c.post("/v1/events", headers=ingest, json={"events": [event]}).status_code == 200
    stored = c.get("/v1/events", headers=facts["admin"], params={"team": MINE}).json()["events"]
    assert event["id"] in {e["id"] for e in stored}  # no team given: it is the key's team
    # An ingest key reads nothing at all.
    assert c.get("/v1/events", headers=ingest).status_code == 403
