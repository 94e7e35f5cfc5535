"""`meter export events` and `GET /v1/export/events`: every event once, fields that round-trip,
exact money, local dates, keyset pages, and an export loaded into a fresh meter giving the same
weekly totals."""

from __future__ import annotations

import csv
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meter.api.routes.events import EventIn
from meter.cli import app as cli
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.events import EventRecord
from meter.export import FULL_FIELDS, INGEST_FIELDS, event_filter, pages
from meter.rollup import run_rollup
from meter.weeks import load_timezone
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.test_audit import ADMIN_KEY, bearer, client_for
from tests.test_rollup_helpers import store

N = 240
START = datetime(2026, 10, 26, 3, 0, tzinfo=UTC)


def varied_events(n: int = N) -> list[EventRecord]:
    """Events of every shape: users or none, teams, tags, statuses, provider costs with 12
    decimals, an unpriced model, and several sharing one occurred_at (keyset ties)."""
    events = []
    for i in range(n):
        at = START + timedelta(hours=7 * (i // 3), microseconds=i % 2)  # threes share a time
        events.append(
            event(
                id=uuid.UUID(int=(0x0190_0000_0000_7000_8000_0000_0000_0000 + (n - i) * 977)),
                occurred_at=at,
                model="acme/unpriced" if i % 11 == 0 else "mistralai/mistral-7b-instruct-v0.1",
                prompt_tokens=1_000 + i * 37,
                completion_tokens=i * 13,
                user=None if i % 5 == 0 else f"user-{i % 4}",
                team=("search", "ads", None)[i % 3],
                tags={"feature": f"f{i % 2}", "é": 'ü,"q"\n'} if i % 4 == 0 else None,
                status=("ok", "error", "cancelled", "incomplete")[i % 4],
                usage_source=("provider", "estimated", "none")[i % 3],
                cached_tokens=i if i % 2 else None,
                reasoning_tokens=i * 2 if i % 3 == 1 else None,
                latency_ms=100 + i if i % 2 == 0 else None,
                ttft_ms=10 + i if i % 6 == 0 else None,
                generation_id=f"gen-{i}" if i % 7 == 0 else None,
                provider_cost_usd=Decimal(f"0.{i:012d}") if i % 3 == 0 else None,
            )
        )
    return events


def invoke(url: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.setenv("METER_DATABASE_URL", url)
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def api_events(db: Database) -> dict[str, dict[str, Any]]:
    """Every event as GET /v1/events shows it, by id."""
    out: dict[str, dict[str, Any]] = {}
    with client_for(db) as client:
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            body = client.get("/v1/events", params=params, headers=bearer(ADMIN_KEY)).json()
            out.update({e["id"]: e for e in body["events"]})
            cursor = body["next_cursor"]
            if cursor is None:
                return out


@pytest.fixture
def source(databases: DatabaseFactory) -> tuple[str, Database]:
    url = databases.url()
    engine = make_engine(url)
    databases.engines.append(engine)
    db = Database(engine=engine, tz=load_timezone("UTC"))
    assert store(db, varied_events()) == N
    return url, db


def test_the_ingest_fields_are_exactly_those_of_post_v1_events() -> None:
    assert tuple(EventIn.model_fields) == INGEST_FIELDS


def test_jsonl_export_has_every_event_once_with_the_api_fields(
    source: tuple[str, Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, db = source
    out = tmp_path / "events.jsonl"
    result = invoke(url, monkeypatch, "export", "events", "--output", str(out))
    assert f"exported {N} events" in result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == N
    docs = [json.loads(line) for line in lines]
    assert [d["id"] for d in docs] == [
        str(e.id) for e in sorted(varied_events(), key=lambda e: (e.occurred_at, e.id))
    ]
    assert all(tuple(d) == FULL_FIELDS for d in docs)
    assert {d["id"]: d for d in docs} == api_events(db)
    by_id = {d["id"]: d for d in docs}
    third = by_id[str(varied_events()[3].id)]
    assert third["provider_cost_usd"] == "0.000000000003"  # exact, plain notation
    priced = [d for d in docs if d["cost_usd"] is not None]
    assert all(
        Decimal(d["cost_usd"]) == Decimal(d["input_cost_usd"]) + Decimal(d["output_cost_usd"])
        for d in priced
    )
    assert sum(d["cost_usd"] is None for d in docs) == len([i for i in range(N) if i % 11 == 0])


def test_for_ingest_into_a_fresh_meter_gives_the_same_weekly_totals(
    source: tuple[str, Database],
    databases: DatabaseFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, db = source
    out = tmp_path / "events.jsonl"
    invoke(url, monkeypatch, "export", "events", "--for-ingest", "-o", str(out))
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == N
    docs = [json.loads(line) for line in lines]
    assert all(set(d) <= set(INGEST_FIELDS) for d in docs)
    assert all(EventRecord.from_wire(d) == e for d, e in zip(docs, sorted(
        varied_events(), key=lambda e: (e.occurred_at, e.id)), strict=True))  # fmt: skip

    fresh = databases.database()
    with client_for(fresh) as client:
        for i in range(0, N, 100):
            r = client.post(
                "/v1/events", json={"events": docs[i : i + 100]}, headers=bearer(ADMIN_KEY)
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"inserted": len(docs[i : i + 100]), "duplicates": 0, "expired": 0}
    run_rollup(db)
    run_rollup(fresh)

    def weekly(target: Database) -> list[dict[str, Any]]:
        with client_for(target) as client:
            body = client.get(
                "/v1/usage/weekly",
                params={"from": "2026-W40", "to": "2027-W10"},
                headers=bearer(ADMIN_KEY),
            ).json()
        return list(body["rows"])

    before, after = weekly(db), weekly(fresh)
    assert len(before) > 10
    assert after == before
    assert api_events(fresh) == api_events(db)  # every field, costs included


def test_csv_has_a_header_and_exact_money(
    source: tuple[str, Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, db = source
    out = tmp_path / "events.csv"
    invoke(url, monkeypatch, "export", "events", "--format", "csv", "-o", str(out))
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == FULL_FIELDS
    assert len(rows) == N + 1
    api = api_events(db)
    for row in rows[1:]:
        doc = dict(zip(FULL_FIELDS, row, strict=True))
        want = api[doc["id"]]
        for name in ("provider_cost_usd", "input_cost_usd", "output_cost_usd", "cost_usd"):
            assert doc[name] == (want[name] or "")
        assert doc["tags"] == (
            "" if want["tags"] is None else json.dumps(want["tags"], ensure_ascii=False)
        )
        assert json.loads(doc["tags"] or "null") == want["tags"]
        assert doc["prompt_tokens"] == str(want["prompt_tokens"])
    ingest = invoke(url, monkeypatch, "export", "events", "--format", "csv", "--for-ingest").stdout
    header = ingest.splitlines()[0]
    assert tuple(header.split(",")) == INGEST_FIELDS


def test_local_dates_inclusive_and_team(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = databases.url(timezone="America/New_York")
    monkeypatch.setenv("METER_TIMEZONE", "America/New_York")
    db = Database(engine=make_engine(url), tz=load_timezone("America/New_York"))
    databases.engines.append(db.engine)
    # New York is UTC-5 in November: local 2026-11-02 is [05:00Z Nov 2, 05:00Z Nov 3).
    edges = {
        "before": datetime(2026, 11, 2, 4, 59, 59, 999999, tzinfo=UTC),
        "first": datetime(2026, 11, 2, 5, 0, tzinfo=UTC),
        "last": datetime(2026, 11, 4, 4, 59, 59, 999999, tzinfo=UTC),
        "after": datetime(2026, 11, 4, 5, 0, tzinfo=UTC),
    }
    made = {name: event(occurred_at=at, team="search") for name, at in edges.items()}
    other = event(occurred_at=edges["first"], team="ads")
    store(db, [*made.values(), other])

    def ids(*args: str) -> list[str]:
        out = invoke(url, monkeypatch, "export", "events", *args).stdout
        return [json.loads(line)["id"] for line in out.splitlines()]

    name_of = {str(e.id): n for n, e in made.items()} | {str(other.id): "ads"}
    got = ids("--from", "2026-11-02", "--to", "2026-11-03")
    assert sorted(name_of[i] for i in got) == ["ads", "first", "last"]
    got = ids("--from", "2026-11-02", "--to", "2026-11-03", "--team", "search")
    assert [name_of[i] for i in got] == ["first", "last"]
    assert [name_of[i] for i in ids("--to", "2026-11-01")] == ["before"]
    assert [name_of[i] for i in ids("--from", "2026-11-04")] == ["after"]
    result = CliRunner().invoke(
        cli, ["export", "events", "--from", "2026-11-03", "--to", "2026-11-02"]
    )
    assert result.exit_code == 2 and "--to" in result.output
    result = CliRunner().invoke(cli, ["export", "events", "--from", "02/11/2026"])
    assert result.exit_code == 2 and "--from" in result.output


def test_pages_are_keyset_pages_that_miss_and_repeat_nothing(source: tuple[str, Database]) -> None:
    _, db = source
    flt = event_filter(db.tz, None, None, None)
    got = [(r.occurred_at, r.id) for page in pages(db, flt, page_size=7) for r in page]
    assert len(got) == N and got == sorted(got)
    sizes = [len(page) for page in pages(db, flt, page_size=7)]
    assert sizes == [7] * (N // 7) + ([N % 7] if N % 7 else [])
    filtered = event_filter(db.tz, date(2026, 10, 27), date(2026, 10, 28), "ads")
    rows = [r for page in pages(db, filtered, page_size=2) for r in page]
    assert rows and all(r.team == "ads" for r in rows)
    assert all(date(2026, 10, 27) <= r.occurred_at.date() <= date(2026, 10, 28) for r in rows)


def test_get_v1_export_events_streams_ndjson(
    source: tuple[str, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, db = source
    cli_lines = invoke(url, monkeypatch, "export", "events", "--team", "ads").stdout.splitlines()
    cli_ingest = invoke(
        url, monkeypatch, "export", "events", "--for-ingest", "--from", "2026-11-01"
    ).stdout.splitlines()
    with client_for(db) as client:
        client.headers.update(bearer(ADMIN_KEY))
        with client.stream("GET", "/v1/export/events", params={"team": "ads"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-ndjson"
            lines = list(r.iter_lines())
        assert lines == cli_lines and len(lines) == N // 3
        r = client.get("/v1/export/events", params={"for_ingest": "true", "from": "2026-11-01"})
        assert r.text.splitlines() == cli_ingest
        assert 0 < len(cli_ingest) < N
        assert client.get("/v1/export/events", params={"from": "2027-01-01"}).text == ""
        everything = {"from": "0001-01-01", "to": "9999-12-31"}  # the calendar's ends: no bound
        r = client.get("/v1/export/events", params=everything)
        assert r.status_code == 200 and len(r.text.splitlines()) == N
        r = client.get("/v1/export/events", params={"from": "2026-11-02", "to": "2026-11-01"})
        assert r.status_code == 422 and "to" in r.text
        r = client.get("/v1/export/events", params={"from": "yesterday"})
        assert r.status_code == 422 and "from" in r.text
        assert client.get("/v1/export/events", params={"tema": "x"}).status_code == 422
        with db.engine.begin() as conn:
            from meter.keys import create_key

            _, reader, _ = create_key(conn, "read", None, "reader")
        assert client.get("/v1/export/events", headers=bearer(reader)).status_code == 403
