"""Retention (SPEC section 10): purging raw events older than N days keeps every answer.

A history of 20 weeks in America/New_York, with tags rolled up, provider costs, budgets of
every period and their alerts; every report, summary, budget and alert answer is compared as
JSON (as_of and delivery fields aside) before and after `meter purge --older-than-days 30`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meter.api.app import create_app
from meter.cli import app
from meter.db.ledger import insert_events, load_price_book, read_cutoff
from meter.db.session import Database
from meter.events import EventRecord
from meter.lifecycle.retention import PurgeError, plan_purge, purge, target_cutoff
from meter.pricing import SEED_MODEL
from meter.recorder.meter import Recorder
from meter.settings import get_settings
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.test_rollup_helpers import store

NY = ZoneInfo("America/New_York")
ADMIN = {"Authorization": "Bearer test-admin-key"}
IN_PRICE, OUT_PRICE = Decimal("0.11") / 10**6, Decimal("0.19") / 10**6
VOLATILE = {"as_of", "delivery_status", "attempts", "last_error", "delivered_at", "updated_at"}


def cost(e: EventRecord) -> Decimal:
    if e.model != SEED_MODEL:
        return Decimal(0)
    return e.prompt_tokens * IN_PRICE + e.completion_tokens * OUT_PRICE


def history(now: datetime) -> list[EventRecord]:
    """About 600 events over the last 20 weeks, two of them on each side of the cutoff's
    midnight, some with tags, some with a provider cost, some unpriced."""
    rng = random.Random(16)
    cutoff = target_cutoff(30, NY, now)
    midnight = datetime.combine(cutoff, datetime.min.time(), NY)
    moments = [midnight - timedelta(minutes=30), midnight + timedelta(minutes=30)]
    moments += [now - timedelta(minutes=rng.randint(60, 60 * 24 * 140)) for _ in range(600)]
    out = []
    for i, at in enumerate(moments):
        tokens = (rng.randint(0, 900_000), rng.randint(0, 400_000))
        provider = None
        if i % 3 == 0:
            provider = str((tokens[0] * IN_PRICE + tokens[1] * OUT_PRICE) * Decimal("1.1"))
        out.append(
            event(
                occurred_at=at.astimezone(UTC),
                user=["alice", "bob", "org/carol", None][i % 4],
                team=["search", "ads", None][i % 3],
                model=SEED_MODEL if i % 7 else "acme/unpriced",
                prompt_tokens=tokens[0],
                completion_tokens=tokens[1],
                tags={"feature": ["chat", "search"][i % 2]} if i % 5 else None,
                provider_cost_usd=provider,
                status="error" if i % 11 == 0 else "ok",
            )
        )
    return out


@pytest.fixture
def ny(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Database, TestClient, list[EventRecord]]]:
    db = databases.database("America/New_York")
    monkeypatch.setenv("METER_DATABASE_URL", db.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("METER_TIMEZONE", "America/New_York")
    settings = get_settings(admin_key="test-admin-key", timezone="America/New_York")
    client = TestClient(create_app(settings, db, scheduler=False))
    client.headers.update(ADMIN)
    assert client.post("/v1/tags", json={"key": "feature"}).status_code == 201
    events = history(datetime.now(UTC))
    store(db, events)
    for body in (
        {"scope": "global", "period": "week", "limit_usd": "0.05"},
        {"scope": "team", "subject": "search", "period": "month", "limit_usd": "0.1"},
        {"scope": "user", "subject": "alice", "period": "day", "limit_usd": "0.01"},
        {"scope": "tag", "subject": "feature=chat", "period": "month", "limit_usd": "0.02"},
    ):
        assert client.post("/v1/budgets", json=body).status_code == 201
    assert client.post("/v1/rollup").status_code == 200
    yield db, client, events


def _strip(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def answers(client: TestClient, today: date) -> dict[str, Any]:
    """Every total meter answers with, over the whole history."""
    first_day = (today - timedelta(days=150)).isoformat()
    months = sorted({(today - timedelta(days=d)).strftime("%Y-%m") for d in range(0, 150, 10)})
    gets: dict[str, tuple[str, dict[str, str]]] = {
        "usage-weekly": ("/v1/usage/weekly", {"from": "2026-W20", "to": "2026-W52"}),
        "usage-day": ("/v1/usage", {"period": "day", "from": first_day, "group_by": ""}),
        "usage-day-tag": (
            "/v1/usage",
            {"period": "day", "from": first_day, "group_by": "team,tag:feature"},
        ),
        "usage-week": ("/v1/usage", {"period": "week", "from": "2026-W20"}),
        "usage-month": ("/v1/usage", {"period": "month", "from": months[0]}),
        "usage-month-tag": (
            "/v1/usage",
            {"period": "month", "from": months[0], "group_by": "tag:feature"},
        ),
        "team-summary": ("/v1/teams/search/summary", {"weeks": "26"}),
        "budgets": ("/v1/budgets", {}),
        "alerts": ("/v1/alerts", {"limit": "1000"}),
        "recon-week": ("/v1/reconciliation", {"period": "week", "from": "2026-W20"}),
        "recon-month": ("/v1/reconciliation", {"period": "month", "from": months[0]}),
        "alice-from-to": (
            "/v1/reports/users/alice",
            {"from": first_day, "to": today.isoformat()},
        ),
    }
    for month in months:
        gets[f"billing-{month}"] = ("/v1/reports/billing", {"month": month})
        gets[f"billing-{month}-csv"] = ("/v1/reports/billing", {"month": month, "format": "csv"})
        gets[f"carol-{month}"] = ("/v1/reports/users/org/carol", {"month": month})
    out: dict[str, Any] = {}
    for name, (path, params) in gets.items():
        r = client.get(path, params=params)
        assert r.status_code == 200, (name, r.text)
        out[name] = r.text if params.get("format") == "csv" else _strip(r.json())
    return out


def raw_days(db: Database) -> list[date]:
    with db.engine.connect() as conn:
        return [
            v if isinstance(v, date) else date.fromisoformat(v)
            for v in conn.execute(sa.text("SELECT day FROM events ORDER BY day")).scalars()
        ]


def test_every_answer_is_the_same_after_purging_all_but_30_days(ny):
    db, client, events = ny
    today = datetime.now(NY).date()
    cutoff = today - timedelta(days=30)
    before = answers(client, today)
    assert before["alerts"]["alerts"], "the history must fire alerts for the comparison"
    kept = [e for e in events if e.occurred_at.astimezone(NY).date() >= cutoff]
    gone = len(events) - len(kept)
    assert gone > 400 and len(kept) > 100

    dry = CliRunner().invoke(app, ["purge", "--older-than-days", "30", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would purge {gone:,} raw events of local days before {cutoff}" in dry.output
    assert len(raw_days(db)) == len(events)

    result = CliRunner().invoke(app, ["purge", "--older-than-days", "30", "--batch-size", "97"])
    assert result.exit_code == 0, result.output
    assert f"purged {gone:,} raw events of local days before {cutoff}" in result.output

    days = raw_days(db)
    assert len(days) == len(kept) and min(days) == cutoff  # the event 30 minutes after midnight
    with db.engine.connect() as conn:
        assert read_cutoff(conn) == cutoff
    assert client.post("/v1/rollup").status_code == 200
    after = answers(client, today)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], name

    # In the audit log: start and finish, by the CLI, with the count.
    entries = client.get("/v1/audit", params={"action": "purge.finish"}).json()["entries"]
    assert [(e["actor"], e["details"]["deleted"]) for e in entries] == [("cli", gone)]
    assert client.get("/v1/audit", params={"action": "purge.start"}).json()["entries"]


def test_purged_days_are_expired_and_late_events_inside_the_horizon_count_once(ny):
    db, client, events = ny
    today = datetime.now(NY).date()
    cutoff = today - timedelta(days=30)
    purge(db, 30, actor="cli")
    weekly_before = client.get("/v1/usage/weekly", params={"from": "2026-W20"}).json()["rows"]

    # An old event: 200, expired, nothing stored. A replayed purged event: the same.
    old = event(occurred_at=datetime.combine(cutoff - timedelta(days=1), datetime.min.time(), NY))
    purged = next(e for e in events if e.occurred_at.astimezone(NY).date() < cutoff)
    body = {
        "events": [
            {
                "id": str(e.id),
                "occurred_at": e.occurred_at.isoformat(),
                "model": e.model,
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
            }
            for e in (old, purged)
        ]
    }
    r = client.post("/v1/events", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"inserted": 0, "duplicates": 0, "expired": 2}
    assert len(raw_days(db)) == sum(
        1 for e in events if e.occurred_at.astimezone(NY).date() >= cutoff
    )

    # A late event on the cutoff day, whose week is partly purged: counted once, on top.
    late = event(
        occurred_at=datetime.combine(cutoff, datetime.min.time(), NY) + timedelta(hours=5),
        team="search",
        user="alice",
        prompt_tokens=1_000_000,
        completion_tokens=1_000_000,
    )
    r = client.post(
        "/v1/events",
        json={
            "events": [
                {
                    "id": str(late.id),
                    "occurred_at": late.occurred_at.isoformat(),
                    "model": SEED_MODEL,
                    "team": "search",
                    "user": "alice",
                    "prompt_tokens": 1_000_000,
                    "completion_tokens": 1_000_000,
                }
            ]
        },
    )
    assert r.json() == {"inserted": 1, "duplicates": 0, "expired": 0}
    assert client.post("/v1/rollup").status_code == 200
    assert client.post("/v1/rollup").status_code == 200
    weekly_after = client.get("/v1/usage/weekly", params={"from": "2026-W20"}).json()["rows"]
    week_of_cutoff = cutoff - timedelta(days=cutoff.weekday())

    def key(row: dict[str, Any]) -> tuple[str, ...]:
        return (row["week_start"], row["team"], row["user"], row["model"])

    b = {key(r): r for r in weekly_before}
    a = {key(r): r for r in weekly_after}
    changed = {k for k in a if a[k] != b.get(k)}
    target = (week_of_cutoff.isoformat(), "search", "alice", SEED_MODEL)
    assert changed == {target}
    assert a[target]["requests"] == b.get(target, {"requests": 0})["requests"] + 1
    assert Decimal(a[target]["cost_usd"]) == Decimal(
        b.get(target, {"cost_usd": "0"})["cost_usd"]
    ) + Decimal("0.30")
    # The partly purged days before the cutoff in that week kept their rows.
    day_rows = client.get(
        "/v1/usage",
        params={"period": "day", "from": week_of_cutoff.isoformat(), "group_by": ""},
    ).json()["rows"]
    purged_in_week = [
        e for e in events if week_of_cutoff <= e.occurred_at.astimezone(NY).date() < cutoff
    ]
    assert sum(r["requests"] for r in day_rows if r["period"] < cutoff.isoformat()) == len(
        purged_in_week
    )


def test_a_spool_replay_of_purged_events_stores_nothing(ny, tmp_path):
    db, _client, events = ny
    today = datetime.now(NY).date()
    cutoff = today - timedelta(days=30)
    purge(db, 30, actor="cli")
    purged = [e for e in events if e.occurred_at.astimezone(NY).date() < cutoff][:25]
    url = db.engine.url.render_as_string(hide_password=False)
    recorder = Recorder(url, spool_dir=tmp_path / "spool")
    try:
        for e in purged:
            recorder.record(
                model=e.model,
                prompt_tokens=e.prompt_tokens,
                completion_tokens=e.completion_tokens,
                occurred_at=e.occurred_at,
                event_id=str(e.id),
            )
        assert recorder.flush(timeout=30)
        stats = recorder.stats()
    finally:
        recorder.close()
    assert (stats.stored, stats.duplicates, stats.expired) == (0, 0, 25)
    assert all(d >= cutoff for d in raw_days(db))
    status = CliRunner().invoke(
        app, ["spool", "status", "--json", "--spool-dir", str(tmp_path / "spool")]
    )
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["totals"]["expired_events"] == 25


def test_the_cutoff_waits_for_the_rollup_and_never_moves_back(ny):
    db, client, events = ny
    today = datetime.now(NY).date()
    # A late event for 40 days ago, not rolled up yet: the purge rolls it up first.
    late = event(
        occurred_at=datetime.combine(today - timedelta(days=40), datetime.min.time(), NY)
        + timedelta(hours=12),
        team="ads",
    )
    store(db, [late])
    result = purge(db, 30, actor="cli")
    assert result.cutoff == today - timedelta(days=30)
    assert result.deleted == 1 + sum(
        1 for e in events if e.occurred_at.astimezone(NY).date() < result.cutoff
    )
    rows = client.get(
        "/v1/usage",
        params={"period": "day", "from": (today - timedelta(days=40)).isoformat(),
                "to": (today - timedelta(days=40)).isoformat(), "team": "ads", "group_by": ""},
    ).json()["rows"]  # fmt: skip
    expected = [e for e in events if e.team == "ads" and e.occurred_at.astimezone(NY).date()
                == today - timedelta(days=40)]  # fmt: skip
    assert rows[0]["requests"] == len(expected) + 1

    # A longer retention later purges nothing and keeps the cutoff.
    plan = plan_purge(db, 60)
    assert (plan.cutoff, plan.reason, plan.events) == (result.cutoff, "earlier purge", 0)
    again = purge(db, 60, actor="cli")
    assert (again.cutoff, again.deleted) == (result.cutoff, 0)

    with pytest.raises(PurgeError, match="at least 2 days"):
        purge(db, 1, actor="cli")
    r = CliRunner().invoke(app, ["purge", "--older-than-days", "1"])
    assert r.exit_code == 2


def test_a_lookup_still_due_holds_the_cutoff_back_and_an_overdue_one_does_not(ny):
    db, _client, _events = ny
    today = datetime.now(NY).date()
    day, older = today - timedelta(days=45), today - timedelta(days=50)

    def estimated(on: date, generation: str) -> EventRecord:
        return event(
            occurred_at=datetime.combine(on, datetime.min.time(), NY) + timedelta(hours=3),
            usage_source="estimated",
            generation_id=generation,
        )

    with db.engine.begin() as conn:  # due for 60 days, and overdue (the default window)
        insert_events(conn, [estimated(day, "gen-due")], load_price_book(conn), db.tz,
                      lookup_window=timedelta(days=60))  # fmt: skip
        insert_events(conn, [estimated(older, "gen-overdue")], load_price_book(conn), db.tz)
    result = purge(db, 30, actor="cli")
    assert (result.cutoff, plan_purge(db, 30).reason) == (day, "lookups")
    assert min(raw_days(db)) == day
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT generation_id, state FROM generation_lookups")).all()
    assert [tuple(r) for r in rows] == [("gen-due", "pending")]


def test_the_scheduled_purge_runs_as_the_scheduler(ny):
    from apscheduler.schedulers.background import BackgroundScheduler

    from meter.lifecycle.tasks import PURGE_JOB_ID, add_purge_job, purge_job

    db, client, events = ny
    scheduler = BackgroundScheduler()
    add_purge_job(scheduler, db, get_settings(raw_retention_days=30))
    assert scheduler.get_job(PURGE_JOB_ID).args == (db, 30)
    off = BackgroundScheduler()
    add_purge_job(off, db, get_settings())
    assert off.get_job(PURGE_JOB_ID) is None
    with pytest.raises(ValueError, match="raw_retention_days"):
        get_settings(raw_retention_days=1)

    purge_job(db, 30)
    cutoff = datetime.now(NY).date() - timedelta(days=30)
    gone = sum(1 for e in events if e.occurred_at.astimezone(NY).date() < cutoff)
    entries = client.get("/v1/audit", params={"action": "purge.*"}).json()["entries"]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("purge.finish", "scheduler"),
        ("purge.start", "scheduler"),
    ]
    assert entries[0]["details"] == {"cutoff": cutoff.isoformat(), "deleted": gone, "batches": 1}
