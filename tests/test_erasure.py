"""Erasing a user (SPEC section 10): the id becomes a pseudonym everywhere (or the events go),
team, model and global totals stay exact, budgets and bound keys go, the audit log says so
without the erased id, ingest refuses pseudonyms, and a replay of deleted events stays out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from meter import audit
from meter.api.app import create_app
from meter.cli import app as cli
from meter.db import models, settled
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.ids import uuid7
from meter.lifecycle.erasure import erase_user, pseudonym_of
from meter.pricing import SEED_MODEL
from meter.rollup import RollupBusy, lease, run_rollup
from meter.settings import Settings
from meter.weeks import load_timezone
from tests.conftest import DatabaseFactory

ADMIN_KEY = "env-admin-key-erasure-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OTHER_MODEL = "acme/big"  # $3 in, $15 out per 1M tokens (set by `populate`)
PER_MILLION = {
    SEED_MODEL: (Decimal("0.11"), Decimal("0.19")),
    OTHER_MODEL: (Decimal(3), Decimal(15)),
}
TAGS = {"feature": "chat", "env": "prod"}  # of her settled gateway calls
# Days in five weeks of two months (all in the past), so that days, weeks, months and tags all
# hold her.
DAYS = [
    date(2026, 11, 3),
    date(2026, 11, 4),
    date(2026, 11, 10),
    date(2026, 11, 18),
    date(2026, 11, 24),
    date(2026, 12, 1),
]
ALL = {"from": "2026-11-01", "to": "2026-12-31"}
USAGE_QUERIES = [
    {"period": "day", "from": "2026-11-01", "to": "2026-12-05"},
    {"period": "week", "from": "2026-W44", "to": "2026-W49"},
    {"period": "month", "from": "2026-11", "to": "2026-12"},
]


@dataclass
class Target:
    url: str
    db: Database


@pytest.fixture
def target(databases: DatabaseFactory) -> Target:
    url = databases.url()
    engine = make_engine(url)
    databases.engines.append(engine)
    return Target(url, Database(engine=engine, tz=load_timezone("UTC")))


@pytest.fixture
def client(target: Target) -> Any:
    settings = Settings(admin_key=SecretStr(ADMIN_KEY))
    with TestClient(create_app(settings, target.db, scheduler=False)) as c:
        yield c


def ev(user: str | None, team: str, day: date, model: str = SEED_MODEL, **fields: Any) -> dict:
    prompt, completion = fields.pop("tokens", (1000, 200))
    doc = {
        "id": str(uuid7()),
        "occurred_at": f"{day.isoformat()}T12:00:00Z",
        "model": model,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "team": team,
        **fields,
    }
    if user is not None:
        doc["user"] = user
    return doc


def cost(events: list[dict]) -> Decimal:
    """Exactly what meter must charge for these events."""
    total = Decimal(0)
    for e in events:
        inp, out = PER_MILLION[e["model"]]
        total += (e["prompt_tokens"] * inp + e["completion_tokens"] * out) / 1_000_000
    return total


def post(client: TestClient, events: list[dict]) -> dict:
    r = client.post("/v1/events", json={"events": events}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


@dataclass
class World:
    alice: list[dict]  # every event of alice, rolled up
    pending: list[dict]  # alice's events stored after the roll-up (marks pending)
    others: list[dict]
    budget_id: int
    team_budget_id: int
    key_id: int


def populate(client: TestClient, db: Database) -> World:
    """alice and bob in team search, carol in team ads, over five weeks and two models; a
    rolled-up tag; a user budget on alice and a team budget, both with alerts fired; a gateway
    key bound to alice; a gateway hold of hers; and alice's latest events not rolled up yet."""
    r = client.post(
        "/v1/prices",
        json={
            "model": OTHER_MODEL,
            "input_per_million_usd": "3",
            "output_per_million_usd": "15",
            "effective_from": "2026-01-01T00:00:00Z",
        },
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    assert client.post("/v1/tags", json={"key": "feature"}, headers=ADMIN).status_code == 201
    alice, others = [], []
    for i, day in enumerate(DAYS):
        alice.append(ev("alice", "search", day, tags={"feature": "chat"}, tokens=(1000 + i, 7)))
        alice.append(ev("alice", "search", day, OTHER_MODEL, tokens=(333, 77 + i)))
        alice.append(ev("alice", "ads", day, tags={"feature": "code"}, tokens=(5, 5)))
        others.append(ev("bob", "search", day, tags={"feature": "chat"}, tokens=(2000, 9)))
        others.append(ev("carol", "ads", day, OTHER_MODEL, tokens=(11, 13 + i)))
        others.append(ev(None, "search", day, tokens=(17, 19)))
    alice.append(ev("alice", "search", DAYS[0], status="error", usage_source="estimated"))
    assert post(client, alice + others) == {
        "inserted": len(alice + others),
        "duplicates": 0,
        "expired": 0,
    }
    r = client.post(
        "/v1/budgets",
        json={"scope": "user", "subject": "alice", "weekly_limit_usd": "0.000001"},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    budget_id = r.json()["id"]
    r = client.post(
        "/v1/budgets",
        json={"scope": "team", "subject": "search", "weekly_limit_usd": "0.000001"},
        headers=ADMIN,
    )
    team_budget_id = r.json()["id"]
    r = client.post(
        "/v1/keys", json={"role": "gateway", "team": "search", "user": "alice"}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    key_id = r.json()["id"]
    # Budgets that existed before these weeks: a budget is judged only for periods that end
    # after it was made (meter.budgets.evaluate), and DAYS lie in the past whatever the date.
    with db.engine.begin() as conn:
        conn.execute(sa.update(models.Budget).values(created_at=datetime(2026, 10, 1, tzinfo=UTC)))
    run_rollup(db)
    with db.engine.connect() as conn:
        fired = conn.execute(
            sa.select(models.Alert.budget_id, sa.func.count()).group_by(models.Alert.budget_id)
        ).all()
    assert {b for b, n in fired if n} == {budget_id, team_budget_id}
    # Her latest events, stored but not rolled up: their marks wait for the next roll-up.
    pending = [ev("alice", "search", DAYS[-1], tokens=(40, 4)), ev("alice", "ads", DAYS[-2])]
    post(client, pending)
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(models.GatewayHold).values(
                event_id=uuid7(),
                team="search",
                user="alice",
                model=SEED_MODEL,
                day=DAYS[-1],
                week_start=date(2026, 11, 30),
                state="held",
                amount_units=5,
                reserved_units=5,
                created_at=now,
            )
        )
    settled_hold(db, "alice", 11)
    return World(alice + pending, pending, others, budget_id, team_budget_id, key_id)


def settled_hold(db: Database, user: str, units: int) -> None:
    """A gateway call of `user`'s that ended, its cost in its group, as the gateway leaves it."""
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(models.GatewayHold).values(
                event_id=uuid7(),
                team="search",
                user=user,
                tags=TAGS,
                model=SEED_MODEL,
                day=DAYS[-1],
                week_start=date(2026, 11, 30),
                state="settled",
                amount_units=units,
                reserved_units=units * 10,
                created_at=datetime.now(UTC),
            )
        )
        settled.add(conn, DAYS[-1], "search", user, TAGS, units)


def settled_groups(db: Database) -> dict[str, int]:
    """The users' settled totals, once checked against the holds they add up."""
    with db.engine.connect() as conn:
        groups = settled.totals_by_group(conn)
        assert groups == settled.recount(conn)
    assert all(key[:2] == (DAYS[-1], "search") for key in groups)
    assert all(key[3] == settled.tags_key(TAGS) for key in groups)
    return {key[2]: units for key, units in groups.items()}


def dump(db: Database) -> str:
    """Every row of every table, as text."""
    lines = []
    with db.engine.connect() as conn:
        for table in models.Base.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)).all():
                lines.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(lines)


