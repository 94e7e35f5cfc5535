"""A price added anywhere is used everywhere within 5 s (SPEC section 9), on SQLite and PostgreSQL:
a sync applied through one meter server is priced by another server's gateway on the same
database, busy or idle; a Meter in another process of the same database sees it as fast."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from meter import Meter
from meter.api.app import create_app
from meter.db.prices import add_price
from meter.db.session import Database
from meter.keys import create_key
from meter.mock_upstream import MODELS_ENTRY, MockUpstream, running
from meter.money import render_usd
from meter.pricing import SEED_MODEL, make_price
from tests.client_helpers import stored_events
from tests.gateway_helpers import GatewayServer, database_at, gateway_key, gateway_settings
from tests.test_gateway_budgets import budget

WITHIN_S = 5.0
NEW_MODEL = {
    "id": "acme/new",
    "context_length": 32000,
    "pricing": {"prompt": "0.000001", "completion": "0.000002"},
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockUpstream, str]]:
    with running(MockUpstream()) as pair:
        yield pair


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    yield from database_at(db_url)


def chat(server: GatewayServer, key: str, model: str) -> httpx.Response:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 20,
    }
    return httpx.post(
        f"{server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=30,
    )


def test_a_sync_applied_on_one_server_prices_the_other_servers_gateway_within_5_s(
    db: Database, db_url: str, upstream: tuple[MockUpstream, str], tmp_path: Path
) -> None:
    mock, upstream_url = upstream
    mock.catalogue = {"data": [dict(MODELS_ENTRY), NEW_MODEL]}
    settings = gateway_settings(db_url, upstream_url, tmp_path / "spool-b")
    key = gateway_key(db)
    budget(db, "10")  # enforced: a model without a price (no cost bound) is refused
    with db.engine.begin() as conn:
        _, admin, _ = create_key(conn, "admin", None, "sync")
    other = GatewayServer(settings, db)  # server B: its gateway prices from its own cache
    try:
        refused = chat(other, key, "acme/new")
        assert refused.status_code == 400 and "unbounded_cost" in refused.text
        # Server A, another app on the same database, applies the sync.
        settings_a = gateway_settings(db_url, upstream_url, tmp_path / "spool-a")
        with TestClient(create_app(settings_a, db, scheduler=False)) as server_a:
            r = server_a.post("/v1/prices/sync", headers={"Authorization": f"Bearer {admin}"})
            applied_at = time.monotonic()
            assert r.status_code == 200, r.text
            assert [p["model"] for p in r.json()["applied"]] == ["acme/new"]
        # B was idle all along: its first call after 4.5 s already uses the new price.
        time.sleep(4.5 - (time.monotonic() - applied_at))
        assert time.monotonic() - applied_at < WITHIN_S
        admitted = chat(other, key, "acme/new")  # (its price is looked up as it arrives)
        assert admitted.status_code == 200, admitted.text
        other.flush()
        stored = stored_events(db_url)
        assert [(e.model, e.status) for e in stored] == [("acme/new", "ok")]
        usage = admitted.json()["usage"]
        # Exact: $1 and $2 per 1M tokens are 10^6 and 2 x 10^6 units of 1e-12 USD a token.
        expected = usage["prompt_tokens"] * 1_000_000 + usage["completion_tokens"] * 2_000_000
        assert stored[0].cost_usd == render_usd(expected)
    finally:
        other.stop()


def test_a_meter_sees_a_price_added_by_another_process_within_5_s(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    with Meter(db_url, spool_dir=tmp_path / "spool") as meter:
        now = datetime.now(UTC)
        assert meter.price_at(SEED_MODEL, now) is not None
        assert meter.price_at("acme/later", now) is None

        def add(model: str) -> float:
            with db.engine.begin() as conn:  # another engine: as another process would
                add_price(conn, make_price(model, "3", "4", datetime.now(UTC), 1000))
            return time.monotonic()

        # Busy: called every 0.1 s, it sees the price after about CHECK_S.
        added = add("acme/later")
        while meter.price_at("acme/later", datetime.now(UTC)) is None:
            assert time.monotonic() - added < WITHIN_S
            time.sleep(0.1)
        # Idle: the first call 4.5 s after the price was added sees it.
        added = add("acme/idle")
        time.sleep(4.5)
        price = meter.price_at("acme/idle", datetime.now(UTC))
        assert time.monotonic() - added < WITHIN_S
        assert price is not None and (price.input_units, price.output_units) == (
            3_000_000,
            4_000_000,
        )
