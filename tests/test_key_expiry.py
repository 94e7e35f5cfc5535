"""Keys' expires_at (401 everywhere once past, dashboard sessions included) and last_used_at
(written after use, at most once a minute per key, across processes too)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from meter.cli import app as cli
from meter.db import models
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.events import format_timestamp
from meter.keys import create_key, note_use
from tests import test_audit
from tests.test_audit import ADMIN_KEY, Target, bearer, client_for
from tests.test_dashboard import csrf_of

target = test_audit.target  # the fixture: one database for the app and the CLI

MODEL = "mistralai/mistral-7b-instruct-v0.1"


def last_used(db: Database, key_id: int) -> datetime | None:
    with db.engine.connect() as conn:
        value: datetime | None = conn.execute(
            sa.select(models.ApiKey.last_used_at).where(models.ApiKey.id == key_id)
        ).scalar_one()
    return value


def test_an_expired_key_gets_401_everywhere_and_its_session_ends(db: Database) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    with client_for(db) as client:
        made = {}
        for role, team in (("read", None), ("gateway", "search")):
            r = client.post(
                "/v1/keys",
                json={"role": role, "team": team, "expires_at": format_timestamp(soon)},
                headers=bearer(ADMIN_KEY),
            )
            assert r.status_code == 201, r.text
            assert r.json()["expires_at"] == format_timestamp(soon)
            made[role] = r.json()["key"]
        listed = client.get("/v1/keys", headers=bearer(ADMIN_KEY)).json()["keys"]
        assert [k["expires_at"] for k in listed] == [format_timestamp(soon)] * 2

        # Before: the read key reads and logs in to the dashboard.
        assert client.get("/v1/events", headers=bearer(made["read"])).status_code == 200
        page = client.get("/")
        login = client.post(
            "/login",
            data={"key": made["read"], "csrf": csrf_of(page.text)},
            follow_redirects=False,
        )
        assert login.status_code == 303, login.text
        assert 'name="key"' not in client.get("/").text  # signed in
        assert client.get("/v1/prices").status_code == 200  # the session reads the API
        gateway_body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)

        r = client.get("/v1/events", headers=bearer(made["read"]))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = client.post("/v1/chat/completions", json=gateway_body, headers=bearer(made["gateway"]))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert 'name="key"' in client.get("/").text  # the session ended: the login page
        assert client.get("/v1/prices").status_code == 401
        client.cookies.clear()
        page = client.get("/")
        again = client.post(
            "/login",
            data={"key": made["read"], "csrf": csrf_of(page.text)},
            follow_redirects=False,
        )
        assert again.status_code == 401


def test_expires_at_must_be_a_future_rfc3339_time(db: Database) -> None:
    with client_for(db) as client:
        client.headers.update(bearer(ADMIN_KEY))
        for value in ("2020-01-01T00:00:00Z", "2030-01-01T00:00:00", "tomorrow", 5):
            r = client.post("/v1/keys", json={"role": "read", "expires_at": value})
            assert r.status_code == 422, value
            assert r.json()["detail"][0]["loc"] == ["body", "expires_at"], r.text
        assert client.get("/v1/keys").json() == {"keys": []}


def test_meter_keys_create_expires_in_and_at(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METER_DATABASE_URL", target.url)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli, list(args), catch_exceptions=False)

    before = datetime.now(UTC)
    assert run("keys", "create", "--role", "read", "--expires-in", "30d").exit_code == 0
    r = run("keys", "create", "--role", "ingest", "--expires-at", "2099-01-01T00:00:00+01:00")
    assert r.exit_code == 0, r.output
    assert run("keys", "create", "--role", "read").exit_code == 0
    keys = json.loads(run("keys", "list", "--json").stdout)["keys"]
    thirty = datetime.fromisoformat(keys[0]["expires_at"])
    assert timedelta(days=30) <= thirty - before <= timedelta(days=30, seconds=10)
    assert keys[1]["expires_at"] == "2098-12-31T23:00:00Z"
    assert keys[2]["expires_at"] is None
    assert [k["last_used_at"] for k in keys] == [None, None, None]
    table = run("keys", "list").stdout
    assert "2098-12-31T23:00:00Z" in table and "never" in table and "last used" in table
    for args, message in (
        (("--expires-in", "0d"), "--expires-in"),
        (("--expires-in", "3 days"), "--expires-in"),
        (("--expires-at", "2020-01-01T00:00:00Z"), "--expires-at: must be in the future"),
        (("--expires-at", "2099-01-01T00:00:00"), "--expires-at"),
        (("--expires-in", "1d", "--expires-at", "2099-01-01T00:00:00Z"), "not both"),
    ):
        r = run("keys", "create", "--role", "read", *args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
    assert len(json.loads(run("keys", "list", "--json").stdout)["keys"]) == 3


def test_last_used_at_moves_after_use_and_not_twice_within_a_minute(db: Database) -> None:
    with db.engine.begin() as conn:
        key_id, key, _ = create_key(conn, "read", None, "r")
    with client_for(db) as client:
        assert last_used(db, key_id) is None
        before = datetime.now(UTC)
        assert client.get("/v1/events", headers=bearer(key)).status_code == 200
        first = last_used(db, key_id)
        assert first is not None and before <= first <= datetime.now(UTC)
        for _ in range(5):
            assert client.get("/v1/prices", headers=bearer(key)).status_code == 200
        assert last_used(db, key_id) == first
        [listed] = client.get("/v1/keys", headers=bearer(ADMIN_KEY)).json()["keys"]
        assert listed["last_used_at"] == format_timestamp(first)

    # The clock, moved by hand: 30 s later nothing is written, 61 s later it is.
    with db.engine.connect() as conn:
        note_use(conn, key_id, first, first + timedelta(seconds=30))
    assert last_used(db, key_id) == first
    with db.engine.connect() as conn:
        note_use(conn, key_id, first, first + timedelta(seconds=61))
    assert last_used(db, key_id) == first + timedelta(seconds=61)


def test_another_process_does_not_write_last_used_at_again_within_a_minute(
    target: Target,
) -> None:
    """Each process remembers its own writes; the UPDATE's condition covers the others: a second
    engine (as another `meter serve` would have) holding a stale value writes nothing, and tries
    again a minute after its own attempt."""
    db = target.db
    with db.engine.begin() as conn:
        key_id, _, _ = create_key(conn, "read", None, "r")
    now = datetime.now(UTC)
    with db.engine.connect() as conn:
        note_use(conn, key_id, None, now)
    other = make_engine(target.url)
    try:
        with other.connect() as conn:
            note_use(conn, key_id, None, now + timedelta(seconds=59))  # its read was stale
        assert last_used(db, key_id) == now
        with other.connect() as conn:
            note_use(conn, key_id, None, now + timedelta(seconds=100))  # its own try: 41 s ago
        assert last_used(db, key_id) == now
        with other.connect() as conn:
            note_use(conn, key_id, None, now + timedelta(seconds=119))
        assert last_used(db, key_id) == now + timedelta(seconds=119)
    finally:
        other.dispose()
