"""Hard budgets through the gateway (SPEC section 7): worst-case reservations, 402 refusals that
SDKs do not retry, settlement to the exact cost, the roll-up taking over from a settled hold,
`unbounded_cost`, failing closed, and no overshoot under concurrency across two servers."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from meter.budgets import service
from meter.budgets.schemas import BudgetCreate
from meter.db.session import Database
from meter.gateway.holds import BudgetGate, Claim
from meter.ids import uuid7
from meter.keys import create_key
from meter.mock_upstream import MockUpstream
from meter.money import render_usd
from meter.rollup.engine import run_rollup
from tests.budget_helpers import loopback_settings
from tests.client_helpers import HELLO, MODEL, stored_events
from tests.gateway_helpers import (
    SERVER_KEY,
    GatewayServer,
    assert_settled_totals_exact,
    database_at,
    gateway_key,
    gateway_settings,
)
from tests.test_outage_http import Server

# HELLO with max_tokens=50: prompt bound 8 (chat) + 16 (message) + 5 bytes = 29 tokens.
WORST_CASE = 29 * 110_000 + 50 * 190_000  # units of 1e-12 USD: $0.00001269
BODY = {"model": MODEL, "messages": HELLO, "max_tokens": 50}


def budget(db: Database, limit_usd: str, **fields: Any) -> int:
    doc: dict[str, Any] = {
        "scope": "team",
        "subject": "search",
        "weekly_limit_usd": limit_usd,
        "enforce": True,
        "thresholds": [],
    }
    doc.update(fields)
    with db.engine.begin() as conn:
        return service.create_budget(
            conn, BudgetCreate(**doc), loopback_settings(), service.Clock(datetime.now(UTC), db.tz)
        )


def holds(db: Database) -> list[tuple[str, int, int]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT state, amount_units, reserved_units FROM gateway_holds ORDER BY created_at"
            )
        ).all()
    return [(r[0], int(r[1]), int(r[2])) for r in rows]


def read_holds(db: Database) -> list[tuple[str, int, int]]:
    """As `holds`, without waiting for SQLite's write lock; the settled totals checked."""
    assert_settled_totals_exact(db)
    with db.engine.connect().execution_options(readonly=True) as conn:
        rows = conn.execute(
            sa.text("SELECT state, amount_units, reserved_units FROM gateway_holds")
        ).all()
    return sorted((r[0], int(r[1]), int(r[2])) for r in rows)


def settled_holds(db: Database) -> list[tuple[str, int, int]]:
    """The holds once no open one is left: an answer leaves before its hold is settled
    (liveness bound: 5 s)."""
    for _ in range(100):
        found = read_holds(db)
        if all(state != "open" for state, _, _ in found):
            return found
        time.sleep(0.05)
    return read_holds(db)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The database the gateway spools into (the suite's own `db` fixture is another one)."""
    yield from database_at(db_url)


@pytest.fixture
def gw(
    db: Database, db_url: str, upstream: tuple[MockUpstream, str], tmp_path: Path
) -> Iterator[GatewayServer]:
    upstream[0].reset()
    server = GatewayServer(gateway_settings(db_url, upstream[1], tmp_path / "spool"), db)
    try:
        yield server
    finally:
        server.stop()


def post(gw: GatewayServer, key: str, body: dict[str, Any] = BODY) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body
    )


def test_calls_are_admitted_while_their_worst_case_fits_then_402(
    gw: GatewayServer, db: Database, db_url: str, mock: MockUpstream
) -> None:
    key = gateway_key(db)
    # Room for three worst cases exactly: each call settles below its reservation, so a fourth
    # fits once three have settled; then the fifth does not.
    budget_id = budget(db, render_usd(3 * WORST_CASE) or "0")
    answers = [post(gw, key) for _ in range(6)]
    statuses = [r.status_code for r in answers]
    admitted = statuses.count(200)
    gw.flush()
    events = stored_events(db_url)
    spent = sum(Decimal(e.cost_usd or "0") for e in events)
    assert len(events) == admitted == len(mock.requests)
    assert spent <= Decimal(render_usd(3 * WORST_CASE) or "0")
    assert statuses[:3] == [200, 200, 200] and statuses[-1] == 402
    refusal = answers[-1]
    assert refusal.headers["x-should-retry"] == "false"
    error = refusal.json()["error"]
    assert (error["type"], error["code"], error["budget_id"]) == (
        "budget_exceeded",
        "budget_exceeded",
        budget_id,
    )
    assert Decimal(error["spend_usd"]) == spent  # settled calls, not yet rolled up
    assert (error["limit_usd"], error["reserved_usd"]) == (render_usd(3 * WORST_CASE), "0")
    # Every admitted call's hold is its exact cost; the roll-up then takes over from them.
    assert sorted(a for _, a, _ in holds(db)) == sorted(
        int(Decimal(e.cost_usd or "0") * 10**12) for e in events
    )
    assert {s for s, _, _ in holds(db)} == {"settled"}
    run_rollup(db)
    assert holds(db) == []
    again = post(gw, key)
    assert again.status_code == 402
    assert Decimal(again.json()["error"]["spend_usd"]) == spent  # now from the roll-up


