"""`GET/POST /v1/prices`: exact decimal strings in and out, 409 on the same version twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.db.session import Database
from meter.settings import Settings

SEED = {
    "model": "mistralai/mistral-7b-instruct-v0.1",
    "input_per_million_usd": "0.11",
    "output_per_million_usd": "0.19",
    "effective_from": "2023-09-28T00:00:00Z",
    "context_length": 4096,
}


@pytest.fixture
def client(db: Database) -> Iterator[TestClient]:
    with db.engine.begin() as conn:
        _, key, _ = create_key(conn, "admin", None, None)
    with TestClient(create_app(Settings(), db, scheduler=False)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def test_the_seed_price_is_listed_exactly(client: TestClient) -> None:
    assert client.get("/v1/prices").json() == {"prices": [SEED]}


def test_add_a_version_then_409_on_the_same_one(client: TestClient) -> None:
    new = {
        "model": "acme/tiny",
        "input_per_million_usd": "0.000001",
        "output_per_million_usd": "1500",
        "effective_from": "2026-11-01T01:00:00+01:00",
    }
    r = client.post("/v1/prices", json=new)
    assert r.status_code == 201, r.text
    expected = {**new, "effective_from": "2026-11-01T00:00:00Z", "context_length": None}
    assert r.json() == expected
    assert client.get("/v1/prices", params={"model": "acme/tiny"}).json() == {"prices": [expected]}
    assert client.get("/v1/prices").json()["prices"] == [expected, SEED]

    again = client.post("/v1/prices", json={**new, "input_per_million_usd": "2"})
    assert again.status_code == 409
    assert "acme/tiny" in again.json()["detail"]


def test_whole_numbers_are_exact_and_default_date_is_now(client: TestClient) -> None:
    r = client.post(
        "/v1/prices",
        json={"model": "acme/free", "input_per_million_usd": 0, "output_per_million_usd": "0"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["input_per_million_usd"] == "0"
    assert r.json()["effective_from"].endswith("Z")


def test_priced_events_use_the_new_version(client: TestClient) -> None:
    client.post(
        "/v1/prices",
        json={
            "model": "acme/big",
            "input_per_million_usd": "2.5",
            "output_per_million_usd": "10",
            "effective_from": "2026-01-01T00:00:00Z",
        },
    )
    event = {
        "id": "019ab7c4-5f2e-7a10-8b3c-2d4e6f809a1b",
        "occurred_at": "2026-11-24T12:00:00Z",
        "model": "acme/big",
        "prompt_tokens": 3,
        "completion_tokens": 7,
    }
    assert client.post("/v1/events", json={"events": [event]}).status_code == 200
    [out] = client.get("/v1/events").json()["events"]
    assert (out["input_cost_usd"], out["output_cost_usd"], out["cost_usd"]) == (
        "0.0000075",
        "0.00007",
        "0.0000775",
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input_per_million_usd": "-0.11"}, "input_per_million_usd"),
        ({"input_per_million_usd": "abc"}, "input_per_million_usd"),
        ({"input_per_million_usd": "NaN"}, "input_per_million_usd"),
        ({"input_per_million_usd": 0.11}, "input_per_million_usd"),
        ({"input_per_million_usd": True}, "input_per_million_usd"),
        ({"output_per_million_usd": "0.1234567"}, "output_per_million_usd"),
        ({"output_per_million_usd": "1e999999999"}, "output_per_million_usd"),
        ({"output_per_million_usd": "99999999999"}, "output_per_million_usd"),
        ({"model": ""}, "model"),
        ({"effective_from": "2026-11-01T00:00:00"}, "effective_from"),
        ({"context_length": 0}, "context_length"),
        ({"context_length": "4096"}, "context_length"),
        ({"cost": "1"}, "cost"),
    ],
)
def test_malformed_prices_name_the_field(
    client: TestClient, fields: dict[str, Any], field: str
) -> None:
    body = {**SEED, "model": "acme/x", **fields}
    r = client.post("/v1/prices", json=body)
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", field]]
    assert client.get("/v1/prices", params={"model": "acme/x"}).json() == {"prices": []}


def test_only_admins_add_prices(db: Database) -> None:
    with db.engine.begin() as conn:
        _, read, _ = create_key(conn, "read", None, None)
    with TestClient(create_app(Settings(), db, scheduler=False)) as c:
        auth = {"Authorization": f"Bearer {read}"}
        assert c.get("/v1/prices", headers=auth).status_code == 200
        assert c.post("/v1/prices", headers=auth, json=SEED).status_code == 403
        assert c.get("/v1/prices").status_code == 401