def usage_totals(client: TestClient, group_by: str) -> list[list[dict]]:
    """GET /v1/usage for days, weeks and months (and /v1/usage/weekly) without `as_of`."""
    out = []
    for q in USAGE_QUERIES:
        r = client.get("/v1/usage", params={**q, "group_by": group_by}, headers=ADMIN)
        assert r.status_code == 200, r.text
        out.append(r.json()["rows"])
    r = client.get(
        "/v1/usage/weekly",
        params={"from": "2026-W44", "to": "2026-W49", "group_by": group_by},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    out.append(r.json()["rows"])
    return out


def report(client: TestClient, user: str) -> dict:
    r = client.get(f"/v1/reports/users/{user}", params=ALL, headers=ADMIN)
    assert r.status_code == 200, r.text
    doc = dict(r.json())
    doc.pop("as_of")
    return doc


def team_cost(client: TestClient, team: str) -> Decimal:
    r = client.get(
        "/v1/usage",
        params={"period": "month", **_months(), "team": team, "group_by": "team"},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    return sum((Decimal(row["cost_usd"]) for row in r.json()["rows"]), Decimal(0))


def _months() -> dict[str, str]:
    return {"from": "2026-11", "to": "2026-12"}


def global_cost(client: TestClient) -> Decimal:
    r = client.get("/v1/reports/billing", params=ALL, headers=ADMIN)
    assert r.status_code == 200, r.text
    return Decimal(r.json()["total_cost_usd"])


def erase(client: TestClient, user: str, **params: Any) -> dict:
    r = client.delete(f"/v1/users/{user}", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


def secret_key(db: Database) -> str:
    with db.engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(models.Meta.value).where(models.Meta.key == "erasure_key")
            ).scalar_one()
        )


def test_erasure_replaces_alice_everywhere_and_keeps_every_total(
    target: Target, client: TestClient
) -> None:
    db = target.db
    world = populate(client, db)
    run_rollup(db)  # her pending events counted: the reports below are complete
    before_team = usage_totals(client, "team")
    her_report = report(client, "alice")
    assert Decimal(her_report["total_cost_usd"]) == cost(world.alice)
    total = global_cost(client)
    assert total == cost(world.alice + world.others)
    # More of her events after this roll-up: their marks must follow her to the pseudonym.
    late = [ev("alice", "search", DAYS[2], tokens=(12, 34))]
    post(client, late)

    out = erase(client, "alice")

    pseudonym = out["pseudonym"]
    assert pseudonym == pseudonym_of(secret_key(db), "alice")
    assert len(pseudonym) == len("erased-") + 16 and pseudonym.startswith("erased-")
    assert out["events"] == len(world.alice) + 1
    assert out["marks"] == 1 and out["holds"] == 2
    assert settled_groups(db) == {pseudonym: 11}  # her settled gateway calls' cost moved
    assert out["budgets_deleted"] == [world.budget_id]
    assert out["keys_deleted"] == [world.key_id]
    assert out["audit_entries"] == 2  # budget.create of her budget, key.create of her key
    assert out["delete_events"] is False
    assert "alice" not in dump(db)
    assert report(client, "alice")["lines"] == []
    assert report(client, "alice")["total_cost_usd"] == "0"
    # The report under the pseudonym is hers, to the last digit.
    run_rollup(db)
    assert usage_totals(client, "team")[:3] != before_team[:3]  # her late event counted now
    assert Decimal(report(client, pseudonym)["total_cost_usd"]) == cost(world.alice + late)
    assert global_cost(client) == total + cost(late)
    assert team_cost(client, "search") == cost(
        [e for e in world.alice + late + world.others if e["team"] == "search"]
    )
    # Her budget and its alerts are gone, the team's budget keeps its alert as it was.
    assert client.get(f"/v1/budgets/{world.budget_id}", headers=ADMIN).status_code == 404
    keys = client.get("/v1/keys", headers=ADMIN).json()["keys"]
    assert world.key_id not in [k["id"] for k in keys]
    with db.engine.connect() as conn:
        alerts = conn.execute(sa.select(models.Alert.budget_id)).scalars().all()
    assert alerts and set(alerts) == {world.team_budget_id}
    # The audit log: start and finish, the pseudonym as target, her entries rewritten.
    entries = client.get("/v1/audit", params={"action": "user.erase.*"}, headers=ADMIN).json()
    finish, start = entries["entries"]
    assert (start["action"], start["target"], start["actor"]) == (
        "user.erase.start",
        pseudonym,
        "admin-env",
    )
    assert start["details"] == {"delete_events": False}
    assert (finish["action"], finish["target"]) == ("user.erase.finish", pseudonym)
    assert finish["details"]["events"] == len(world.alice) + 1
    created = client.get("/v1/audit", params={"action": "budget.create"}, headers=ADMIN).json()
    subjects = {e["details"]["subject"] for e in created["entries"]}
    assert subjects == {pseudonym, "search"}


def test_totals_are_unchanged_to_the_last_digit(target: Target, client: TestClient) -> None:
    db = target.db
    world = populate(client, db)
    run_rollup(db)
    tags = {"group_by": "team,model,tag:feature"}
    before = (
        usage_totals(client, "team"),
        usage_totals(client, "model"),
        usage_totals(client, "team,model"),
        client.get("/v1/usage", params={**USAGE_QUERIES[0], **tags}, headers=ADMIN).json(),
        global_cost(client),
    )
    her = report(client, "alice")
    pseudonym = erase(client, "alice")["pseudonym"]
    after = (
        usage_totals(client, "team"),
        usage_totals(client, "model"),
        usage_totals(client, "team,model"),
        client.get("/v1/usage", params={**USAGE_QUERIES[0], **tags}, headers=ADMIN).json(),
        global_cost(client),
    )
    assert after[:3] == before[:3]
    assert after[3]["rows"] == before[3]["rows"]
    assert after[4] == before[4] == cost(world.alice + world.others)
    assert report(client, pseudonym)["lines"] == her["lines"]
    # A roll-up afterwards (every group recounted from the renamed events) agrees.
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO rollup_dirty (week_start, team, "user", model, n) '
                'SELECT DISTINCT week_start, team, "user", model, 1 FROM events'
            )
        )
    run_rollup(db)
    assert usage_totals(client, "team,model") == before[2]
    assert report(client, pseudonym)["lines"] == her["lines"]


