"""The roll-up on both databases: exact totals, idempotent, incremental, late events, reprice."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter.db import models
from meter.db.prices import add_price, reprice
from meter.db.session import Database
from meter.money import render_usd
from meter.pricing import SEED_MODEL, make_price
from meter.rollup import engine, run_rollup
from meter.tags import add_tag_key
from tests.factories import event
from tests.test_rollup_helpers import (
    clear,
    dirty_count,
    expected_days,
    expected_tags,
    expected_totals,
    months_from_days,
    rolled_up,
    rolled_up_days,
    rolled_up_months,
    rolled_up_tags,
    store,
    weeks_from_days,
)

W48 = date(2026, 11, 23)
NOV_24 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_totals_per_group_are_exact_sums_of_the_events(db: Database):
    store(
        db,
        [
            event(user="alice", team="search", prompt_tokens=1_000_000, completion_tokens=500_000),
            event(
                user="alice",
                team="search",
                prompt_tokens=10,
                completion_tokens=20,
                status="error",
                usage_source="estimated",
            ),
            event(
                user="bob",
                team="search",
                model="acme/unpriced",
                prompt_tokens=7,
                completion_tokens=3,
            ),
            event(prompt_tokens=1, completion_tokens=1),  # no user, no team
        ],
    )
    result = run_rollup(db)
    assert result.events_rolled_up == 4
    assert result.week_labels == ["2026-W48"]
    assert result.alerts_fired == 0
    rows = rolled_up(db)
    assert rows == {
        (W48, "search", "alice", SEED_MODEL): (
            2,
            1_000_010,
            500_020,
            1,
            1,
            0,
            110_001_100_000,
            95_003_800_000,
        ),
        (W48, "search", "bob", "acme/unpriced"): (1, 7, 3, 0, 0, 1, 0, 0),
        (W48, "", "", SEED_MODEL): (1, 1, 1, 0, 0, 0, 110_000, 190_000),
    }
    alice = rows[(W48, "search", "alice", SEED_MODEL)]
    assert render_usd(alice[6] + alice[7]) == "0.2050049"
    assert dirty_count(db) == 0


def test_running_again_changes_nothing(db: Database):
    store(db, [event(user=f"u{i % 3}", prompt_tokens=i) for i in range(30)])
    first = run_rollup(db)
    with db.engine.connect() as conn:
        before = conn.execute(sa.select(models.WeeklyUsage)).all()
    again = run_rollup(db)
    with db.engine.connect() as conn:
        after = conn.execute(sa.select(models.WeeklyUsage)).all()
    assert (first.events_rolled_up, again.events_rolled_up) == (30, 0)
    assert again.weeks == []
    assert sorted(before) == sorted(after)  # updated_at included: nothing was rewritten


def test_only_new_events_are_counted_and_a_late_event_lands_in_its_own_week(db: Database):
    store(db, [event(user="alice"), event(user="bob")])
    run_rollup(db)
    late = event(user="alice", occurred_at=datetime(2026, 10, 5, 9, tzinfo=UTC))  # W41
    store(db, [late, event(user="alice")])
    result = run_rollup(db)
    assert result.events_rolled_up == 2
    assert result.week_labels == ["2026-W41", "2026-W48"]
    rows = rolled_up(db)
    assert rows[(date(2026, 10, 5), "", "alice", SEED_MODEL)][0] == 1
    assert rows[(W48, "", "alice", SEED_MODEL)][0] == 2
    assert rows[(W48, "", "bob", SEED_MODEL)][0] == 1
    assert rows == expected_totals(db)


def test_a_duplicate_event_is_not_counted_twice(db: Database):
    e = event(user="alice")
    store(db, [e])
    run_rollup(db)
    store(db, [e])  # a replay: same id
    result = run_rollup(db)
    assert result.events_rolled_up == 0
    assert rolled_up(db)[(W48, "", "alice", SEED_MODEL)][0] == 1


def test_repriced_events_are_rolled_up_again(db: Database):
    store(db, [event(user="alice", model="acme/new", prompt_tokens=2_000, completion_tokens=500)])
    run_rollup(db)
    assert rolled_up(db)[(W48, "", "alice", "acme/new")] == (1, 2_000, 500, 0, 0, 1, 0, 0)
    with db.engine.begin() as conn:
        add_price(conn, make_price("acme/new", "1", "2", datetime(2026, 11, 1, tzinfo=UTC)))
        assert reprice(conn).weeks == ["2026-W48"]
    result = run_rollup(db)
    assert result.events_rolled_up == 0  # no new events: the same one, now priced
    assert result.week_labels == ["2026-W48"]
    row = rolled_up(db)[(W48, "", "alice", "acme/new")]
    assert row == (1, 2_000, 500, 0, 0, 0, 2_000_000_000, 1_000_000_000)
    assert render_usd(row[6] + row[7]) == "0.003"


def test_a_week_larger_than_a_chunk_is_split_and_still_exact(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(engine, "CHUNK_GROUPS", 2)
    store(db, [event(user=f"user{i}", team=f"t{i % 2}", prompt_tokens=i) for i in range(7)])
    result = run_rollup(db)
    assert (result.events_rolled_up, result.groups, result.chunks) == (7, 7, 4)
    assert rolled_up(db) == expected_totals(db)


def test_sparse_dirty_weeks_share_a_chunk_and_stay_exact(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    """Late events scattered over many weeks: weeks are gathered into chunks of up to
    CHUNK_GROUPS marks (a clean week between them is recounted, unchanged)."""
    monkeypatch.setattr(engine, "CHUNK_GROUPS", 4)
    weeks = [W48 - timedelta(weeks=k) for k in range(10)]
    store(
        db,
        [event(occurred_at=_noon(w), user="u1", prompt_tokens=10 + k) for k, w in enumerate(weeks)],
    )
    first = run_rollup(db)
    assert (first.events_rolled_up, first.groups, first.chunks) == (10, 10, 3)
    assert first.week_labels == [f"2026-W{39 + k}" for k in range(10)]
    assert rolled_up(db) == expected_totals(db)

    # Two groups in the oldest week, one in a week three later: one chunk over four weeks,
    # the two clean weeks between them left as they were.
    store(
        db,
        [
            event(occurred_at=_noon(weeks[9]), user="u1", prompt_tokens=100),
            event(occurred_at=_noon(weeks[9]), user="u2", prompt_tokens=5),
            event(occurred_at=_noon(weeks[6]), user="u1", prompt_tokens=7),
        ],
    )
    late = run_rollup(db)
    assert (late.events_rolled_up, late.groups, late.chunks) == (3, 3, 1)
    assert late.week_labels == ["2026-W39", "2026-W42"]
    rows = rolled_up(db)
    assert rows[(weeks[9], "", "u1", SEED_MODEL)][:2] == (2, 119)
    assert rows[(weeks[9], "", "u2", SEED_MODEL)][:2] == (1, 5)
    assert rows[(weeks[6], "", "u1", SEED_MODEL)][:2] == (2, 23)
    assert rows[(weeks[8], "", "u1", SEED_MODEL)][:2] == (1, 18)
    assert len(rows) == 11
    assert rows == expected_totals(db)


def _noon(week_start: date) -> datetime:
    return datetime.combine(week_start + timedelta(days=2), datetime.min.time(), UTC).replace(
        hour=12
    )


def test_a_few_dirty_groups_in_a_big_week_are_recomputed_one_by_one(db: Database):
    """After a full roll-up, two new events in a week of 40 groups touch only their groups."""
    store(db, [event(user=f"user{i:02d}", prompt_tokens=i) for i in range(40)])
    run_rollup(db)
    store(db, [event(user="user07", prompt_tokens=1000), event(user="newcomer")])
    result = run_rollup(db)
    assert (result.events_rolled_up, result.groups) == (2, 2)
    rows = rolled_up(db)
    assert rows[(W48, "", "user07", SEED_MODEL)][:2] == (2, 1007)
    assert rows[(W48, "", "newcomer", SEED_MODEL)][0] == 1
    assert len(rows) == 41
    assert rows == expected_totals(db)


def test_as_of_is_the_start_of_the_last_complete_run(db: Database):
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(models.RollupState.last_run_at)).scalar_one() is None
    store(db, [event()])
    result = run_rollup(db)
    with db.engine.connect() as conn:
        state = conn.execute(sa.select(models.RollupState.__table__)).one()
    assert state.last_run_at == result.started_at
    assert state.last_run_events == 1
    assert state.holder is None and state.lease_expires_at is None


# --- random interleavings -------------------------------------------------------------------

WEEK_STARTS = [datetime(2026, 11, 23, tzinfo=UTC) - timedelta(weeks=n) for n in (0, 1, 5)]

an_event = st.builds(
    lambda week, hours, user, team, model, prompt, completion, status, provider, tag: event(
        occurred_at=week + timedelta(hours=hours),
        user=user,
        team=team,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        status=status,
        usage_source={"incomplete": "estimated", "cancelled": "reconciled"}.get(status, "provider"),
        provider_cost_usd=provider,
        tags=tag,
    ),
    st.sampled_from(WEEK_STARTS),
    st.integers(0, 7 * 24 - 1),
    st.sampled_from([None, "alice", "bob", "org/carol"]),
    st.sampled_from([None, "search", "ads"]),
    st.sampled_from([SEED_MODEL, "acme/unpriced"]),
    st.integers(0, 5_000_000),
    st.integers(0, 5_000_000),
    st.sampled_from(["ok", "error", "incomplete", "cancelled"]),
    st.sampled_from([None, Decimal("0.000123"), Decimal("1.5")]),
    st.sampled_from([None, {"feature": "chat"}, {"feature": "search", "env": "prod"}, {}]),
)
steps = st.lists(
    st.one_of(
        st.lists(an_event, min_size=1, max_size=6).map(lambda evs: ("insert", evs)),
        st.just(("rollup", None)),
        st.just(("replay", None)),
        st.just(("tag key", None)),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps)
def test_totals_equal_the_raw_events_after_any_interleaving(db: Database, steps: list):
    """Inserts (late ones included), replays of stored ids, roll-ups and adding a tag key in any
    order: after a final roll-up, every group, day and tag row equals the sum of its raw events
    and nothing is left dirty."""
    clear(db)
    stored: list = []
    counted = 0
    for kind, payload in steps:
        if kind == "insert":
            store(db, payload)
            stored.extend(payload)
        elif kind == "replay" and stored:
            store(db, stored[-3:])
        elif kind == "rollup":
            counted += run_rollup(db).events_rolled_up
        elif kind == "tag key":  # backfilled from the events, then kept by the roll-up
            add_tag_key(db, "feature", actor="cli")
    counted += run_rollup(db).events_rolled_up
    assert rolled_up_tags(db) == expected_tags(db)
    assert rolled_up(db) == expected_totals(db)
    days = rolled_up_days(db)
    assert days == expected_days(db)
    assert weeks_from_days(days) == rolled_up(db)
    assert months_from_days(days) == rolled_up_months(db)
    assert counted == len({e.id for e in stored})
    assert dirty_count(db) == 0
    assert run_rollup(db).events_rolled_up == 0
