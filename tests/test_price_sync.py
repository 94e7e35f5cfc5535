"""Price sync (SPEC section 9) against a real upstream on loopback, on SQLite and PostgreSQL:
`meter prices sync` shows the difference and writes nothing, `--apply` and `POST
/v1/prices/sync` add versions effective now, events before keep their exact cost."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meter import audit
from meter.api.app import create_app
from meter.cli import app as cli
from meter.db import models
from meter.db.ledger import insert_events, load_price_book
from meter.db.prices import add_price, list_prices
from meter.db.session import Database
from meter.keys import create_key
from meter.mock_upstream import MODELS_ENTRY, MockUpstream, default_catalogue, running
from meter.money import render_usd
from meter.pricing import SEED_MODEL, make_price
from meter.settings import get_settings
from tests.factories import event

UPSTREAM_KEY = "sk-or-sync-test-key"
EARLIER = datetime(2026, 1, 1, tzinfo=UTC)

# OpenRouter's shape: USD per token as strings. The seed model's output price and context
# length change; one new model, a free one; then everything sync must report and skip.
CATALOGUE: dict[str, Any] = {
    "data": [
        {
            "id": SEED_MODEL,
            "context_length": 8192,
            "pricing": {"prompt": "0.00000011", "completion": "0.00000025", "request": "0"},
        },
        {
            "id": "acme/new",
            "context_length": 32000,
            "pricing": {
                "prompt": "1e-7",
                "completion": "0.0000003",
                "request": "0.005",
                "web_search": "0.004",
                "image": "0",
                "input_cache_read": "2.5E-8",
            },
        },
        {"id": "acme/free", "context_length": 8000, "pricing": {"prompt": "0", "completion": "0"}},
        {
            "id": "acme/same",
            "context_length": 4000,
            "pricing": {"prompt": "2e-6", "completion": "4e-6"},
        },
        {
            "id": "acme/variable",
            "context_length": 128000,
            "pricing": {"prompt": "-1", "completion": "-1"},
        },
        {
            "id": "acme/tiered",
            "context_length": 1000000,
            "pricing": {
                "prompt": "0.00000125",
                "completion": "0.00001",
                "overrides": [{"min_prompt_tokens": 200000, "prompt": "0.0000025"}],
            },
        },
        {"id": "acme/tiny", "pricing": {"prompt": "1e-13", "completion": "0.0000001"}},
        {"id": "acme/broken", "pricing": {"prompt": "cheap", "completion": "0.000001"}},
        {"name": "no id", "pricing": {"prompt": "0.000001", "completion": "0.000001"}},
    ]
}

EXPECTED_DIFF: dict[str, Any] = {
    "model": None,
    "listed": 9,
    "unchanged": 1,
    "new": [
        {
            "model": "acme/free",
            "input_per_million_usd": "0",
            "output_per_million_usd": "0",
            "context_length": 8000,
        },
        {
            "model": "acme/new",
            "input_per_million_usd": "0.1",
            "output_per_million_usd": "0.3",
            "context_length": 32000,
        },
    ],
    "changed": [
        {
            "model": SEED_MODEL,
            "old_input_per_million_usd": "0.11",
            "new_input_per_million_usd": "0.11",
            "old_output_per_million_usd": "0.19",
            "new_output_per_million_usd": "0.25",
            "old_context_length": 4096,
            "new_context_length": 8192,
            "old_effective_from": "2023-09-28T00:00:00Z",
        }
    ],
    "gone": [
        {
            "model": "acme/retired",
            "input_per_million_usd": "5",
            "output_per_million_usd": "15",
            "context_length": None,
            "effective_from": "2026-01-01T00:00:00Z",
        },
    ],
    "unpriced_components": [
        {"model": "acme/new", "component": "input_cache_read", "listed_price_usd": "0.000000025"},
        {"model": "acme/new", "component": "request", "listed_price_usd": "0.005"},
        {"model": "acme/new", "component": "web_search", "listed_price_usd": "0.004"},
    ],
    "skipped": [
        {
            "model": "acme/broken",
            "problem": "malformed",
            "reason": "pricing.prompt: 'cheap' is not a number",
        },
        {
            "model": "acme/tiered",
            "problem": "conditional",
            "reason": "conditional prices (overrides): not applied",
        },
        {
            "model": "acme/tiny",
            "problem": "too_fine",
            "reason": "pricing.prompt: 0.0000000000001 USD a token is finer than 1e-12 USD",
        },
        {
            "model": "acme/variable",
            "problem": "variable",
            "reason": "variable price (-1): kept unpriced",
        },
        {"model": "data[8]", "problem": "malformed", "reason": "no model id"},
    ],
}
APPLIED = [  # what --apply adds, effective from `as_of`
    {
        "model": "acme/free",
        "input_per_million_usd": "0",
        "output_per_million_usd": "0",
        "context_length": 8000,
    },
    {
        "model": "acme/new",
        "input_per_million_usd": "0.1",
        "output_per_million_usd": "0.3",
        "context_length": 32000,
    },
    {
        "model": SEED_MODEL,
        "input_per_million_usd": "0.11",
        "output_per_million_usd": "0.25",
        "context_length": 8192,
    },
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockUpstream, str]]:
    with running(MockUpstream()) as pair:
        yield pair


@pytest.fixture
def mock(upstream: tuple[MockUpstream, str]) -> MockUpstream:
    upstream[0].reset()
    upstream[0].catalogue = json.loads(json.dumps(CATALOGUE))
    return upstream[0]


@pytest.fixture
def book(db: Database) -> Database:
    """The seed price, a model the catalogue no longer lists, and one listed at the same price."""
    with db.engine.begin() as conn:
        add_price(conn, make_price("acme/retired", "5", "15", EARLIER))
        add_price(conn, make_price("acme/same", "2", "4", EARLIER, 4000))
    return db


def prices_stored(db: Database) -> list[tuple[str, int, int, datetime, int | None]]:
    with db.engine.connect() as conn:
        return [
            (p.model, p.input_units, p.output_units, p.effective_from, p.context_length)
            for p in list_prices(conn)
        ]


def store(db: Database, *events: Any) -> None:
    with db.engine.begin() as conn:
        insert_events(conn, list(events), load_price_book(conn), db.tz)


def event_costs(db: Database) -> dict[str, tuple[str | None, bool]]:
    """Each event's exact cost by its `user` (the test's label), and whether it is priced."""
    e = models.Event
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(e.user, e.input_cost_units, e.output_cost_units, e.price_id)
        ).all()
    out = {}
    for r in rows:
        cost = None if r.input_cost_units is None else r.input_cost_units + r.output_cost_units
        out[r.user] = (render_usd(cost), r.price_id is not None)
    return out


def without_as_of(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("as_of", "applied")}


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def run(
    book: Database, upstream: tuple[MockUpstream, str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    monkeypatch.setenv("METER_DATABASE_URL", book.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("METER_UPSTREAM_BASE_URL", upstream[1])
    monkeypatch.setenv("OPENROUTER_API_KEY", UPSTREAM_KEY)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli, ["prices", "sync", *args], catch_exceptions=False)

    return invoke


def test_sync_prints_the_difference_and_writes_nothing(
    run: Callable[..., Any], book: Database, mock: MockUpstream
) -> None:
    before = prices_stored(book)
    r = run()
    assert r.exit_code == 1, r.output  # differences to apply
    out = r.stdout
    assert (
        "9 listed: 2 new, 1 changed, 1 unchanged, 5 skipped; 1 in the book no longer listed" in out
    )
    assert "acme/new" in out and "0.1" in out and "32000" in out
    assert "0.19 -> 0.25" in out and "4096 -> 8192" in out  # per 1M tokens, old -> new
    assert "acme/retired" in out and "Their prices stay in the book." in out
    assert "web_search" in out and "0.004" in out
    for reason in ("variable price (-1)", "overrides", "finer than 1e-12 USD", "'cheap' is not"):
        assert reason in out
    assert "nothing written" in out and "--apply" in out
    assert prices_stored(book) == before
    # The catalogue was read with the server's key as bearer.
    assert [(r.path, r.headers["authorization"]) for r in mock.requests] == [
        ("/v1/models", f"Bearer {UPSTREAM_KEY}")
    ]


def test_sync_json_is_the_api_shape_with_exact_decimal_strings(
    run: Callable[..., Any], mock: MockUpstream
) -> None:
    r = run("--format", "json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert without_as_of(doc) == EXPECTED_DIFF
    assert doc["as_of"].endswith("Z")


def test_apply_adds_versions_effective_now_and_never_changes_a_stored_cost(
    run: Callable[..., Any], book: Database, mock: MockUpstream
) -> None:
    before_apply = datetime.now(UTC) - timedelta(seconds=1)
    # 1,000 prompt and 500 completion tokens at the seed price: 0.00011 + 0.000095.
    store(
        book,
        event(user="before", occurred_at=before_apply, prompt_tokens=1000, completion_tokens=500),
    )
    store(book, event(user="new-before", model="acme/new", occurred_at=before_apply))
    assert event_costs(book) == {"before": ("0.000205", True), "new-before": (None, False)}

    r = run("--apply", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert without_as_of(doc) == EXPECTED_DIFF  # what was applied and what was skipped
    assert doc["applied"] == APPLIED
    as_of = datetime.fromisoformat(doc["as_of"])
    added = [p for p in prices_stored(book) if p[3] == as_of]
    assert added == [
        ("acme/free", 0, 0, as_of, 8000),
        ("acme/new", 100_000, 300_000, as_of, 32000),  # "1e-7" a token: exactly 0.1 per 1M
        (SEED_MODEL, 110_000, 250_000, as_of, 8192),
    ]
    # Nothing skipped got a price: variable, conditional, too fine, malformed.
    names = {p[0] for p in prices_stored(book)}
    assert not names & {"acme/variable", "acme/tiered", "acme/tiny", "acme/broken"}

    after = as_of + timedelta(seconds=1)
    tokens = {"prompt_tokens": 1000, "completion_tokens": 500}
    store(
        book,
        event(user="late-but-before", occurred_at=as_of - timedelta(microseconds=1), **tokens),
        event(user="after", occurred_at=after, **tokens),
        event(user="new-after", model="acme/new", occurred_at=after, **tokens),
        event(user="free", model="acme/free", occurred_at=after, **tokens),
        event(user="variable", model="acme/variable", occurred_at=after, **tokens),
    )
    assert event_costs(book) == {
        "before": ("0.000205", True),  # frozen
        "new-before": (None, False),  # before the model had a price: still unpriced
        "late-but-before": ("0.000205", True),  # stored later, occurred before: the old price
        "after": ("0.000235", True),  # 0.00011 + 500 x 0.25 / 1M
        "new-after": ("0.00025", True),  # 0.0001 + 0.00015
        "free": ("0", True),  # free is priced, at 0
        "variable": (None, False),  # "-1": unpriced, never $0
    }

    again = run()
    assert again.exit_code == 0, again.output
    assert "the price book is in sync" in again.stdout
    assert sync_entries(book) == [("cli", None, {"model": None, "added": APPLIED})]
    assert "acme/variable" in again.stdout  # still reported as skipped


def test_one_model_only(run: Callable[..., Any], book: Database, mock: MockUpstream) -> None:
    r = run("--model", "acme/new", "--apply", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["model"] == "acme/new" and doc["listed"] == 1
    assert doc["applied"] == [APPLIED[1]]
    assert doc["changed"] == doc["gone"] == doc["skipped"] == []
    assert {p[0] for p in prices_stored(book)} == {
        SEED_MODEL,
        "acme/retired",
        "acme/same",
        "acme/new",
    }
    r = run("--model", "acme/retired")
    assert r.exit_code == 0 and "No longer listed" in r.stdout
    r = run("--model", "nobody/nothing")
    assert r.exit_code == 0 and "neither listed upstream nor in the price book" in r.output


def test_an_upstream_that_cannot_be_read_exits_3_and_writes_nothing(
    run: Callable[..., Any], book: Database, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = prices_stored(book)
    mock.catalogue = {"models": []}
    r = run("--apply")
    assert r.exit_code == 3 and "did not answer a catalogue" in r.output
    monkeypatch.setenv("METER_UPSTREAM_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens
    r = run("--apply")
    assert r.exit_code == 3 and "cannot read http://127.0.0.1:9/v1/models" in r.output
    assert run("--format", "yaml").exit_code == 2
    assert prices_stored(book) == before


def test_help_explains_exit_codes(run: Callable[..., Any]) -> None:
    r = run("--help")
    assert r.exit_code == 0
    assert "Exit codes" in r.stdout and "--apply" in r.stdout


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture
def api(book: Database, upstream: tuple[MockUpstream, str]) -> Iterator[TestClient]:
    settings = get_settings(upstream_base_url=upstream[1], openrouter_api_key=UPSTREAM_KEY)
    with TestClient(create_app(settings, book, scheduler=False)) as client:
        yield client


def sync_entries(db: Database) -> list[tuple[str, str | None, dict[str, Any] | None]]:
    """The audit log's price.sync entries, oldest first (never the upstream's key)."""
    with db.engine.connect() as conn:
        entries = audit.list_entries(conn, action="price.sync")
        assert UPSTREAM_KEY not in repr(conn.execute(sa.text("SELECT * FROM audit_log")).all())
    return [(e.actor, e.target, e.details) for e in reversed(entries)]


def key(db: Database, role: str) -> dict[str, str]:
    with db.engine.begin() as conn:
        _, secret, _ = create_key(conn, role, None, None)
    return {"Authorization": f"Bearer {secret}"}


def test_get_returns_the_difference_and_post_applies_it(
    api: TestClient, book: Database, mock: MockUpstream
) -> None:
    admin = key(book, "admin")
    r = api.get("/v1/prices/sync", headers=admin)
    assert r.status_code == 200, r.text
    assert without_as_of(r.json()) == EXPECTED_DIFF
    assert "applied" not in r.json()
    assert len(prices_stored(book)) == 3  # GET writes nothing

    def ingest(event_id: str, user: str, occurred_at: datetime) -> None:
        doc = {"id": event_id, "occurred_at": occurred_at.isoformat(), "model": SEED_MODEL,
               "user": user, "prompt_tokens": 1000, "completion_tokens": 500}  # fmt: skip
        r = api.post("/v1/events", json={"events": [doc]}, headers=admin)
        assert r.status_code == 200, r.text

    ingest(
        "019ab7c4-5f2e-7a10-8b3c-2d4e6f809a1b", "before", datetime.now(UTC) - timedelta(seconds=2)
    )

    r = api.post("/v1/prices/sync", headers=admin)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert without_as_of(doc) == EXPECTED_DIFF and doc["applied"] == APPLIED
    [(actor, target, details)] = sync_entries(book)  # GET wrote none
    assert actor.startswith("key:") and (target, details) == (
        None,
        {"model": None, "added": APPLIED},
    )
    later = datetime.fromisoformat(doc["as_of"]) + timedelta(milliseconds=1)
    ingest("019ab7c4-5f2e-7a10-8b3c-2d4e6f809a1c", "after", later)
    assert event_costs(book) == {"before": ("0.000205", True), "after": ("0.000235", True)}

    r = api.get("/v1/prices/sync", params={"model": SEED_MODEL}, headers=admin)
    assert r.status_code == 200
    assert (r.json()["unchanged"], r.json()["changed"], r.json()["model"]) == (1, [], SEED_MODEL)


def test_only_admins_sync(api: TestClient, book: Database, mock: MockUpstream) -> None:
    reader = key(book, "read")
    assert api.get("/v1/prices/sync", headers=reader).status_code == 403
    assert api.post("/v1/prices/sync", headers=reader).status_code == 403
    assert api.post("/v1/prices/sync").status_code == 401
    assert mock.requests == []  # refused before the upstream is contacted
    assert len(prices_stored(book)) == 3


def test_an_upstream_error_is_a_502(api: TestClient, book: Database, mock: MockUpstream) -> None:
    mock.catalogue = {"data": "nope"}
    r = api.post("/v1/prices/sync", headers=key(book, "admin"))
    assert r.status_code == 502
    assert "did not answer a catalogue" in r.json()["detail"]
    assert len(prices_stored(book)) == 3


# -- the mock upstream's catalogue ------------------------------------------------------------


def test_the_mock_serves_the_seed_entry_unless_given_a_catalogue(
    upstream: tuple[MockUpstream, str],
) -> None:
    import httpx

    assert default_catalogue() == {"data": [MODELS_ENTRY]}
    with running() as (_, url):
        assert httpx.get(f"{url}/models").json() == {"data": [MODELS_ENTRY]}
    mock, url = upstream
    mock.catalogue = {"data": [{"id": "x/y", "pricing": {"prompt": "0", "completion": "0"}}]}
    assert httpx.get(f"{url}/models").json()["data"][0]["id"] == "x/y"


def test_json_numbers_in_a_catalogue_are_read_exactly(
    run: Callable[..., Any], mock: MockUpstream
) -> None:
    # A price given as a JSON number (here the text 1.23456e-07) is parsed from its text into a
    # Decimal, never through a float.
    mock.catalogue = {
        "data": [{"id": "acme/n", "pricing": {"prompt": 1.23456e-07, "completion": 0}}]
    }
    r = run("--model", "acme/n", "--format", "json")
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["new"][0]["input_per_million_usd"] == "0.123456"


# -- the parser, pure -------------------------------------------------------------------------


def test_the_parser_is_exact_and_says_why_it_skips() -> None:
    from meter.pricing import parse_openrouter_catalogue

    free = {"prompt": "0", "completion": "0"}
    doc = {
        "data": [
            {"id": "a/exp", "pricing": {"prompt": "1E-7", "completion": "2.5e-6"}},
            {"id": "a/float", "pricing": {"prompt": 1e-7, "completion": "0"}},  # through a float
            {"id": "a/neg", "pricing": {"prompt": "-2", "completion": "0"}},
            {"id": "a/one-variable", "pricing": {"prompt": "0.000001", "completion": "-1"}},
            {"id": "a/ctx", "context_length": "lots", "pricing": free},
            {"id": "a/twice", "pricing": {"prompt": "0", "completion": "0"}},
            {"id": "a/twice", "pricing": {"prompt": "0.000001", "completion": "0"}},
            {"id": "a/empty-overrides", "pricing": {**free, "overrides": []}},
            "not an object",
        ]
    }  # fmt: skip
    got = {e.model: e for e in parse_openrouter_catalogue(doc)}
    assert (got["a/exp"].input_units, got["a/exp"].output_units) == (100_000, 2_500_000)
    assert got["a/float"].problem == "malformed" and "not a float" in (got["a/float"].skipped or "")
    assert got["a/neg"].problem == "malformed"
    assert got["a/one-variable"].problem == "variable"
    assert got["a/ctx"].problem == "malformed"
    assert got["a/twice"].skipped == "listed more than once"
    assert got["a/empty-overrides"].skipped is None
    assert got["data[8]"].skipped == "no model id"


# -- the scheduled check ----------------------------------------------------------------------


def test_the_scheduled_check_logs_the_difference_and_never_applies(
    book: Database,
    upstream: tuple[MockUpstream, str],
    mock: MockUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from meter.price_sync.tasks import PRICE_CHECK_JOB_ID, add_price_check, check_prices

    before = prices_stored(book)
    settings = get_settings(upstream_base_url=upstream[1])
    with caplog.at_level("INFO", logger="meter.prices"):
        diff = check_prices(book, settings)
    assert diff is not None and len(diff.new) == 2 and len(diff.changed) == 1
    assert "price check: 2 new, 1 changed" in caplog.text and "--apply" in caplog.text
    assert prices_stored(book) == before
    mock.catalogue = {"nope": True}
    assert check_prices(book, settings) is None  # logged, not raised

    scheduler = BackgroundScheduler()
    add_price_check(scheduler, book, settings)  # off by default
    assert scheduler.get_job(PRICE_CHECK_JOB_ID) is None
    add_price_check(
        scheduler,
        book,
        get_settings(upstream_base_url=upstream[1], price_sync_interval_seconds=3600),
    )
    assert scheduler.get_job(PRICE_CHECK_JOB_ID) is not None


def test_mock_upstream_catalogue_option_refuses_what_is_not_a_catalogue(tmp_path: Any) -> None:
    path = tmp_path / "models.json"
    path.write_text('{"models": []}')
    r = CliRunner().invoke(cli, ["mock-upstream", "--catalogue", str(path)])
    assert r.exit_code == 2 and "must hold an object with a `data` list" in r.output