def test_a_second_erasure_adds_her_new_rows_to_the_pseudonyms(
    target: Target, client: TestClient
) -> None:
    db = target.db
    first = [ev("alice", "search", d, tags={"feature": "chat"}) for d in DAYS]
    assert client.post("/v1/tags", json={"key": "feature"}, headers=ADMIN).status_code == 201
    post(client, first)
    settled_hold(db, "alice", 10**15 + 1)
    run_rollup(db)
    pseudonym = erase(client, "alice")["pseudonym"]
    # She comes back: events in the same days, teams and models as the pseudonym's rows.
    again = [ev("alice", "search", d, tags={"feature": "chat"}, tokens=(7, 3)) for d in DAYS]
    post(client, again)
    settled_hold(db, "alice", 2)
    settled_hold(db, "bob", 3)
    run_rollup(db)
    before = usage_totals(client, "team,model")
    out = erase(client, "alice")
    assert out["pseudonym"] == pseudonym
    assert settled_groups(db) == {pseudonym: 10**15 + 3, "bob": 3}  # added to the pseudonym's
    assert out["events"] == len(again)
    assert out["daily_rows"] == len(DAYS) and out["tag_rows"] == len(DAYS)
    assert out["weekly_rows"] == len({d - timedelta(days=d.weekday()) for d in DAYS})
    assert out["monthly_rows"] == len({d.replace(day=1) for d in DAYS})
    assert usage_totals(client, "team,model") == before
    rows = client.get(
        "/v1/usage", params={**USAGE_QUERIES[0], "group_by": "user,tag:feature"}, headers=ADMIN
    ).json()["rows"]
    assert {r["user"] for r in rows} == {pseudonym}
    assert sum(r["requests"] for r in rows) == len(first) + len(again)
    assert Decimal(report(client, pseudonym)["total_cost_usd"]) == cost(first + again)
    assert "alice" not in dump(db)