def test_the_openai_sdk_does_not_retry_a_budget_refusal(
    gw: GatewayServer, db: Database, mock: MockUpstream
) -> None:
    budget(db, "0.000001")  # below one worst case
    client = openai.OpenAI(base_url=gw.base_url, api_key=gateway_key(db), max_retries=2)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)  # type: ignore[arg-type]
    assert info.value.status_code == 402
    assert mock.requests == []
    assert holds(db) == []


def test_budgets_of_other_teams_users_and_unenforced_ones_do_not_apply(
    gw: GatewayServer, db: Database
) -> None:
    budget(db, "0.000001", subject="other")
    budget(db, "0.000001", scope="user", subject="carol")
    budget(db, "0.000001", subject="search", enforce=False)
    assert post(gw, gateway_key(db, user="alice")).status_code == 200
    assert holds(db) == []  # no enforced budget covers it: no reservation at all
    budget(db, "0.000001", scope="user", subject="alice")
    assert post(gw, gateway_key(db, team="x", user="alice")).status_code == 402


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"model": "acme/unpriced"}, "model"),
        ({"models": [MODEL, "acme/other"]}, "models"),
        ({"route": "fallback"}, "route"),
        ({"plugins": [{"id": "web"}]}, "plugins"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                    }
                ]
            },
            "messages",
        ),
    ],
)
def test_a_call_without_a_cost_bound_is_refused_under_an_enforced_budget(
    gw: GatewayServer, db: Database, mock: MockUpstream, extra: dict[str, Any], param: str
) -> None:
    key = gateway_key(db)
    if param == "model":
        assert post(gw, key, {**BODY, **extra}).status_code == 200  # no budget: it goes through
        mock.reset()
    budget(db, "10")
    r = post(gw, key, {**BODY, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "unbounded_cost",
        param,
        "invalid_request_error",
    )
    assert mock.requests == []


def test_budget_state_unreadable_fails_closed_or_open_when_asked(
    db: Database, db_url: str, upstream: tuple[MockUpstream, str], tmp_path: Path
) -> None:
    key = gateway_key(db)
    budget(db, "10")
    for fail_open, status in ((False, 503), (True, 200)):
        settings = gateway_settings(
            db_url, upstream[1], tmp_path / f"s{fail_open}", gateway_fail_open=fail_open
        )
        server = GatewayServer(settings, db)
        try:
            with db.engine.begin() as conn:  # the budget state cannot be read
                conn.execute(sa.text("ALTER TABLE gateway_holds RENAME TO gateway_holds_gone"))
            try:
                r = post(server, key)
            finally:
                with db.engine.begin() as conn:
                    conn.execute(sa.text("ALTER TABLE gateway_holds_gone RENAME TO gateway_holds"))
            assert r.status_code == status, r.text
            if status == 503:
                assert r.json()["error"]["code"] == "budget_unavailable"
        finally:
            server.stop()


CALLS = 40


@pytest.mark.slow
def test_concurrent_calls_through_two_servers_never_overshoot(
    db: Database,
    db_url: str,
    backend: str,
    upstream: tuple[MockUpstream, str],
    tmp_path: Path,
) -> None:
    """40 calls at once from threads, through two `meter serve` processes on PostgreSQL (one on
    SQLite, which is single-machine), against a budget with room for about 10 worst cases."""
    mock, upstream_url = upstream
    mock.reset()
    key = gateway_key(db)
    limit_units = 10 * WORST_CASE + WORST_CASE // 2
    budget(db, render_usd(limit_units) or "0")
    servers = []
    for i in range(2 if backend == "postgresql" else 1):
        home = tmp_path / f"server{i}"
        home.mkdir()
        server = Server(home, db_url)
        server.env.update(
            METER_UPSTREAM_BASE_URL=upstream_url,
            OPENROUTER_API_KEY=SERVER_KEY,
            METER_SPOOL_DIR=str(home / "spool"),
        )
        server.start()
        servers.append(server)
    try:
        barrier = threading.Barrier(CALLS)
        results: list[tuple[int, str]] = []
        lock = threading.Lock()

        def call(i: int) -> None:
            server = servers[i % len(servers)]
            barrier.wait(30)
            r = httpx.post(
                f"{server.url}/v1/chat/completions",
                headers={
                    "Authorization": f"Bearer {key}",
                    "X-Mock-Behavior": "slow",
                    "X-Mock-Delay-Ms": "50",
                },
                json={**BODY, "messages": [{"role": "user", "content": f"Hello {i:02d}"}]},
                timeout=60,
            )
            with lock:
                results.append((r.status_code, r.headers.get("x-meter-event-id", "")))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        for server in servers:
            server.stop()  # SIGTERM: each flushes its spool
    statuses = sorted(s for s, _ in results)
    admitted = [e for s, e in results if s == 200]
    assert len(results) == CALLS and set(statuses) <= {200, 402}, statuses
    events = stored_events(db_url)
    assert len(events) == len(admitted) == len(mock.requests)
    spent_units = sum(int(Decimal(e.cost_usd or "0") * 10**12) for e in events)
    assert spent_units <= limit_units
    # Each reservation is a worst case, so at least limit // worst case calls fit.
    assert len(admitted) >= limit_units // WORST_CASE


def test_a_cancelled_stream_keeps_its_full_reservation_until_looked_up(
    gw: GatewayServer, db: Database, db_url: str
) -> None:
    budget(db, "10")
    client = openai.OpenAI(base_url=gw.base_url, api_key=gateway_key(db), max_retries=0)
    with client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=50,
        stream=True,
        extra_headers={"X-Mock-Behavior": "slow", "X-Mock-Delay-Ms": "100"},
    ) as stream:
        for i, _chunk in enumerate(stream):
            if i == 1:
                break
    deadline = time.monotonic() + 10  # liveness bound: the server notices the disconnect
    while time.monotonic() < deadline and [s for s, _, _ in holds(db)] != ["held"]:
        time.sleep(0.1)
    assert holds(db) == [("held", WORST_CASE, WORST_CASE)]
    gw.flush()
    [event] = stored_events(db_url)
    assert (event.status, event.usage_source) == ("cancelled", "estimated")
    run_rollup(db)  # the estimate is rolled up, and the reservation stays: no lookup yet
    assert holds(db) == [("held", WORST_CASE, WORST_CASE)]


