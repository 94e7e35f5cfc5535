"""Generation lookups against the real mock upstream on loopback, on SQLite and PostgreSQL: an
estimate becomes the provider's figures, exactly, and the roll-up, budgets' holds and the rate
limit follow."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meter import Meter
from meter.api.app import create_app
from meter.cli import app as cli
from meter.db import models
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.mock_upstream import MockUpstream
from meter.reconcile import run_lookups
from meter.reconcile.scheduler import LOOKUP_JOB_ID
from meter.rollup import run_rollup
from meter.weeks import load_timezone
from tests.client_helpers import HELLO, HELLO_COST, MODEL, stored_events
from tests.gateway_helpers import GatewayServer, gateway_key, gateway_settings
from tests.lookup_helpers import (
    QUICK,
    add_hold,
    cancelled_stream,
    estimated_event,
    hold,
    lookup_row,
    lookup_settings,
    stored_event,
)
from tests.test_gateway_budgets import WORST_CASE, budget
from tests.test_rollup_helpers import expected_totals, rolled_up, store

# What the mock bills for HELLO in full: 9 prompt and 51 completion tokens at the seed price.
FULL_PROMPT, FULL_COMPLETION = 9, 51
INPUT_UNITS = FULL_PROMPT * 110_000  # $0.11 per 1M tokens = 110,000 units of 1e-12 USD a token
OUTPUT_UNITS = FULL_COMPLETION * 190_000
assert INPUT_UNITS + OUTPUT_UNITS == 10_680_000  # HELLO_COST, 0.00001068 USD


@pytest.fixture
def lookup_mock(upstream: tuple[MockUpstream, str]) -> MockUpstream:
    mock = upstream[0]
    mock.reset()
    mock.generation_delay = 0.0
    mock.default_behavior = None
    return mock


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """The database behind `db_url`, which the Meter of these tests writes to."""
    db = Database(make_engine(db_url), load_timezone("UTC"))
    yield db
    db.dispose()


def event_id_of(database: Database, generation_id: str) -> uuid.UUID:
    e = models.Event
    with database.engine.connect() as conn:
        found = conn.execute(sa.select(e.id).where(e.generation_id == generation_id)).scalar_one()
    return uuid.UUID(str(found))


def lookups_seen(mock: MockUpstream) -> list[float]:
    return [r.at for r in mock.requests if r.path.endswith("/generation")]


def test_a_cancelled_stream_takes_the_providers_figures_and_the_rollup_follows(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
) -> None:
    generation_id = cancelled_stream(upstream[1], meter)
    event_id = event_id_of(database, generation_id)
    before = stored_event(db_url, event_id)
    assert (before["status"], before["usage_source"]) == ("cancelled", "estimated")
    estimate = (before["prompt_tokens"], before["completion_tokens"])
    assert estimate[0] == FULL_PROMPT and 0 < estimate[1] < FULL_COMPLETION
    pending = lookup_row(database, event_id)
    assert pending is not None and (pending.state, pending.attempts) == ("pending", 0)
    add_hold(database, event_id, "held", amount_units=10**9)  # the gateway's full reservation
    run_rollup(database)
    week = rolled_up(database)
    assert [v[4] for v in week.values()] == [1]  # one estimated request

    summary = run_lookups(database, lookup_settings(db_url, upstream[1]), policy=QUICK)

    assert (summary.reconciled, summary.retried, summary.unavailable, summary.pending) == (
        1,
        0,
        0,
        0,
    )
    after = stored_event(db_url, event_id)
    assert after["usage_source"] == "reconciled"
    assert after["status"] == "cancelled"  # what happened to the call does not change
    assert (after["prompt_tokens"], after["completion_tokens"]) == (FULL_PROMPT, FULL_COMPLETION)
    assert (after["estimated_prompt_tokens"], after["estimated_completion_tokens"]) == estimate
    assert after["provider_cost_units"] == 10_680_000
    assert (after["input_cost_units"], after["output_cost_units"]) == (INPUT_UNITS, OUTPUT_UNITS)
    assert after["price_id"] == before["price_id"]
    done = lookup_row(database, event_id)
    assert done is not None and (done.state, done.attempts, done.last_error) == ("done", 1, None)
    assert hold(database, event_id) == ("settled", 10_680_000, None)
    # The lookup went out with the upstream key, to the upstream's own path.
    (seen,) = [r for r in lookup_mock.requests if r.path.endswith("/generation")]
    assert seen.path == "/v1/generation" and seen.query == f"id={generation_id}"
    assert seen.headers["authorization"] == "Bearer sk-or-lookup-test"

    result = run_rollup(database)
    assert result.events_rolled_up == 0  # the same request, counted again with its new figures
    assert rolled_up(database) == expected_totals(database)
    assert hold(database, event_id) is None  # its exact cost is in the roll-up now, not twice
    with TestClient(
        create_app(lookup_settings(db_url, upstream[1]), database, scheduler=False)
    ) as c:
        (row,) = c.get("/v1/usage/weekly").json()["rows"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (1, 9, 51)
    assert (row["estimated"], row["unpriced"]) == (0, 0)
    assert (row["input_cost_usd"], row["output_cost_usd"], row["cost_usd"]) == (
        "0.00000099",
        "0.00000969",
        HELLO_COST,
    )


def test_a_404_while_the_generation_is_not_ready_is_retried_then_found(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
) -> None:
    lookup_mock.generation_delay = 1.5
    generation_id = cancelled_stream(upstream[1], meter)
    event_id = event_id_of(database, generation_id)
    settings = lookup_settings(db_url, upstream[1])

    first = run_lookups(database, settings, policy=QUICK)
    assert (first.reconciled, first.retried, first.pending) == (0, 1, 1)
    waiting = lookup_row(database, event_id)
    assert waiting is not None and (waiting.state, waiting.attempts) == ("pending", 1)
    assert waiting.last_error is not None and "404" in waiting.last_error
    assert waiting.next_attempt_at > datetime.now(UTC) - timedelta(seconds=1)
    assert stored_event(db_url, event_id)["usage_source"] == "estimated"

    deadline = time.monotonic() + 15
    while lookup_row(database, event_id).state == "pending":  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the generation was never found"
        time.sleep(0.2)
        run_lookups(database, settings, policy=QUICK)
    found = lookup_row(database, event_id)
    assert found is not None and found.state == "done" and found.attempts >= 2
    assert len(lookups_seen(lookup_mock)) == found.attempts  # nothing looked up before it was due
    after = stored_event(db_url, event_id)
    assert after["usage_source"] == "reconciled"
    assert (after["prompt_tokens"], after["completion_tokens"]) == (FULL_PROMPT, FULL_COMPLETION)


def test_a_generation_never_found_is_given_up_after_its_window_and_counted_unavailable(
    upstream: tuple[MockUpstream, str], lookup_mock: MockUpstream, db_url: str, database: Database
) -> None:
    event_id = estimated_event(database, "gen-never-served", window=timedelta(seconds=1.5))
    add_hold(database, event_id, "held", amount_units=10**9)
    settings = lookup_settings(db_url, upstream[1])
    before = stored_event(db_url, event_id)

    first = run_lookups(database, settings, policy=QUICK)
    assert (first.retried, first.unavailable, first.pending) == (1, 0, 1)
    assert hold(database, event_id)[0] == "held"  # still waiting for the truth
    time.sleep(1.6)  # the window (from the event's time) has passed
    last = run_lookups(database, settings, policy=QUICK)

    assert (last.reconciled, last.unavailable, last.pending) == (0, 1, 0)
    row = lookup_row(database, event_id)
    assert row is not None and (row.state, row.attempts) == ("unavailable", 2)
    assert row.last_error is not None and "404" in row.last_error
    after = stored_event(db_url, event_id)
    assert after == before  # left as it was: the estimate, its cost, no estimated_* copy
    assert after["estimated_prompt_tokens"] is None
    # The hold becomes the estimate's exact cost: 9 x 110,000 + 7 x 190,000 units ...
    assert hold(database, event_id) == ("settled", 9 * 110_000 + 7 * 190_000, None)
    # ... until the roll-up, which counted the event while the hold waited, takes it over.
    run_rollup(database)
    assert hold(database, event_id) is None
    assert rolled_up(database) == expected_totals(database)
    # Given up for good: later runs leave it alone.
    again = run_lookups(database, settings, policy=QUICK, force=True)
    assert (again.reconciled, again.unavailable, again.skipped) == (0, 0, 0)
    assert len(lookups_seen(lookup_mock)) == 2


def test_only_a_held_hold_is_settled_and_an_unpriced_event_settles_at_zero(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
) -> None:
    served = cancelled_stream(upstream[1], meter)
    priced = event_id_of(database, served)
    add_hold(database, priced, "open", amount_units=5)  # not ours to settle
    unpriced = estimated_event(
        database,
        "gen-unpriced",
        occurred_at=datetime.now(UTC) - timedelta(hours=2),
        model="acme/unpriced",
        window=timedelta(hours=1),
    )
    add_hold(database, unpriced, "held", amount_units=77)

    summary = run_lookups(database, lookup_settings(db_url, upstream[1]), policy=QUICK)

    assert (summary.reconciled, summary.unavailable) == (1, 1)
    assert hold(database, priced)[:2] == ("open", 5)  # type: ignore[index]
    assert hold(database, unpriced) == ("settled", 0, None)
    unpriced_event = stored_event(db_url, unpriced)
    assert unpriced_event["input_cost_units"] is None  # unpriced stays unpriced, never $0


def test_an_empty_generation_id_is_given_up_at_once_without_asking(
    upstream: tuple[MockUpstream, str], lookup_mock: MockUpstream, db_url: str, database: Database
) -> None:
    event_id = estimated_event(database, "")  # the gateway holds such a call's budget too
    add_hold(database, event_id, "held", amount_units=10**9)

    summary = run_lookups(database, lookup_settings(db_url, upstream[1]), policy=QUICK)

    assert (summary.unavailable, summary.pending) == (1, 0)
    assert lookups_seen(lookup_mock) == []
    assert hold(database, event_id) == ("settled", 9 * 110_000 + 7 * 190_000, None)


def test_a_reconciled_unpriced_event_stays_unpriced_with_the_providers_tokens(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
) -> None:
    generation_id = cancelled_stream(upstream[1], meter)
    event_id = event_id_of(database, generation_id)
    with database.engine.begin() as conn:  # as if no price had covered it
        conn.execute(
            sa.update(models.Event)
            .where(models.Event.id == event_id)
            .values(price_id=None, input_cost_units=None, output_cost_units=None)
        )
    add_hold(database, event_id, "held", amount_units=10**9)

    run_lookups(database, lookup_settings(db_url, upstream[1]), policy=QUICK)

    after = stored_event(db_url, event_id)
    assert after["usage_source"] == "reconciled"
    assert (after["prompt_tokens"], after["completion_tokens"]) == (9, 51)
    assert (after["price_id"], after["input_cost_units"], after["output_cost_units"]) == (
        None,
        None,
        None,
    )
    assert after["provider_cost_units"] == 10_680_000
    assert hold(database, event_id) == ("settled", 0, None)


def test_lookups_keep_to_the_rate_limit(
    upstream: tuple[MockUpstream, str], lookup_mock: MockUpstream, db_url: str, database: Database
) -> None:
    for i in range(9):
        estimated_event(database, f"gen-unknown-{i}")
    settings = lookup_settings(db_url, upstream[1], lookup_rps=4)

    started = time.monotonic()
    summary = run_lookups(database, settings)  # the production policy, from the settings
    elapsed = time.monotonic() - started

    assert summary.retried == 9
    seen = sorted(lookups_seen(lookup_mock))
    assert len(seen) == 9
    assert elapsed >= 8 / 4 * 0.9  # 9 requests at 4 a second: at least 2 s
    # However the window is placed, it holds at most 4 lookups (one of slack for loopback jitter).
    busiest = max(sum(1 for t in seen if start <= t < start + 1.0) for start in seen)
    assert busiest <= 5


def test_a_429_pauses_the_lookups_then_they_go_on(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
) -> None:
    generation_id = cancelled_stream(upstream[1], meter)
    lookup_mock.reset()
    lookup_mock.default_behavior = "rate_limit:2"  # the next 2 lookups: 429, Retry-After 1

    started = time.monotonic()
    summary = run_lookups(database, lookup_settings(db_url, upstream[1]), policy=QUICK)

    assert (summary.rate_limited, summary.reconciled, summary.stopped) == (2, 1, False)
    assert time.monotonic() - started >= 1.9  # Retry-After honoured twice
    seen = lookups_seen(lookup_mock)
    assert len(seen) == 3 and seen[1] - seen[0] >= 0.9 and seen[2] - seen[1] >= 0.9
    assert stored_event(db_url, event_id_of(database, generation_id))["usage_source"] == (
        "reconciled"
    )


def test_429s_in_a_row_stop_the_run_and_leave_the_lookup_due_without_counting_an_attempt(
    upstream: tuple[MockUpstream, str], lookup_mock: MockUpstream, db_url: str, database: Database
) -> None:
    event_id = estimated_event(database, "gen-busy")
    lookup_mock.default_behavior = "rate_limit"  # every lookup: 429
    patient = replace(QUICK, rate_limits_in_a_row=2, max_rate_limit_pause=0.1)

    summary = run_lookups(database, lookup_settings(db_url, upstream[1]), policy=patient)

    assert (summary.rate_limited, summary.stopped, summary.pending) == (3, True, 1)
    assert (summary.reconciled, summary.retried, summary.unavailable) == (0, 0, 0)
    row = lookup_row(database, event_id)
    assert row is not None and (row.state, row.attempts) == ("pending", 0)
    assert row.next_attempt_at <= datetime.now(UTC)  # due again at once, not after a lease


def test_two_processes_never_look_up_the_same_generation(
    upstream: tuple[MockUpstream, str], lookup_mock: MockUpstream, db_url: str, database: Database
) -> None:
    ids = [estimated_event(database, f"gen-shared-{i}") for i in range(12)]
    settings = lookup_settings(db_url, upstream[1], lookup_rps=20)
    summaries = []

    def one_server() -> None:
        summaries.append(run_lookups(database, settings))

    threads = [threading.Thread(target=one_server) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    asked = [r.query for r in lookup_mock.requests if r.path.endswith("/generation")]
    assert sorted(asked) == sorted(f"id=gen-shared-{i}" for i in range(12))  # each exactly once
    assert sum(s.retried for s in summaries) == 12
    assert all(lookup_row(database, i).attempts == 1 for i in ids)  # type: ignore[union-attr]


def test_the_ledger_queues_only_estimated_events_with_a_generation_and_a_replay_changes_nothing(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
) -> None:
    from tests.factories import event

    provider = event(generation_id="gen-ok", usage_source="provider")
    no_id = event(status="cancelled", usage_source="estimated")
    store(database, [provider, no_id])
    assert lookup_row(database, provider.id) is None and lookup_row(database, no_id.id) is None

    generation_id = cancelled_stream(upstream[1], meter)
    event_id = event_id_of(database, generation_id)
    run_lookups(database, lookup_settings(db_url, upstream[1]), policy=QUICK)
    reconciled = stored_event(db_url, event_id)
    # The spool replays the original estimated event: a duplicate, nothing changes.
    replay = event(
        id=event_id,
        occurred_at=reconciled["occurred_at"],
        status="cancelled",
        usage_source="estimated",
        prompt_tokens=9,
        completion_tokens=3,
        user="alice",
        team="search",
        generation_id=generation_id,
    )
    assert store(database, [replay]) == 0
    assert stored_event(db_url, event_id) == reconciled
    assert lookup_row(database, event_id).state == "done"  # type: ignore[union-attr]


def test_meter_serve_runs_the_lookups_with_an_upstream_key_only(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
) -> None:
    without = lookup_settings(db_url, upstream[1], OPENROUTER_API_KEY="")
    assert create_app(without, database).state.scheduler.get_job(LOOKUP_JOB_ID) is None

    generation_id = cancelled_stream(upstream[1], meter)
    event_id = event_id_of(database, generation_id)
    settings = lookup_settings(
        db_url, upstream[1], lookup_interval_seconds=0.2, rollup_interval_seconds=3600
    )
    api = create_app(settings, database)
    job = api.state.scheduler.get_job(LOOKUP_JOB_ID)
    assert job is not None and job.coalesce and job.max_instances == 1
    with TestClient(api):  # the lifespan starts the scheduler, and stops it at the end
        deadline = time.monotonic() + 15
        while lookup_row(database, event_id).state != "done":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the scheduled lookup never ran"
            time.sleep(0.1)
    assert stored_event(db_url, event_id)["usage_source"] == "reconciled"
    assert api.state.scheduler.meter_lookup_job.runs >= 1


def test_meter_reconcile_lookups_runs_every_pending_lookup_now_and_sums_up(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = event_id_of(database, cancelled_stream(upstream[1], meter))
    waiting = estimated_event(database, "gen-not-yet")
    expired = estimated_event(
        database,
        "gen-gone",
        occurred_at=datetime.now(UTC) - timedelta(days=2),
        window=timedelta(days=1),
    )
    later = datetime.now(UTC) + timedelta(hours=1)  # every one of them backing off
    with database.engine.begin() as conn:
        conn.execute(sa.update(models.GenerationLookup).values(next_attempt_at=later))
    monkeypatch.setenv("METER_DATABASE_URL", db_url)
    monkeypatch.setenv("METER_UPSTREAM_BASE_URL", upstream[1])
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-cli")

    result = CliRunner().invoke(cli, ["reconcile", "lookups"])

    assert result.exit_code == 0, result.output
    assert "reconciled 1, still pending 1, unavailable 1" in result.output
    assert lookup_row(database, found).state == "done"  # type: ignore[union-attr]
    assert lookup_row(database, waiting).state == "pending"  # type: ignore[union-attr]
    assert lookup_row(database, expired).state == "unavailable"  # type: ignore[union-attr]
    assert {r.headers["authorization"] for r in lookup_mock.requests if "generation" in r.path} == {
        "Bearer sk-or-cli"
    }

    monkeypatch.delenv("OPENROUTER_API_KEY")
    refused = CliRunner().invoke(cli, ["reconcile", "lookups"])
    assert refused.exit_code == 2
    assert "OPENROUTER_API_KEY" in refused.output


def test_events_posted_to_the_api_are_queued_with_the_servers_window(
    upstream: tuple[MockUpstream, str], lookup_mock: MockUpstream, db_url: str, database: Database
) -> None:
    settings = lookup_settings(db_url, upstream[1], lookup_window_seconds=600)
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    body = {
        "events": [
            {
                "id": str(uuid.uuid4()),
                "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
                "model": "mistralai/mistral-7b-instruct-v0.1",
                "prompt_tokens": 9,
                "completion_tokens": 4,
                "status": "incomplete",
                "usage_source": "estimated",
                "generation_id": "gen-posted",
            }
        ]
    }
    with TestClient(create_app(settings, database, scheduler=False)) as c:
        assert c.post("/v1/events", json=body).json() == {
            "inserted": 1,
            "duplicates": 0,
            "expired": 0,
        }
    row = lookup_row(database, uuid.UUID(body["events"][0]["id"]))
    assert row is not None and row.state == "pending"
    assert row.deadline_at == occurred + timedelta(seconds=600)


def test_a_stream_cancelled_through_the_gateway_holds_its_worst_case_until_the_lookup_settles(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    db_url: str,
    database: Database,
    tmp_path: Path,
) -> None:
    settings = gateway_settings(db_url, upstream[1], tmp_path / "gateway-spool")
    budget(database, "1")  # an enforced team budget: each call reserves its worst case
    server = GatewayServer(settings, database)
    try:
        client = openai.OpenAI(
            base_url=server.base_url, api_key=gateway_key(database), max_retries=0
        )
        with client.chat.completions.create(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=50,
            stream=True,
            extra_headers={"X-Mock-Behavior": "slow", "X-Mock-Delay-Ms": "100"},
        ) as stream:
            for i, _chunk in enumerate(stream):
                if i == 1:
                    break
        deadline = time.monotonic() + 10  # the server notices the disconnect
        while not (stored := stored_events(db_url)):
            assert time.monotonic() < deadline, "the cancelled call was never stored"
            server.flush()
            time.sleep(0.1)
    finally:
        server.stop()
    [event] = stored
    assert (event.status, event.usage_source) == ("cancelled", "estimated")
    event_id = event_id_of(database, str(event.generation_id))
    assert hold(database, event_id) == ("held", WORST_CASE, None)
    run_rollup(database)
    assert hold(database, event_id) == ("held", WORST_CASE, None)  # waits for the truth

    summary = run_lookups(database, settings, policy=QUICK)

    billed = lookup_mock.generations[str(event.generation_id)]  # what the mock generated
    exact = billed.prompt_tokens * 110_000 + billed.completion_tokens * 190_000
    assert summary.reconciled == 1 and exact < WORST_CASE
    after = stored_event(db_url, event_id)
    assert (after["prompt_tokens"], after["completion_tokens"]) == (
        billed.prompt_tokens,
        billed.completion_tokens,
    )
    assert after["input_cost_units"] + after["output_cost_units"] == exact
    assert hold(database, event_id) == ("settled", exact, None)
    run_rollup(database)
    assert hold(database, event_id) is None
    assert rolled_up(database) == expected_totals(database)


def test_the_reconciliation_rows_follow_a_lookup_exactly(
    upstream: tuple[MockUpstream, str],
    lookup_mock: MockUpstream,
    meter: Meter,
    db_url: str,
    database: Database,
) -> None:
    """SPEC section 9: a cancelled stream is estimated and pending; once its lookup reconciles
    it, the week's row for its model counts it reconciled, with the provider's exact cost."""
    from meter.reports.reconciliation import reconciliation

    generation_id = cancelled_stream(upstream[1], meter)
    event_id = event_id_of(database, generation_id)
    estimate = stored_event(db_url, event_id)
    run_rollup(database)
    (before,) = reconciliation(database, period="week").rows
    assert before.model == MODEL
    assert (before.events, before.estimated, before.reconciled, before.lookups_pending) == (
        1, 1, 0, 1,
    )  # fmt: skip
    assert (before.events_with_provider_cost, before.provider_cost_usd) == (0, "0")
    assert estimate["completion_tokens"] < FULL_COMPLETION

    summary = run_lookups(database, lookup_settings(db_url, upstream[1]), policy=QUICK)
    assert summary.reconciled == 1
    run_rollup(database)
    (after,) = reconciliation(database, period="week").rows
    assert (after.events, after.estimated, after.reconciled, after.lookups_pending) == (1, 0, 1, 0)
    assert after.events_with_provider_cost == 1
    # meter's cost of the provider's own counts, and the provider's cost: both 10,680,000 units.
    assert (after.cost_usd, after.provider_cost_usd, after.drift_usd) == (
        "0.00001068", "0.00001068", "0",
    )  # fmt: skip
    assert before.period == after.period