def test_erasing_a_user_without_data_works(target: Target, client: TestClient) -> None:
    post(client, [ev("bob", "search", DAYS[0])])
    before = dump(target.db)
    out = erase(client, "nobody")
    assert out["pseudonym"] == pseudonym_of(secret_key(target.db), "nobody")
    assert {k: v for k, v in out.items() if k not in ("pseudonym", "delete_events")} == {
        "events": 0,
        "daily_rows": 0,
        "tag_rows": 0,
        "weekly_rows": 0,
        "monthly_rows": 0,
        "marks": 0,
        "holds": 0,
        "alerts": 0,
        "audit_entries": 0,
        "budgets_deleted": [],
        "keys_deleted": [],
    }
    # Twice: the same key, the same pseudonym; the audit log has both.
    assert erase(client, "nobody")["pseudonym"] == out["pseudonym"]
    entries = client.get("/v1/audit", params={"action": "user.erase.*"}, headers=ADMIN).json()
    assert [e["action"] for e in entries["entries"]] == [
        "user.erase.finish",
        "user.erase.start",
        "user.erase.finish",
        "user.erase.start",
    ]
    assert "bob" in before and "nobody" not in dump(target.db)


def test_delete_events_drops_her_cost_exactly_and_a_replay_stays_out(
    target: Target, client: TestClient
) -> None:
    db = target.db
    world = populate(client, db)
    search_before = team_cost(client, "search")  # her pending events are not rolled up yet
    ads_before = team_cost(client, "ads")
    rolled = [e for e in world.alice if e not in world.pending]
    total_before = global_cost(client)
    assert total_before == cost(rolled + world.others)

    out = erase(client, "alice", delete_events="true")

    assert out["delete_events"] is True
    assert out["events"] == len(world.alice)
    assert out["budgets_deleted"] == [world.budget_id]
    assert out["keys_deleted"] == [world.key_id]
    in_search = [e for e in rolled if e["team"] == "search"]
    in_ads = [e for e in rolled if e["team"] == "ads"]
    assert team_cost(client, "search") == search_before - cost(in_search)
    assert team_cost(client, "ads") == ads_before - cost(in_ads)
    assert global_cost(client) == total_before - cost(rolled) == cost(world.others)
    assert report(client, "alice")["lines"] == []
    assert report(client, out["pseudonym"])["lines"] == []
    assert "alice" not in dump(db)
    assert settled_groups(db) == {}  # her settled gateway calls' cost went with her events
    with db.engine.connect() as conn:
        erased = set(conn.execute(sa.select(models.ErasedEvent.id)).scalars())
        users = set(conn.execute(sa.select(models.Event.user).distinct()).scalars())
    assert erased == {uuid.UUID(e["id"]) for e in world.alice}
    assert users == {"bob", "carol", ""}
    # A replay of her events inserts nothing, alone or beside a new event.
    assert post(client, world.alice) == {
        "inserted": 0,
        "duplicates": len(world.alice),
        "expired": 0,
    }
    fresh = ev("bob", "search", DAYS[0])
    assert post(client, [*world.alice[:3], fresh]) == {"inserted": 1, "duplicates": 3, "expired": 0}
    run_rollup(db)
    assert global_cost(client) == cost([*world.others, fresh])
    assert report(client, "alice")["lines"] == []


