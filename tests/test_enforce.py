"""Enforcement: an enforced budget at or over its limit stops the call before anything is sent;
the check is a lookup in a cached snapshot; it fails open when the state cannot be read."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from meter import BudgetExceeded, Meter, MeteredClient
from meter.api.app import create_app
from meter.api.auth import create_key
from meter.budgets import service
from meter.budgets.guard import BudgetGuard
from meter.budgets.schemas import BudgetCreate
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.weeks import load_timezone, week_of
from tests.budget_helpers import USD, loopback_settings, put_usage
from tests.conftest import DatabaseFactory
from tests.recorder_helpers import free_port

MODEL = "mistralai/mistral-7b-instruct-v0.1"
HELLO = [{"role": "user", "content": "Hello"}]


class Upstream:
    """The LLM endpoint, faked at the HTTP edge: counts what reaches it."""

    def __init__(self) -> None:
        self.calls = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        body = {
            "id": "gen-1",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        }
        http = importlib.import_module(type(request).__module__)  # httpx, or httpx2
        response: httpx.Response = http.Response(200, json=body)
        return response


@pytest.fixture
def store(databases: DatabaseFactory) -> Iterator[tuple[str, Database]]:
    url = databases.url()
    engine = make_engine(url)
    yield url, Database(engine, load_timezone("UTC"))
    engine.dispose()


def budget(db: Database, **fields: Any) -> int:
    doc: dict[str, Any] = {"weekly_limit_usd": "1", "enforce": True, "thresholds": []}
    doc.update(fields)
    with db.engine.begin() as conn:
        return service.create_budget(
            conn, BudgetCreate(**doc), loopback_settings(), service.Clock(datetime.now(UTC), db.tz)
        )


def this_week(db: Database):
    return week_of(datetime.now(UTC), db.tz).start


def test_an_enforced_budget_blocks_the_call_with_nothing_sent_while_others_pass(
    store: tuple[str, Database], tmp_path: Path
):
    url, db = store
    search = budget(db, scope="team", subject="search")
    mallory = budget(db, scope="user", subject="mallory", weekly_limit_usd="2")
    budget(db, scope="team", subject="ads", weekly_limit_usd="5", enforce=False)
    budget(db, scope="global", weekly_limit_usd="100")  # enforced, not reached
    put_usage(db, this_week(db), 1 * USD, team="search", user="alice")  # exactly at the limit
    put_usage(db, this_week(db), 1 * USD, team="ads", user="mallory")
    put_usage(db, this_week(db), 1 * USD, team="research", user="mallory")  # $2 across teams
    put_usage(db, this_week(db), 9 * USD, team="ads", user="bob")  # over, but not enforced
    upstream = Upstream()
    with Meter(database_url=url, spool_dir=tmp_path / "spool") as meter:
        client = MeteredClient(
            api_key="sk-test",
            base_url="http://upstream.test/v1",
            meter=meter,
            http_client=httpx.Client(transport=httpx.MockTransport(upstream.handler)),
        )
        with pytest.raises(BudgetExceeded) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, team="search", user="bob")
        assert upstream.calls == 0
        err = info.value
        assert (err.budget_id, err.scope, err.subject) == (search, "team", "search")
        assert (err.limit_usd, err.spend_usd) == (Decimal("1"), Decimal("1"))
        assert str(err) == (
            f"budget {search} (team search) has spent $1 of its $1 weekly limit; "
            "the call was not sent"
        )
        with pytest.raises(BudgetExceeded) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, team="ads", user="mallory")
        assert info.value.budget_id == mallory and upstream.calls == 0
        resp = client.chat.completions.create(model=MODEL, messages=HELLO, team="ads", user="bob")
        assert resp.choices[0].message.content == "Hi" and upstream.calls == 1
        client.chat.completions.create(model=MODEL, messages=HELLO, team="research")
        assert upstream.calls == 2
        client.close()


def test_the_guard_follows_the_roll_up_in_the_background(
    store: tuple[str, Database], tmp_path: Path
):
    url, db = store
    budget(db, scope="team", subject="search")
    with Meter(database_url=url, spool_dir=tmp_path / "spool") as meter:
        guard = BudgetGuard(meter, refresh_seconds=0.05)
        guard.check(team="search", user=None)  # nothing spent yet
        put_usage(db, this_week(db), 2 * USD, team="search")
        blocked = False
        for _ in range(400):  # liveness bound: 20 s
            try:
                guard.check(team="search", user=None)
            except BudgetExceeded:
                blocked = True
                break
            time.sleep(0.05)
        assert blocked
        guard.check(team="ads", user="alice")
        guard.close()


def test_fails_open_with_a_warning_when_the_database_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="meter.budgets")
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/meter"
    with Meter(database_url=down, spool_dir=tmp_path / "spool") as meter:
        guard = BudgetGuard(meter, first_load_timeout=10)
        guard.check(team="search", user="alice")  # no exception: the call may proceed
        guard.close()
    assert "budget enforcement is off until the budget state can be read again" in caplog.text


class ServerThread:
    """A real meter server (uvicorn) on a free loopback port, in a thread."""

    def __init__(self, db: Database) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(loopback_settings(), db, scheduler=False),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):  # liveness bound: 10 s
            if self.server.started:
                break
            time.sleep(0.05)
        assert self.server.started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_through_a_meter_server_with_a_read_key(
    store: tuple[str, Database], tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    _, db = store
    with db.engine.begin() as conn:
        _, reader, _ = create_key(conn, "read", None, "guard")
        _, ingest, _ = create_key(conn, "ingest", None, "client")
    search = budget(db, scope="team", subject="search")
    put_usage(db, this_week(db), 3 * USD, team="search")
    server = ServerThread(db)
    try:
        with Meter(api_url=server.url, api_key=reader, spool_dir=tmp_path / "a") as meter:
            guard = BudgetGuard(meter)
            with pytest.raises(BudgetExceeded) as info:
                guard.check(team="search", user=None)
            assert (info.value.budget_id, info.value.spend_usd) == (search, Decimal("3"))
            guard.check(team="ads", user=None)
            guard.close()
        caplog.set_level(logging.WARNING, logger="meter.budgets")
        with Meter(api_url=server.url, api_key=ingest, spool_dir=tmp_path / "b") as meter:
            guard = BudgetGuard(meter)
            guard.check(team="search", user=None)  # an ingest key cannot read budgets: open
            guard.close()
        assert "GET /v1/budgets answered HTTP 403" in caplog.text
        assert reader not in caplog.text and ingest not in caplog.text
    finally:
        server.stop()


def test_check_is_a_lookup_not_a_query(store: tuple[str, Database], tmp_path: Path):
    url, db = store
    budget(db, scope="team", subject="search")
    put_usage(db, this_week(db), 1 * USD, team="search")
    with Meter(database_url=url, spool_dir=tmp_path / "spool") as meter:
        guard = BudgetGuard(meter, refresh_seconds=3600)
        guard.check(team="ads", user="u")  # the first load
        queries: list[str] = []
        caller = threading.current_thread()

        def count(*args: Any) -> None:
            # The caller's own queries only: the Meter's background threads (the price book's
            # freshness check) may query meanwhile.
            if threading.current_thread() is caller:
                queries.append(str(args[2]))

        database = meter.database()
        assert database is not None
        from sqlalchemy import event

        event.listen(database.engine, "before_cursor_execute", count)
        try:
            for _ in range(1000):
                guard.check(team="ads", user="u")
                with pytest.raises(BudgetExceeded):
                    guard.check(team="search", user="u")
        finally:
            event.remove(database.engine, "before_cursor_execute", count)
        assert queries == []
        guard.close()
