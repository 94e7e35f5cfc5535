"""`POST /v1/events` and `GET /v1/events` on SQLite and PostgreSQL, through the real app."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.db import models
from meter.db.session import Database
from meter.ids import uuid7
from meter.metrics import EVENTS_INGESTED
from meter.pricing import SEED_MODEL
from meter.settings import Settings

WHEN = "2026-11-24T12:00:00Z"


def new_key(db: Database, role: str, team: str | None = None) -> dict[str, str]:
    with db.engine.begin() as conn:
        _, key, _ = create_key(conn, role, team, None)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), db, scheduler=False)) as c:
        c.headers.update(new_key(db, "admin"))
        yield c


def ev(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": str(uuid7()),
        "occurred_at": WHEN,
        "model": SEED_MODEL,
        "prompt_tokens": 1,
        "completion_tokens": 0,
    }
    doc.update(fields)
    return doc


def stored_count(db: Database) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(models.Event)).scalar_one()


def error_paths(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    return [".".join(str(p) for p in e["loc"]) for e in response.json()["detail"]]


def test_ingest_counts_inserted_and_duplicates_and_prices_exactly(
    client: TestClient, db: Database
) -> None:
    first, second = ev(), ev(prompt_tokens=1000, completion_tokens=1000)
    before = EVENTS_INGESTED._value.get()
    r = client.post("/v1/events", json={"events": [first, second, first]})
    assert r.status_code == 200, r.text
    assert r.json() == {"inserted": 2, "duplicates": 1, "expired": 0}
    assert EVENTS_INGESTED._value.get() - before == 2

    again = client.post("/v1/events", json={"events": [second, ev()]})
    assert again.json() == {"inserted": 1, "duplicates": 1, "expired": 0}
    assert stored_count(db) == 3

    events = {e["id"]: e for e in client.get("/v1/events").json()["events"]}
    assert events[first["id"]]["cost_usd"] == "0.00000011"
    assert events[first["id"]]["input_cost_usd"] == "0.00000011"
    assert events[first["id"]]["output_cost_usd"] == "0"
    assert events[second["id"]]["cost_usd"] == "0.0003"  # 1000 x 0.11/1M + 1000 x 0.19/1M


def test_one_bad_event_rejects_the_whole_batch_and_names_it(
    client: TestClient, db: Database
) -> None:
    batch = [ev(), ev(), ev(), ev(occurred_at="2026-11-24T12:00:00")]
    r = client.post("/v1/events", json={"events": batch})
    assert error_paths(r) == ["body.events.3.occurred_at"]
    assert r.json()["message"].startswith("events[3].occurred_at: ")
    assert stored_count(db) == 0


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"cost_usd": "0.1"}, "body.events.0.cost_usd"),
        ({"id": "not-a-uuid"}, "body.events.0.id"),
        ({"occurred_at": "2026-11-24 12:00:00"}, "body.events.0.occurred_at"),
        ({"occurred_at": 1764000000}, "body.events.0.occurred_at"),
        ({"occurred_at": "1969-12-31T23:59:59Z"}, "body.events.0.occurred_at"),
        ({"model": ""}, "body.events.0.model"),
        ({"model": "m" * 201}, "body.events.0.model"),
        ({"prompt_tokens": -1}, "body.events.0.prompt_tokens"),
        ({"prompt_tokens": True}, "body.events.0.prompt_tokens"),
        ({"prompt_tokens": 1.0}, "body.events.0.prompt_tokens"),
        ({"completion_tokens": "3"}, "body.events.0.completion_tokens"),
        ({"completion_tokens": 10**9 + 1}, "body.events.0.completion_tokens"),
        ({"user": ""}, "body.events.0.user"),
        ({"team": "t" * 201}, "body.events.0.team"),
        ({"team": "a\x00b"}, "body.events.0.team"),
        ({"tags": {"k": 1}}, "body.events.0.tags.k"),
        ({"tags": {f"k{i}": "v" for i in range(51)}}, "body.events.0.tags"),
        ({"status": "done"}, "body.events.0.status"),
        ({"usage_source": "guess"}, "body.events.0.usage_source"),
        ({"latency_ms": 2**31}, "body.events.0.latency_ms"),
        ({"provider_cost_usd": 0.0001}, "body.events.0.provider_cost_usd"),
        ({"provider_cost_usd": "abc"}, "body.events.0.provider_cost_usd"),
        ({"provider_cost_usd": "-1"}, "body.events.0.provider_cost_usd"),
        ({"provider_cost_usd": "1e999999999"}, "body.events.0.provider_cost_usd"),
    ],
)
def test_each_bad_field_is_named(
    client: TestClient, db: Database, fields: dict[str, Any], path: str
) -> None:
    r = client.post("/v1/events", json={"events": [ev(**fields)]})
    assert error_paths(r) == [path]
    assert stored_count(db) == 0


def test_missing_fields_and_bad_batches_are_named(client: TestClient) -> None:
    doc = ev()
    del doc["model"]
    assert error_paths(client.post("/v1/events", json={"events": [doc]})) == ["body.events.0.model"]
    assert error_paths(client.post("/v1/events", json={"events": []})) == ["body.events"]
    assert error_paths(client.post("/v1/events", json={"evnts": [ev()]})) == [
        "body.events",
        "body.evnts",
    ]
    assert error_paths(client.post("/v1/events", content=b"{not json")) == ["body"]
    assert error_paths(client.post("/v1/events", content=b"")) == ["body"]
    too_many = {"events": [ev() for _ in range(10_001)]}
    assert error_paths(client.post("/v1/events", json=too_many)) == ["body.events"]


def test_future_events_are_refused_but_five_minutes_of_skew_is_not(
    client: TestClient, db: Database
) -> None:
    now = datetime.now(UTC)
    late = (now + timedelta(minutes=6)).isoformat()
    ok = (now + timedelta(minutes=4)).isoformat()
    assert error_paths(client.post("/v1/events", json={"events": [ev(occurred_at=late)]})) == [
        "body.events.0.occurred_at"
    ]
    r = client.post("/v1/events", json={"events": [ev(occurred_at=ok)]})
    assert r.json() == {"inserted": 1, "duplicates": 0, "expired": 0}


def test_offsets_are_stored_as_utc(client: TestClient) -> None:
    e = ev(occurred_at="2026-11-24T07:00:00.250-05:00")
    client.post("/v1/events", json={"events": [e]})
    [out] = client.get("/v1/events").json()["events"]
    assert out["occurred_at"] == "2026-11-24T12:00:00.250000Z"


def test_metacharacters_and_unicode_round_trip_verbatim(client: TestClient) -> None:
    user = "robert'); DROP TABLE events;--"
    team = 'équipe/🚀 "quoted" %_\\'
    tags = {"clé": "valeur ✓", "sql": "' OR 1=1 --", "empty": ""}
    e = ev(user=user, team=team, tags=tags, generation_id="gen-∑")
    assert client.post("/v1/events", json={"events": [e]}).status_code == 200
    [out] = client.get("/v1/events", params={"team": team, "user": user}).json()["events"]
    assert (out["user"], out["team"], out["tags"], out["generation_id"]) == (
        user,
        team,
        tags,
        "gen-∑",
    )
    assert client.get("/v1/events", params={"team": "%"}).json()["events"] == []


def test_every_field_is_returned(client: TestClient) -> None:
    e = ev(
        user="alice",
        team="search",
        tags={"feature": "autocomplete"},
        status="incomplete",
        usage_source="estimated",
        prompt_tokens=10,
        completion_tokens=20,
        cached_tokens=3,
        reasoning_tokens=4,
        latency_ms=830,
        ttft_ms=120,
        generation_id="gen-1",
        provider_cost_usd="0.0000049",
    )
    client.post("/v1/events", json={"events": [e]})
    [out] = client.get("/v1/events").json()["events"]
    assert out == {
        **e,
        "occurred_at": WHEN,
        "input_cost_usd": "0.0000011",
        "output_cost_usd": "0.0000038",
        "cost_usd": "0.0000049",
    }


def test_unpriced_events_show_null_cost_never_zero(client: TestClient) -> None:
    client.post("/v1/events", json={"events": [ev(model="acme/unpriced", prompt_tokens=5)]})
    [out] = client.get("/v1/events").json()["events"]
    assert (out["cost_usd"], out["input_cost_usd"], out["output_cost_usd"]) == (None, None, None)
    assert (out["user"], out["team"], out["tags"]) == (None, None, None)


def test_pagination_returns_every_event_once_newest_first(client: TestClient) -> None:
    base = datetime(2026, 11, 24, tzinfo=UTC)
    # 25 events over 10 distinct instants: ties on occurred_at are broken by id.
    sent = [ev(occurred_at=(base + timedelta(seconds=i % 10)).isoformat()) for i in range(25)]
    client.post("/v1/events", json={"events": sent})
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/events", params=params).json()
        seen.extend(page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 25
    assert len({e["id"] for e in seen}) == 25
    keys = [(e["occurred_at"], uuid.UUID(e["id"])) for e in seen]
    assert keys == sorted(keys, reverse=True)


def test_filters(client: TestClient) -> None:
    client.post(
        "/v1/events",
        json={
            "events": [
                ev(user="alice", team="search", occurred_at="2026-11-20T00:00:00Z"),
                ev(user="bob", team="search", status="error", usage_source="none"),
                ev(user="alice", team="ads", model="acme/other"),
            ]
        },
    )

    def users(**params: Any) -> list[str | None]:
        r = client.get("/v1/events", params=params)
        assert r.status_code == 200, r.text
        return sorted(e["user"] for e in r.json()["events"])

    assert users(team="search") == ["alice", "bob"]
    assert users(user="alice") == ["alice", "alice"]
    assert users(model="acme/other") == ["alice"]
    assert users(status="error") == ["bob"]
    assert users(since="2026-11-21T00:00:00+01:00") == ["alice", "bob"]
    assert users(team="search", user="alice") == ["alice"]


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"since": "2026-11-21T00:00:00"}, "query.since"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"status": "done"}, "query.status"),
        ({"cursor": "garbage!"}, "query.cursor"),
        ({"tema": "search"}, "query.tema"),
    ],
)
def test_bad_list_queries_are_named(client: TestClient, params: dict[str, Any], path: str) -> None:
    assert error_paths(client.get("/v1/events", params=params)) == [path]


def test_team_scoped_keys_write_and_read_only_their_team(db: Database) -> None:
    app = create_app(Settings(), db, scheduler=False)
    with TestClient(app) as c:
        ingest = new_key(db, "ingest", team="search")
        r = c.post("/v1/events", headers=ingest, json={"events": [ev(team="ads")]})
        assert r.status_code == 403
        assert "events[0].team" in r.json()["detail"]
        r = c.post("/v1/events", headers=ingest, json={"events": [ev(team="search"), ev(user="u")]})
        assert r.json() == {"inserted": 2, "duplicates": 0, "expired": 0}
        admin = new_key(db, "admin")
        c.post("/v1/events", headers=admin, json={"events": [ev(team="ads"), ev()]})

        read = new_key(db, "read", team="search")
        out = c.get("/v1/events", headers=read).json()["events"]
        assert sorted(e["team"] for e in out) == ["search", "search"]
        assert c.get("/v1/events", headers=read, params={"team": "ads"}).status_code == 403
        assert len(c.get("/v1/events", headers=admin).json()["events"]) == 4


def test_roles(db: Database) -> None:
    with TestClient(create_app(Settings(), db, scheduler=False)) as c:
        read, ingest = new_key(db, "read"), new_key(db, "ingest")
        assert c.post("/v1/events", headers=read, json={"events": [ev()]}).status_code == 403
        assert c.post("/v1/events", headers=ingest, json={"events": [ev()]}).status_code == 200
        assert c.get("/v1/events", headers=ingest).status_code == 403
        assert c.get("/v1/events", headers=read).status_code == 200
        r = c.post("/v1/events", json={"events": [ev()]})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        bad = {"Authorization": "Bearer mtr_not-a-key"}
        assert c.get("/v1/events", headers=bad).status_code == 401


def test_a_big_batch_of_ten_thousand(client: TestClient, db: Database) -> None:
    batch = [ev(prompt_tokens=i) for i in range(10_000)]
    body = json.dumps({"events": batch})
    r = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert r.json() == {"inserted": 10_000, "duplicates": 0, "expired": 0}
    assert stored_count(db) == 10_000