def test_delete_events_after_a_pseudonym_rewrite_deletes_both(
    target: Target, client: TestClient
) -> None:
    db = target.db
    first = [ev("alice", "search", DAYS[0]), ev("alice", "ads", DAYS[1])]
    post(client, [*first, ev("bob", "search", DAYS[0])])
    run_rollup(db)
    pseudonym = erase(client, "alice")["pseudonym"]
    later = [ev("alice", "search", DAYS[2])]
    post(client, later)
    out = erase(client, "alice", delete_events="true")
    assert out["events"] == 3
    assert report(client, pseudonym)["lines"] == []
    run_rollup(db)
    assert global_cost(client) == cost([ev("bob", "search", DAYS[0])])


def test_ingest_refuses_pseudonyms(client: TestClient) -> None:
    r = client.post(
        "/v1/events",
        json={"events": [ev("bob", "search", DAYS[0]), ev("erased-x", "search", DAYS[0])]},
        headers=ADMIN,
    )
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith("events[1].user: must not start with 'erased-'")
    assert post(client, [ev("erasedx", "search", DAYS[0])]) == {
        "inserted": 1,
        "duplicates": 0,
        "expired": 0,
    }


def test_only_an_admin_key_erases(target: Target, client: TestClient) -> None:
    post(client, [ev("alice", "search", DAYS[0])])
    for role, team in (("read", None), ("ingest", None), ("read", "search")):
        body = {"role": role} if team is None else {"role": role, "team": team}
        key = client.post("/v1/keys", json=body, headers=ADMIN).json()["key"]
        r = client.delete("/v1/users/alice", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403, r.text
    assert client.delete("/v1/users/alice").status_code == 401
    r = client.delete("/v1/users/erased-0123456789abcdef", headers=ADMIN)
    assert r.status_code == 422 and r.json()["message"].startswith("user: ")
    with target.db.engine.connect() as conn:
        assert conn.execute(sa.select(models.Event.user)).scalars().all() == ["alice"]
    r = client.delete("/v1/users/alice", params={"delete_events": "maybe"}, headers=ADMIN)
    assert r.status_code == 422


def test_a_user_id_with_a_slash(target: Target, client: TestClient) -> None:
    post(client, [ev("org/alice", "search", DAYS[0])])
    run_rollup(target.db)
    out = erase(client, "org/alice")
    assert out["events"] == 1 and out["weekly_rows"] == 1 and out["monthly_rows"] == 1
    assert "org/alice" not in dump(target.db)


def test_erasure_waits_for_the_rollup_lease(target: Target) -> None:
    db = target.db
    lease.acquire(db, "someone-else", 0)
    with pytest.raises(RollupBusy):
        erase_user(db, "alice", actor=audit.CLI, wait_seconds=0.2)
    lease.release(db, "someone-else", None)
    assert erase_user(db, "alice", actor=audit.CLI).events == 0


def test_a_failed_erasure_changes_nothing_and_is_logged_as_aborted(
    target: Target, client: TestClient
) -> None:
    db = target.db
    post(client, [ev("alice", "search", DAYS[0])])
    with db.engine.begin() as conn:  # break the table the deletion writes into
        conn.exec_driver_sql("DROP TABLE erased_events")
    with pytest.raises(sa.exc.DBAPIError):
        erase_user(db, "alice", actor=audit.CLI, delete_events=True)
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(models.Event.user)).scalars().all() == ["alice"]
        actions = conn.execute(
            sa.select(models.AuditEntry.action, models.AuditEntry.target).order_by(
                models.AuditEntry.id
            )
        ).all()
        holder = conn.execute(sa.select(models.RollupState.holder)).scalar()
    pseudonym = pseudonym_of(secret_key(db), "alice")
    assert [tuple(a) for a in actions] == [
        ("user.erase.start", pseudonym),
        ("user.erase.abort", pseudonym),
    ]
    assert holder is None  # the lease was given back


