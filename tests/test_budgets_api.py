"""The budgets API: shapes, exact money, validation naming the field, scoping, secrets."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from meter.api.auth import create_key
from meter.db.session import Database
from meter.settings import get_settings
from meter.weeks import week_of
from tests.budget_helpers import USD, api, put_usage


def this_week_start(db: Database):
    return week_of(datetime.now(UTC), db.tz).start


def test_create_with_defaults_shows_no_secret_and_exact_fields(db: Database):
    client = api(db)
    r = client.post(
        "/v1/budgets",
        json={
            "scope": "team",
            "subject": "search",
            "weekly_limit_usd": "50",
            "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_secret": "hunter2-secret",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    week = week_of(datetime.now(UTC), db.tz)
    assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")
    del body["created_at"], body["updated_at"]
    assert body == {
        "id": body["id"],
        "scope": "team",
        "subject": "search",
        "period": "week",  # SPEC section 8: the default period, and the limit under both names
        "limit_usd": "50",
        "weekly_limit_usd": "50",
        "thresholds": ["0.5", "0.8", "1"],
        "webhook_url": "http://127.0.0.1:9/hook",
        "has_webhook_secret": True,
        "enforce": False,
        "week": week.label,
        "period_label": week.label,
        "period_start": week.start.isoformat(),
        "spend_usd": "0",
        "ratio": "0",
    }
    assert "hunter2-secret" not in r.text


def test_spend_and_ratio_come_from_the_roll_up_per_scope(db: Database):
    week = this_week_start(db)
    put_usage(db, week, 30 * USD, team="search", user="alice")
    put_usage(db, week, 7 * USD + 1, team="ads", user="alice")  # alice across teams
    put_usage(db, week, 3 * USD, team="ads", user="bob")
    put_usage(db, week, 0, team="x", user="y")
    client = api(db)
    ids = {}
    for scope, subject, limit in (
        ("team", "search", "50"),
        ("user", "alice", "0.000000000003"),
        ("global", None, "100"),
    ):
        doc = {"scope": scope, "weekly_limit_usd": limit, "thresholds": []}
        if subject:
            doc["subject"] = subject
        r = client.post("/v1/budgets", json=doc)
        assert r.status_code == 201, r.text
        ids[scope] = r.json()["id"]
    listed = {b["scope"]: b for b in client.get("/v1/budgets").json()["budgets"]}
    assert (listed["team"]["spend_usd"], listed["team"]["ratio"]) == ("30", "0.6")
    assert listed["user"]["spend_usd"] == "37.000000000001"
    assert listed["user"]["weekly_limit_usd"] == "0.000000000003"
    assert listed["user"]["ratio"] == "12333333333333.666666"  # truncated, never rounded up
    assert (listed["global"]["spend_usd"], listed["global"]["ratio"]) == ("40.000000000001", "0.4")
    one = client.get(f"/v1/budgets/{ids['global']}").json()
    assert one["subject"] is None and one["spend_usd"] == "40.000000000001"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"thresholds": [0, 0.5]}, "thresholds"),
        ({"thresholds": [0.5, 10.5]}, "thresholds"),
        ({"thresholds": [-1]}, "thresholds"),
        ({"thresholds": ["NaN"]}, "thresholds"),
        ({"weekly_limit_usd": "0"}, "weekly_limit_usd"),
        ({"weekly_limit_usd": "-5"}, "weekly_limit_usd"),
        ({"weekly_limit_usd": "0.0000000000001"}, "weekly_limit_usd"),
        ({"weekly_limit_usd": 12.5}, "weekly_limit_usd"),  # a float is not exact money
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"webhook_url": "javascript:alert(1)"}, "webhook_url"),
        ({"subject": None}, "subject"),
        ({"subject": ""}, "subject"),
        ({"scope": "user", "subject": None}, "subject"),
        ({"scope": "global", "subject": "search"}, "subject"),
        ({"scope": "org"}, "scope"),
        ({"cost": "1"}, "cost"),
    ],
)
def test_bad_input_is_422_naming_the_field(db: Database, doc: dict, field: str):
    base = {"scope": "team", "subject": "search", "weekly_limit_usd": "50"}
    base.update(doc)
    r = api(db).post("/v1/budgets", json=base)
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["body", field] in locs, locs


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8000/hook",
        "http://api.localhost/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_loopback_and_private_webhooks_are_refused_unless_allowed(db: Database, url: str):
    doc = {"scope": "global", "weekly_limit_usd": "5", "webhook_url": url}
    strict = api(db, get_settings(webhook_allow_private=False))
    r = strict.post("/v1/budgets", json=doc)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "webhook_url"]
    created = strict.post("/v1/budgets", json={**doc, "webhook_url": None}).json()
    r = strict.patch(f"/v1/budgets/{created['id']}", json={"webhook_url": url})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "webhook_url"]
    assert api(db).post("/v1/budgets", json=doc).status_code == 201


def test_public_webhook_urls_are_stored_without_any_lookup(db: Database):
    strict = api(db, get_settings(webhook_allow_private=False))
    r = strict.post(
        "/v1/budgets",
        json={
            "scope": "global",
            "weekly_limit_usd": "5",
            "webhook_url": "https://hooks.example.com/x",
        },
    )
    assert r.status_code == 201 and r.json()["webhook_url"] == "https://hooks.example.com/x"


def test_patch_get_delete_and_404(db: Database):
    client = api(db)
    created = client.post(
        "/v1/budgets",
        json={
            "scope": "team",
            "subject": "search",
            "weekly_limit_usd": "50",
            "thresholds": ["1", 0.25, 0.5, 0.5],
            "webhook_secret": "s",
        },
    ).json()
    assert created["thresholds"] == ["0.25", "0.5", "1"]
    bid = created["id"]
    r = client.patch(
        f"/v1/budgets/{bid}",
        json={"weekly_limit_usd": "75.5", "webhook_secret": None, "enforce": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["weekly_limit_usd"], body["has_webhook_secret"], body["enforce"]) == (
        "75.5",
        False,
        True,
    )
    assert body["thresholds"] == ["0.25", "0.5", "1"]
    r = client.patch(f"/v1/budgets/{bid}", json={"scope": "global"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "subject"]
    r = client.patch(f"/v1/budgets/{bid}", json={"thresholds": [11]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "thresholds"]
    assert client.get(f"/v1/budgets/{bid}").json()["weekly_limit_usd"] == "75.5"
    assert client.delete(f"/v1/budgets/{bid}").status_code == 204
    assert client.get(f"/v1/budgets/{bid}").status_code == 404
    assert client.patch(f"/v1/budgets/{bid}", json={"enforce": False}).status_code == 404
    assert client.delete(f"/v1/budgets/{bid}").status_code == 404
    assert client.post(f"/v1/budgets/{bid}/test").status_code == 404
    assert client.get("/v1/budgets").json() == {"budgets": []}
    assert client.get("/v1/budgets/99999999999").status_code == 404
    assert client.delete("/v1/budgets/99999999999").status_code == 404
    assert client.get("/v1/alerts", params={"budget_id": 99999999999}).json() == {"alerts": []}
    assert client.get("/v1/alerts", params={"week": "2025-W53"}).status_code == 422


def test_roles_and_team_scoped_keys(db: Database):
    with db.engine.begin() as conn:
        _, admin, _ = create_key(conn, "admin", None, "admin")
        _, search_reader, _ = create_key(conn, "read", "search", "search dashboard")
        _, ingest, _ = create_key(conn, "ingest", None, "client")
    client = api(db)
    as_admin = {"Authorization": f"Bearer {admin}"}
    as_search = {"Authorization": f"Bearer {search_reader}"}
    ids = {}
    for subject in ("search", "ads"):
        r = client.post(
            "/v1/budgets",
            headers=as_admin,
            json={"scope": "team", "subject": subject, "weekly_limit_usd": "1"},
        )
        ids[subject] = r.json()["id"]
    ids["global"] = client.post(
        "/v1/budgets", headers=as_admin, json={"scope": "global", "weekly_limit_usd": "1"}
    ).json()["id"]
    assert client.get("/v1/budgets").status_code == 401
    listed = client.get("/v1/budgets", headers=as_search).json()["budgets"]
    assert [b["id"] for b in listed] == [ids["search"]]
    assert client.get(f"/v1/budgets/{ids['search']}", headers=as_search).status_code == 200
    assert client.get(f"/v1/budgets/{ids['ads']}", headers=as_search).status_code == 403
    assert client.get(f"/v1/budgets/{ids['global']}", headers=as_search).status_code == 403
    assert client.get(f"/v1/alerts?budget_id={ids['ads']}", headers=as_search).status_code == 403
    doc = {"scope": "team", "subject": "search", "weekly_limit_usd": "1"}
    assert client.post("/v1/budgets", headers=as_search, json=doc).status_code == 403
    assert client.delete(f"/v1/budgets/{ids['search']}", headers=as_search).status_code == 403
    assert client.post(f"/v1/budgets/{ids['search']}/test", headers=as_search).status_code == 403
    ingest_only = {"Authorization": f"Bearer {ingest}"}
    assert client.get("/v1/budgets", headers=ingest_only).status_code == 403


def test_the_secret_never_appears_in_responses_or_logs(
    db: Database, caplog: pytest.LogCaptureFixture
):
    secret = "whsec-do-not-leak-8c1f"
    caplog.set_level(logging.DEBUG)
    client = api(db)
    texts = []
    r = client.post(
        "/v1/budgets",
        json={
            "scope": "team",
            "subject": "search",
            "weekly_limit_usd": "1",
            "webhook_url": "http://127.0.0.1:9/closed",
            "webhook_secret": secret,
        },
    )
    texts.append(r.text)
    bid = r.json()["id"]
    put_usage(db, this_week_start(db), 2 * USD)
    texts.append(client.patch(f"/v1/budgets/{bid}", json={"webhook_secret": secret}).text)
    texts.append(client.get("/v1/budgets").text)
    texts.append(client.get(f"/v1/budgets/{bid}").text)
    texts.append(client.post(f"/v1/budgets/{bid}/test").text)  # port 9: connection refused
    texts.append(client.get("/v1/alerts").text)
    texts.append(client.post("/v1/budgets", json={"webhook_secret": secret}).text)  # a 422
    texts.append(client.get("/openapi.json").text)
    for text in texts:
        assert secret not in text
    assert secret not in caplog.text
    from meter.budgets import repository as repo

    with db.engine.connect() as conn:
        budget = repo.get_budget(conn, bid)
    assert budget is not None and budget.webhook_secret == secret
    assert secret not in repr(budget)