def test_fresh_keys_at_once_do_not_starve_a_small_pool(
    db_url: str, upstream: tuple[MockUpstream, str], tmp_path: Path
) -> None:
    """Every key's first call also notes its use (a write, on a connection of its own). Made
    while the admission still held its reading connection, 8 such calls at once on a pool of 2
    each held one connection and waited for a second: all stalled until the pool's timeout,
    then failed with 500. The write now waits until the reads' connection is back."""
    from meter.db.engine import make_engine
    from meter.weeks import load_timezone

    upstream[0].reset()
    engine = make_engine(db_url, pool_size=2, max_overflow=0, pool_timeout=5)
    small = Database(engine, load_timezone("UTC"))
    keys = [gateway_key(small, team=f"team-{i}") for i in range(8)]
    budget(small, "100", subject="team-0")  # a budget, so the covered calls reserve too
    server = GatewayServer(gateway_settings(db_url, upstream[1], tmp_path / "spool"), small)
    try:
        answers: list[int] = []
        threads = [
            threading.Thread(target=lambda k=k: answers.append(post(server, k).status_code))
            for k in keys
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(answers) == [200] * 8
        assert time.monotonic() - t0 < 5  # liveness: not one pool timeout
    finally:
        server.stop()
        engine.dispose()


def test_a_call_waits_for_another_writer_off_the_event_loop(
    gw: GatewayServer, db: Database, db_url: str, mock: MockUpstream
) -> None:
    """SQLite: the gateway reserves and settles on its event loop's own connection, which never
    waits for the write lock; while another connection holds it, the call waits in a worker
    thread instead, the server answers meanwhile, and the hold is reserved and settled."""
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    key = gateway_key(db)
    budget(db, "1")
    writer = sqlite3.connect(sa.make_url(db_url).database or "", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, until COMMIT
    answers: list[httpx.Response] = []
    call = threading.Thread(target=lambda: answers.append(post(gw, key)))
    started = time.monotonic()
    call.start()
    time.sleep(0.3)
    assert httpx.get(f"{gw.url}/healthz", timeout=2).status_code == 200  # the loop is free
    assert answers == []  # waiting for the lock
    writer.execute("COMMIT")
    released = time.monotonic() - started
    call.join(10)
    writer.close()
    assert [a.status_code for a in answers] == [200]
    assert time.monotonic() - started >= released
    gw.flush()
    (event,) = stored_events(db_url)
    assert settled_holds(db) == [
        ("settled", int(Decimal(event.cost_usd or "0") * 10**12), WORST_CASE)
    ]
    assert len(mock.requests) == 1


@contextlib.contextmanager
def holds_locked(db_url: str) -> Iterator[None]:
    """Every hold's row locked by another connection (SQLite: the whole write lock)."""
    url = sa.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        writer = sqlite3.connect(url.database or "", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            writer.execute("COMMIT")
            writer.close()
        return
    engine = sa.create_engine(url.set(drivername="postgresql+psycopg"))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT event_id FROM gateway_holds FOR UPDATE")).all()
            yield
    finally:
        engine.dispose()


def test_an_answer_leaves_before_its_settlement_and_the_next_call_waits_for_it(
    gw: GatewayServer, db: Database, db_url: str, mock: MockUpstream
) -> None:
    """A whole answer is sent before its hold is settled; the server's next admission waits
    for that settlement, so the next call is judged on the first one's exact cost: room for
    one worst case and one call's cost, not for two worst cases."""
    key = gateway_key(db)
    budget(db, render_usd(2 * WORST_CASE - 1) or "0")
    headers = {"Authorization": f"Bearer {key}"}
    slow = {**headers, "X-Mock-Behavior": "slow", "X-Mock-Delay-Ms": "800"}
    url = f"{gw.base_url}/chat/completions"
    first: list[httpx.Response] = []
    second: list[httpx.Response] = []
    one = threading.Thread(target=lambda: first.append(httpx.post(url, headers=slow, json=BODY)))
    one.start()
    for _ in range(100):  # liveness bound: 5 s
        if read_holds(db):
            break
        time.sleep(0.05)
    assert read_holds(db) == [("open", WORST_CASE, WORST_CASE)]
    with holds_locked(db_url):  # the first call's settlement cannot commit meanwhile
        one.join(10)
        assert [r.status_code for r in first] == [200]  # answered all the same
        assert read_holds(db) == [("open", WORST_CASE, WORST_CASE)]
        two = threading.Thread(
            target=lambda: second.append(httpx.post(url, headers=headers, json=BODY, timeout=20))
        )
        two.start()
        time.sleep(0.5)
        assert second == []  # waiting for the first call's settlement
    two.join(10)
    assert [r.status_code for r in second] == [200]
    gw.flush()
    costs = sorted(int(Decimal(e.cost_usd or "0") * 10**12) for e in stored_events(db_url))
    assert len(costs) == 2 and costs[0] < WORST_CASE
    assert settled_holds(db) == sorted(("settled", c, WORST_CASE) for c in costs)
    assert len(mock.requests) == 2


def test_a_settlement_that_never_ends_is_waited_for_once(db: Database, db_url: str) -> None:
    """A refused admission waits for the server's settlements being made at most its timeout
    (SETTLE_WAIT_S); one that never ends is then given up, so later admissions neither wait
    for it again nor are judged again because of it."""
    gate = BudgetGate(db)
    budget(db, "1")
    covering = gate.covering("search", None)
    first = Claim(uuid7(), "search", None, None, MODEL, datetime.now(UTC), 10**9)
    assert gate.admit(first, covering) is None
    gate.settle_later(first, 10**6, awaiting_lookup=False)
    with holds_locked(db_url):
        stuck = threading.Thread(target=gate.flush)  # takes the settlement, then waits
        stuck.start()
        for _ in range(100):  # liveness bound: 5 s
            if gate._in_flight:
                break
            time.sleep(0.05)
        assert gate.unsettled()
        waits = []
        for _ in range(2):
            started = time.monotonic()
            ended = gate.wait_settled(0.2)
            waits.append((ended, time.monotonic() - started))
        assert not waits[0][0] and 0.2 <= waits[0][1] < 2
        assert waits[1][0] and waits[1][1] < 0.1
        assert not gate.unsettled()  # given up: no admission is judged again for it
    stuck.join(10)
    assert not gate._in_flight
    assert read_holds(db) == [("settled", 10**6, 10**9)]
    gate.close()


def test_a_key_revoked_between_two_budgeted_calls_is_refused_at_once(
    gw: GatewayServer, db: Database, mock: MockUpstream
) -> None:
    """On PostgreSQL a budgeted call whose key and budgets were read for an earlier call is
    admitted in one statement that also checks the key is still there: a key revoked (or
    expired) since is refused by the very next call, nothing reserved, nothing sent."""
    from meter.api.routes.keys import revoke_key

    budget(db, "1")
    with db.engine.begin() as conn:
        key_id, key, _ = create_key(conn, "gateway", "search", "test", user="alice")
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gw.base_url}/chat/completions"
    for _ in range(3):  # read once, then admitted under what was read
        assert httpx.post(url, headers=headers, json=BODY).status_code == 200
    assert revoke_key(db, key_id, "test")
    refused = httpx.post(url, headers=headers, json=BODY)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert len(mock.requests) == 3
    gw.flush()
    assert [h[0] for h in read_holds(db)] == ["settled"] * 3