def test_the_cli_erases_after_confirmation(
    target: Target, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = target.db
    world = populate(client, db)
    monkeypatch.setenv("METER_DATABASE_URL", target.url)
    runner = CliRunner()
    result = runner.invoke(cli, ["users", "erase", "alice"], input="n\n")
    assert result.exit_code == 1, result.output
    assert "Aborted" in result.output
    assert "alice" in dump(db)
    result = runner.invoke(cli, ["users", "erase", "alice"], input="y\n")
    assert result.exit_code == 0, result.output
    pseudonym = pseudonym_of(secret_key(db), "alice")
    assert f"user erased; pseudonym {pseudonym}" in result.output
    assert f"events renamed: {len(world.alice)}" in result.output
    assert f"budgets deleted: 1 ({world.budget_id})" in result.output
    assert f"gateway keys deleted: 1 ({world.key_id})" in result.output
    assert "alice" not in dump(db)
    entries = client.get("/v1/audit", params={"action": "user.erase.*"}, headers=ADMIN).json()
    assert [(e["action"], e["actor"]) for e in entries["entries"]] == [
        ("user.erase.finish", "cli"),
        ("user.erase.start", "cli"),
    ]
    # --yes asks nothing; --delete-events deletes.
    result = runner.invoke(cli, ["users", "erase", "alice", "--yes", "--delete-events"])
    assert result.exit_code == 0, result.output
    assert f"events deleted: {len(world.alice)}" in result.output
    assert global_cost(client) == cost(world.others)
    result = runner.invoke(cli, ["users", "erase", "erased-abc", "--yes"])
    assert result.exit_code == 2 and "already the pseudonym" in result.output


def test_alert_payloads_and_audit_details_naming_her_are_rewritten(
    target: Target, client: TestClient
) -> None:
    """Whatever names her, in any JSON value: here a non-ASCII id, which the audit log's JSON
    stores escaped (zo\\u00eb) and alert payloads store as it is."""
    db = target.db
    user = "zoë_%"  # LIKE's wildcards, as data
    r = client.post(
        "/v1/budgets",
        json={"scope": "team", "subject": "search", "weekly_limit_usd": "1"},
        headers=ADMIN,
    )
    budget_id = r.json()["id"]
    payload = '{"type":"budget.threshold_crossed","subject":"search","note":["zoë_%",{"zoë_%":1}]}'
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(models.Alert).values(
                id="alert-1",
                budget_id=budget_id,
                type="budget.threshold_crossed",
                week_start=date(2026, 11, 30),
                threshold="0.5",
                spend_units=1,
                limit_units=2,
                fired_at=datetime.now(UTC),
                payload=payload,
            )
        )
        audit.record(conn, audit.CLI, "test.entry", user, {"who": [user, "zoë"], "n": 1})
        audit.record(conn, audit.CLI, "test.other", "zoë", {"who": "zoë_%x"})
    out = erase(client, user)
    pseudonym = out["pseudonym"]
    assert (out["alerts"], out["audit_entries"]) == (1, 1)
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(models.Alert.payload)).scalar_one()
    assert stored == payload.replace('"zoë_%"', f'"{pseudonym}"')
    entries = client.get("/v1/audit", params={"action": "test.*"}, headers=ADMIN).json()
    assert [(e["target"], e["details"]) for e in entries["entries"]] == [
        ("zoë", {"who": "zoë_%x"}),
        (pseudonym, {"who": [pseudonym, "zoë"], "n": 1}),
    ]


def test_the_recorder_and_the_gateway_refuse_pseudonyms_too() -> None:
    from meter._exceptions import InvalidRequest
    from meter.gateway.request import parse_request
    from meter.recorder.validate import build_event

    rest = dict.fromkeys(
        ("team", "occurred_at", "event_id", "tags", "cached_tokens", "reasoning_tokens",
         "latency_ms", "ttft_ms", "generation_id", "provider_cost_usd")
    )  # fmt: skip
    call = {"model": "m/x", "prompt_tokens": 1, "completion_tokens": 1, "status": "ok",
            "usage_source": "provider", **rest}  # fmt: skip
    with pytest.raises(InvalidRequest, match="user: must not start with 'erased-'") as info:
        build_event(user="erased-0a", **call)
    assert info.value.param == "user"
    assert build_event(user="erasedx", **call).user == "erasedx"
    body = b'{"model": "m/x", "messages": [{"role": "user", "content": "hi"}], "user": "erased-1"}'
    with pytest.raises(InvalidRequest, match="erased user") as info:
        parse_request("chat", body, lambda _model: None)
    assert info.value.param == "user"
