"""API keys over HTTP and the CLI: shown once, stored hashed, roles, revocation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from meter.api.app import create_app
from meter.api.auth import create_key
from meter.cli import app as cli
from meter.db import models
from meter.db.session import Database
from meter.settings import Settings

ADMIN_KEY = "env-admin-key-0123456789abcdef"


@pytest.fixture
def client(db: Database) -> Iterator[TestClient]:
    settings = Settings(admin_key=SecretStr(ADMIN_KEY))
    with TestClient(create_app(settings, db, scheduler=False)) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield c


def stored_keys(db: Database) -> list[sa.Row[tuple[int, str, str]]]:
    k = models.ApiKey
    with db.engine.connect() as conn:
        return list(conn.execute(sa.select(k.id, k.key_hash, k.prefix)).all())


def test_create_shows_the_key_once_and_stores_its_sha256(client: TestClient, db: Database) -> None:
    r = client.post("/v1/keys", json={"role": "read", "team": "search", "name": "dash"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {
        "id",
        "key",
        "role",
        "team",
        "name",
        "user",
        "tags",
        "created_at",
        "expires_at",
    }
    assert created["expires_at"] is None
    assert (created["role"], created["team"], created["name"]) == ("read", "search", "dash")
    assert created["created_at"].endswith("Z")
    key = created["key"]

    [(key_id, key_hash, prefix)] = stored_keys(db)
    assert key_id == created["id"]
    assert key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert prefix == key[:8]

    listed = client.get("/v1/keys").json()
    assert listed == {
        "keys": [
            {
                "id": key_id,
                "role": "read",
                "team": "search",
                "name": "dash",
                "user": None,
                "tags": None,
                "created_at": created["created_at"],
                "prefix": key[:8],
                "expires_at": None,
                "last_used_at": None,
            }
        ]
    }
    assert key not in client.get("/v1/keys").text

    # The new key works, for its role only.
    assert client.get("/v1/events", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    r = client.get("/v1/keys", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403


def test_revoke(client: TestClient) -> None:
    created = client.post("/v1/keys", json={"role": "ingest"}).json()
    auth = {"Authorization": f"Bearer {created['key']}"}
    assert client.delete(f"/v1/keys/{created['id']}").status_code == 204
    assert client.get("/v1/keys").json() == {"keys": []}
    r = client.post("/v1/events", headers=auth, json={"events": []})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.delete(f"/v1/keys/{created['id']}").status_code == 404
    assert client.delete("/v1/keys/99999999999999999999").status_code == 404
    assert client.delete("/v1/keys/abc").status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "owner"}, "role"),
        ({}, "role"),
        ({"role": "admin", "team": "search"}, "team"),
        ({"role": "read", "team": ""}, "team"),
        ({"role": "read", "name": "n" * 201}, "name"),
        ({"role": "read", "key": "chosen"}, "key"),
    ],
)
def test_bad_key_requests_name_the_field(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/v1/keys", json=body)
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", field]]


def test_admin_key_from_settings_and_wrong_keys(db: Database) -> None:
    with db.engine.begin() as conn:
        _, read_key, _ = create_key(conn, "read", None, None)
    settings = Settings(admin_key=SecretStr(ADMIN_KEY))
    with TestClient(create_app(settings, db, scheduler=False)) as c:
        ok = c.get("/v1/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert ok.status_code == 200
        for header in (None, "Bearer ", f"Basic {ADMIN_KEY}", f"Bearer {ADMIN_KEY}x"):
            r = c.get("/v1/keys", headers={"Authorization": header} if header else {})
            assert r.status_code == 401, header
            assert r.headers["www-authenticate"] == "Bearer"
            assert ADMIN_KEY not in r.text
        r = c.get("/v1/keys", headers={"Authorization": f"Bearer {read_key}"})
        assert r.status_code == 403
        assert "admin" in r.json()["detail"]


def test_cli_create_prints_only_the_key_then_list_and_revoke(db_url: str) -> None:
    runner = CliRunner()
    env = {"METER_DATABASE_URL": db_url}
    created = runner.invoke(
        cli, ["keys", "create", "--role", "ingest", "--team", "search"], env=env
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert created.stdout == key + "\n"
    assert key.startswith("mtr_") and len(key) > 40
    assert "not shown again" in created.stderr

    listed = runner.invoke(cli, ["keys", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert '"team": "search"' in listed.stdout
    assert key[:8] in listed.stdout and key not in listed.stdout

    bad = runner.invoke(cli, ["keys", "create", "--role", "owner"], env=env)
    assert bad.exit_code == 2
    assert bad.stdout == ""

    assert runner.invoke(cli, ["keys", "revoke", "1"], env=env).exit_code == 0
    missing = runner.invoke(cli, ["keys", "revoke", "1"], env=env)
    assert missing.exit_code == 1
    assert "no key with id 1" in missing.stderr


def test_with_no_key_at_all_the_api_is_open_until_the_first_key(db: Database) -> None:
    """Open mode is what `meter serve` allows on loopback only; the first key ends it."""
    with TestClient(create_app(Settings(), db, scheduler=False)) as c:
        assert c.get("/v1/keys").json() == {"keys": []}
        created = c.post("/v1/keys", json={"role": "admin", "name": "first"})
        assert created.status_code == 201
        r = c.get("/v1/keys")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": f"Bearer {created.json()['key']}"}
        assert c.get("/v1/keys", headers=auth).status_code == 200
