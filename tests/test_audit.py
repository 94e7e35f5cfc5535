"""The audit log: every admin change once, in order, with its actor and without any secret;
`GET /v1/audit` and `meter audit list` (filters, cursor); long operations."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from meter import audit
from meter.api.app import create_app
from meter.cli import app as cli
from meter.db import models
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.keys import create_key, hash_key
from meter.settings import Settings
from meter.weeks import load_timezone
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.test_rollup_helpers import store

ADMIN_KEY = "env-admin-key-audit-0123456789abcdef"
HOOK_SECRET = "hook-secret-never-logged-1"
HOOK_SECRET_2 = "hook-secret-never-logged-2"
CLI_HOOK_SECRET = "hook-secret-never-logged-cli"


@dataclass
class Target:
    url: str
    db: Database


@pytest.fixture
def target(databases: DatabaseFactory) -> Target:
    """One database reached both by the app (a Database) and by the CLI (its URL)."""
    url = databases.url()
    engine = make_engine(url)
    databases.engines.append(engine)
    return Target(url, Database(engine=engine, tz=load_timezone("UTC")))


@pytest.fixture
def run(target: Target, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METER_DATABASE_URL", target.url)
    monkeypatch.setenv("METER_WEBHOOK_ALLOW_PRIVATE", "1")
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return invoke


def client_for(db: Database, admin_key: str | None = ADMIN_KEY) -> TestClient:
    settings = Settings(
        admin_key=None if admin_key is None else SecretStr(admin_key), webhook_allow_private=True
    )
    return TestClient(create_app(settings, db, scheduler=False))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def whole_table_text(db: Database) -> str:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM audit_log ORDER BY id")).all()
    return "\n".join(repr(tuple(r)) for r in rows)


def failed_alert(db: Database, budget_id: int) -> str:
    """A delivery that used up its attempts (as the delivery worker leaves it)."""
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(models.Alert).values(
                id="alert-failed-1",
                budget_id=budget_id,
                type="budget.threshold",
                week_start=date(2026, 11, 23),
                threshold="0.5",
                spend_units=1,
                limit_units=2,
                fired_at=now,
                payload="{}",
                delivery_status="failed",
                attempts=4,
                last_error="HTTP 500",
            )
        )
    return "alert-failed-1"


def test_each_admin_change_is_logged_once_in_order_with_its_actor_and_no_secret(
    target: Target, run: Any, tmp_path: Path
) -> None:
    db = target.db
    secrets_seen = [ADMIN_KEY, HOOK_SECRET, HOOK_SECRET_2, CLI_HOOK_SECRET]
    with client_for(db) as client:
        # METER_ADMIN_KEY creates a named admin key; that key does the rest.
        r = client.post(
            "/v1/keys", json={"role": "admin", "name": "ops"}, headers=bearer(ADMIN_KEY)
        )
        assert r.status_code == 201, r.text
        ops_id, ops_key = r.json()["id"], r.json()["key"]
        secrets_seen.append(ops_key)
        ops = bearer(ops_key)
        price = {
            "model": "acme/tiny",
            "input_per_million_usd": "0.000001",
            "output_per_million_usd": "2.5",
            "effective_from": "2026-01-01T00:00:00Z",
        }
        assert client.post("/v1/prices", json=price, headers=ops).status_code == 201
        r = client.post(
            "/v1/budgets",
            json={
                "scope": "team",
                "subject": "search",
                "weekly_limit_usd": "50.000000000001",
                "webhook_url": "http://127.0.0.1:9/hook",
                "webhook_secret": HOOK_SECRET,
            },
            headers=ops,
        )
        assert r.status_code == 201, r.text
        budget_id = r.json()["id"]
        r = client.patch(
            f"/v1/budgets/{budget_id}",
            json={"weekly_limit_usd": "60", "webhook_secret": HOOK_SECRET_2},
            headers=ops,
        )
        assert r.status_code == 200, r.text
        alert_id = failed_alert(db, budget_id)
        assert client.post(f"/v1/alerts/{alert_id}/redeliver", headers=ops).status_code == 200
        assert client.delete(f"/v1/budgets/{budget_id}", headers=ops).status_code == 204
        r = client.post(
            "/v1/keys",
            json={"role": "gateway", "team": "search", "user": "alice", "tags": {"key": "v"}},
            headers=ops,
        )
        gateway_id = r.json()["id"]
        secrets_seen.append(r.json()["key"])
        assert client.delete(f"/v1/keys/{gateway_id}", headers=ops).status_code == 204
        # Refused changes leave no entry.
        assert client.delete("/v1/budgets/999", headers=ops).status_code == 404
        assert client.post("/v1/prices", json=price, headers=ops).status_code == 409

    # The CLI.
    created = run("keys", "create", "--role", "read", "--name", "cli-made")
    secrets_seen.append(created.stdout.strip())
    found = re.search(r"created key (\d+)", created.output)
    assert found
    cli_key_id = int(found[1])
    run("keys", "revoke", str(cli_key_id))
    run(
        "prices",
        "set",
        "acme/other",
        "--input",
        "1",
        "--output",
        "2",
        "--from",
        "2026-01-01T00:00:00Z",
    )
    catalogue = tmp_path / "models.json"
    catalogue.write_text(
        json.dumps(
            {
                "data": [
                    {"id": "acme/tiny", "pricing": {"prompt": "0.000003", "completion": "0"}},
                    {"id": "acme/var", "pricing": {"prompt": "-1", "completion": "-1"}},
                ]
            }
        )
    )
    run("prices", "import", str(catalogue), "--from", "2026-02-01T00:00:00Z")
    store(db, [event(model="acme/unpriced-yet", occurred_at=datetime(2026, 3, 2, tzinfo=UTC))])
    run(
        "prices",
        "set",
        "acme/unpriced-yet",
        "--input",
        "1",
        "--output",
        "1",
        "--from",
        "2026-01-01T00:00:00Z",
    )
    run("prices", "reprice")
    budget_out = run(
        "budgets", "create", "--scope", "global", "--limit", "100",
        "--webhook-url", "http://127.0.0.1:9/h", "--webhook-secret", CLI_HOOK_SECRET,
    )  # fmt: skip
    cli_budget = int(budget_out.stdout.strip())

    with client_for(db) as client:
        r = client.get("/v1/audit", params={"limit": 1000}, headers=bearer(ADMIN_KEY))
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["next_cursor"] is None
    entries = list(reversed(page["entries"]))
    ops_actor = f"key:{ops_id}:ops"
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("admin-env", "key.create", f"key:{ops_id}"),
        (ops_actor, "price.set", "acme/tiny"),
        (ops_actor, "budget.create", f"budget:{budget_id}"),
        (ops_actor, "budget.update", f"budget:{budget_id}"),
        (ops_actor, "alert.redeliver", f"alert:{alert_id}"),
        (ops_actor, "budget.delete", f"budget:{budget_id}"),
        (ops_actor, "key.create", f"key:{gateway_id}"),
        (ops_actor, "key.revoke", f"key:{gateway_id}"),
        ("cli", "key.create", f"key:{cli_key_id}"),
        ("cli", "key.revoke", f"key:{cli_key_id}"),
        ("cli", "price.set", "acme/other"),
        ("cli", "price.import", None),
        ("cli", "price.set", "acme/unpriced-yet"),
        ("cli", "price.reprice.start", None),
        ("cli", "price.reprice.finish", None),
        ("cli", "budget.create", f"budget:{cli_budget}"),
    ]
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids) and all(e["at"].endswith("Z") for e in entries)
    d = [e["details"] for e in entries]
    assert d[0] == {
        "role": "admin", "team": None, "name": "ops", "user": None, "tags": None, "expires_at": None
    }  # fmt: skip
    assert d[1] == {
        "model": "acme/tiny",
        "input_per_million_usd": "0.000001",
        "output_per_million_usd": "2.5",
        "effective_from": "2026-01-01T00:00:00Z",
        "context_length": None,
    }
    created = d[2]
    assert created["weekly_limit_usd"] == "50.000000000001"  # exact money
    assert created["has_webhook_secret"] is True and "webhook_secret" not in created
    updated = d[3]
    assert updated["changed"] == ["webhook_secret", "weekly_limit_usd"]
    assert updated["weekly_limit_usd"] == "60" and updated["has_webhook_secret"] is True
    assert d[4] == {
        "budget_id": budget_id, "type": "budget.threshold", "week": "2026-W48", "threshold": "0.5"
    }  # fmt: skip
    assert d[5]["weekly_limit_usd"] == "60"
    assert d[7]["tags"] == {"key": "v"}
    imported = d[11]
    assert imported["unchanged"] == 0 and imported["skipped"] == 1
    assert [p["model"] for p in imported["added"]] == ["acme/tiny"]
    assert imported["added"][0]["input_per_million_usd"] == "3"
    assert d[14] == {"events": 1, "weeks": ["2026-W10"]}

    # No secret anywhere in the table: not a webhook secret, not a key, not a key's hash.
    text = whole_table_text(db)
    assert len(text.splitlines()) == len(entries)
    for secret in secrets_seen:
        assert secret not in text
        assert hash_key(secret) not in text


def test_open_mode_is_its_own_actor(db: Database) -> None:
    with client_for(db, admin_key=None) as client:
        r = client.post("/v1/keys", json={"role": "read", "name": "first"})
        assert r.status_code == 201
        with db.engine.connect() as conn:
            [entry] = audit.list_entries(conn)
        assert (entry.actor, entry.action) == ("open", "key.create")


def test_an_unnamed_key_is_key_and_its_id(db: Database) -> None:
    with db.engine.begin() as conn:
        key_id, key, _ = create_key(conn, "admin", None, None)
    with client_for(db, admin_key=None) as client:
        r = client.post("/v1/prices", headers=bearer(key), json={
            "model": "acme/x", "input_per_million_usd": "1", "output_per_million_usd": "1"
        })  # fmt: skip
        assert r.status_code == 201
        body = client.get("/v1/audit", headers=bearer(key)).json()
    assert [e["actor"] for e in body["entries"]] == [f"key:{key_id}"]


def seed_entries(db: Database) -> list[int]:
    """Nine entries: 3 price.set, 3 budget.*, 3 key.create, in that order."""
    ids = []
    with db.engine.begin() as conn:
        for action, target in [
            ("price.set", "m1"),
            ("budget.create", "budget:1"),
            ("key.create", "key:1"),
            ("price.set", "m2"),
            ("budget.update", "budget:1"),
            ("key.create", "key:2"),
        ]:
            ids.append(audit.record(conn, "cli", action, target, {"n": len(ids)}))
    time.sleep(0.02)
    with db.engine.begin() as conn:
        ids.append(audit.record(conn, "scheduler", "price.set", "m3", None))
        ids.append(audit.record(conn, "admin-env", "budget.delete", "budget:1", {}))
        ids.append(audit.record(conn, "key:7:ops", "key.create", "key:3", {"tags": {"a": "b"}}))
    return ids


def test_get_audit_pages_newest_first_and_filters(db: Database) -> None:
    ids = seed_entries(db)
    with client_for(db) as client:
        client.headers.update(bearer(ADMIN_KEY))
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 4}
            if cursor:
                params["cursor"] = cursor
            body = client.get("/v1/audit", params=params).json()
            seen += [e["id"] for e in body["entries"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids)) and pages == 3

        def actions(**params: Any) -> list[tuple[str, str]]:
            r = client.get("/v1/audit", params=params)
            assert r.status_code == 200, r.text
            return [(e["action"], e["target"]) for e in r.json()["entries"]]

        assert actions(action="price.set") == [("price.set", t) for t in ("m3", "m2", "m1")]
        assert actions(action="budget.*") == [
            ("budget.delete", "budget:1"),
            ("budget.update", "budget:1"),
            ("budget.create", "budget:1"),
        ]
        assert actions(action="budget") == []  # exact names only, unless `.*`
        with db.engine.connect() as conn:
            [seventh] = [e for e in audit.list_entries(conn, limit=100) if e.id == ids[6]]
        since = seventh.at.isoformat()
        assert actions(since=since) == [
            ("key.create", "key:3"),
            ("budget.delete", "budget:1"),
            ("price.set", "m3"),
        ]
        assert actions(since=since, action="key.*", limit=1) == [("key.create", "key:3")]
        first = client.get("/v1/audit", params={"limit": 1}).json()["entries"][0]
        assert first == {
            "id": ids[-1],
            "at": first["at"],
            "actor": "key:7:ops",
            "action": "key.create",
            "target": "key:3",
            "details": {"tags": {"a": "b"}},
        }

        for params in (
            {"cursor": "abc"},
            {"cursor": "0"},
            {"action": "Budget"},
            {"action": "a..b"},
            {"since": "2026-01-01T00:00:00"},  # no offset
            {"limit": 0},
            {"limit": 1001},
        ):
            r = client.get("/v1/audit", params=params)
            assert r.status_code == 422, params
            assert next(iter(params)) in str(r.json()), r.text

        with db.engine.begin() as conn:
            _, reader, _ = create_key(conn, "read", None, "reader")
        assert client.get("/v1/audit", headers=bearer(reader)).status_code == 403
        assert client.get("/v1/audit", headers={"Authorization": ""}).status_code == 401


def test_meter_audit_list_is_the_api(target: Target, run: Any) -> None:
    ids = seed_entries(target.db)
    with client_for(target.db) as client:
        api = client.get(
            "/v1/audit", params={"action": "key.*", "limit": 2}, headers=bearer(ADMIN_KEY)
        ).json()
    out = run("audit", "list", "--action", "key.*", "--limit", "2", "--format", "json").stdout
    assert json.loads(out) == api
    assert [e["id"] for e in api["entries"]] == [ids[8], ids[5]]
    rest = run(
        "audit", "list", "--action", "key.*", "--cursor", api["next_cursor"], "--format", "json"
    )
    assert [e["id"] for e in json.loads(rest.stdout)["entries"]] == [ids[2]]
    table = run("audit", "list", "--limit", "3").stdout
    assert "key:7:ops" in table and '{"tags":{"a":"b"}}' in table and "--cursor" in table
    runner = CliRunner()
    bad = runner.invoke(cli, ["audit", "list", "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since" in bad.output


def test_record_refuses_a_secret_field(db: Database) -> None:
    with db.engine.begin() as conn:
        for name in ("webhook_secret", "key", "Key_Hash"):
            with pytest.raises(ValueError, match=name):
                audit.record(conn, "cli", "x.y", None, {name: "s3cret"})
        # Nested data (a key's tags) may name anything.
        audit.record(conn, "cli", "x.y", None, {"tags": {"key": "v"}})


def test_a_long_operation_writes_start_then_abort_or_finish(db: Database) -> None:
    with pytest.raises(RuntimeError), audit.long_operation(db.engine, "cli", "thing.run", "t"):
        raise RuntimeError("boom")
    with audit.long_operation(db.engine, "scheduler", "thing.run") as op, db.engine.begin() as conn:
        op.finish(conn, {"done": 3})
    with audit.long_operation(db.engine, "cli", "thing.run"):
        pass
    with db.engine.connect() as conn:
        entries = list(reversed(audit.list_entries(conn)))
    assert [(e.actor, e.action, e.details) for e in entries] == [
        ("cli", "thing.run.start", None),
        ("cli", "thing.run.abort", {"error": "RuntimeError"}),
        ("scheduler", "thing.run.start", None),
        ("scheduler", "thing.run.finish", {"done": 3}),
        ("cli", "thing.run.start", None),
        ("cli", "thing.run.finish", None),
    ]


def test_nothing_in_meter_updates_or_deletes_an_entry() -> None:
    """The audit table is written by one INSERT; no code path updates or deletes it."""
    root = Path(__file__).resolve().parents[1] / "meter"
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for needle in (
            "update(models.AuditEntry",
            "delete(models.AuditEntry",
            "update(_A",
            "delete(_A",
        ):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []
