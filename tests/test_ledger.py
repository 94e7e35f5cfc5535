"""The ledger on both databases: exact costs, frozen prices, dedupe, reprice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter.db import models
from meter.db.ledger import insert_events, load_price_book
from meter.db.prices import add_price, reprice
from meter.db.session import Database
from meter.money import render_usd
from meter.pricing import SEED_MODEL, make_price
from tests.factories import event


def store(db: Database, events: list) -> tuple[int, int]:
    with db.engine.begin() as conn:
        result = insert_events(conn, events, load_price_book(conn), db.tz)
    return result.inserted, result.duplicates


def costs(db: Database) -> list[tuple[int | None, int | None]]:
    with db.engine.connect() as conn:
        return [
            (r.input_cost_units, r.output_cost_units)
            for r in conn.execute(
                sa.select(models.Event.input_cost_units, models.Event.output_cost_units).order_by(
                    models.Event.id
                )
            )
        ]


def test_ten_thousand_one_plus_one_token_calls_cost_exactly_three_tenths_of_a_cent(db: Database):
    assert store(db, [event() for _ in range(10_000)]) == (10_000, 0)
    with db.engine.connect() as conn:
        total = conn.execute(
            sa.select(sa.func.sum(models.Event.input_cost_units + models.Event.output_cost_units))
        ).scalar_one()
    assert render_usd(int(total)) == "0.003"


def test_duplicate_ids_are_counted_not_stored_twice(db: Database):
    first = event()
    again = event(id=first.id, prompt_tokens=999)
    assert store(db, [first, again, event()]) == (2, 1)
    assert store(db, [first]) == (0, 1)
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(models.Event.prompt_tokens)).scalars().all()
    assert sorted(rows) == [1, 1]


def test_a_batch_split_over_many_statements_counts_every_duplicate(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    """SQLite inserts as many rows per statement as its parameter limit allows: with a limit of
    7 rows, 2,000 events take 286 statements and still count exactly."""
    from meter.db import ledger

    monkeypatch.setattr(ledger, "_sqlite_limit", [7 * len(ledger.EVENT_COLUMNS)])
    stored = [event(user=f"u{i % 37}", prompt_tokens=i) for i in range(300)]
    assert store(db, stored) == (300, 0)
    fresh = [event(user=f"u{i % 41}", prompt_tokens=1_000 + i) for i in range(1_500)]
    batch = [*fresh, *stored[::2], *fresh[:50]]  # 150 stored before, 50 repeated in the batch
    assert store(db, batch) == (1_500, 200)
    with db.engine.connect() as conn:
        count, tokens = conn.execute(
            sa.select(sa.func.count(), sa.func.sum(models.Event.prompt_tokens))
        ).one()
        marks = conn.execute(sa.select(sa.func.count()).select_from(models.RollupDirty)).scalar()
    assert count == 1_800
    assert tokens == sum(range(300)) + sum(range(1_000, 2_500))
    assert marks == 41  # users u0..u40, one week, one model, no team


def test_a_price_added_later_does_not_change_earlier_events(db: Database):
    before = event(
        prompt_tokens=1_000_000,
        completion_tokens=1_000_000,
        occurred_at=datetime(2026, 11, 2, tzinfo=UTC),
    )
    store(db, [before])
    with db.engine.begin() as conn:
        add_price(conn, make_price(SEED_MODEL, "0.50", "0.90", datetime(2026, 11, 10, tzinfo=UTC)))
    after = event(
        prompt_tokens=1_000_000,
        completion_tokens=1_000_000,
        occurred_at=datetime(2026, 11, 11, tzinfo=UTC),
    )
    backdated = event(
        prompt_tokens=1_000_000,
        completion_tokens=1_000_000,
        occurred_at=datetime(2026, 11, 3, tzinfo=UTC),
    )
    store(db, [after, backdated])
    with db.engine.connect() as conn:
        rows = dict(conn.execute(sa.select(models.Event.id, models.Event.input_cost_units)).all())
    assert render_usd(rows[before.id]) == "0.11"
    assert render_usd(rows[backdated.id]) == "0.11"  # priced at its occurred_at
    assert render_usd(rows[after.id]) == "0.5"
    with db.engine.begin() as conn:
        assert reprice(conn).events == 0  # nothing unpriced, nothing touched
    assert render_usd(costs(db)[0][0]) == "0.11"


def test_unknown_model_is_unpriced_until_a_price_covers_it_then_reprice(db: Database):
    e = event(
        model="acme/new-model",
        prompt_tokens=2_000,
        completion_tokens=500,
        occurred_at=datetime(2026, 11, 20, tzinfo=UTC),
    )
    store(db, [e])
    assert costs(db) == [(None, None)]
    with db.engine.begin() as conn:
        add_price(
            conn,
            make_price("acme/new-model", "1.5", "2.000001", datetime(2026, 11, 21, tzinfo=UTC)),
        )
        assert reprice(conn).events == 0  # the price starts after the event
    with db.engine.begin() as conn:
        add_price(conn, make_price("acme/new-model", "1", "2", datetime(2026, 11, 1, tzinfo=UTC)))
        result = reprice(conn)
    assert result.events == 1
    assert result.weeks == ["2026-W47"]
    ((input_units, output_units),) = costs(db)
    assert render_usd(input_units) == "0.002"
    assert render_usd(output_units) == "0.001"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt=st.integers(0, 10_000_000),
    completion=st.integers(0, 10_000_000),
    input_micro=st.integers(0, 100_000_000),
    output_micro=st.integers(0, 100_000_000),
)
def test_stored_cost_is_the_exact_decimal_product(
    db: Database, prompt: int, completion: int, input_micro: int, output_micro: int
):
    """Random prices with up to 6 decimals per 1M tokens, random token counts."""
    input_price = Decimal(input_micro).scaleb(-6)
    output_price = Decimal(output_micro).scaleb(-6)
    model = f"prop/{input_micro}-{output_micro}"
    when = datetime(2026, 1, 5, tzinfo=UTC)
    with db.engine.begin() as conn:
        existing = conn.execute(
            sa.select(models.Price.id).where(models.Price.model == model)
        ).first()
        if existing is None:
            add_price(conn, make_price(model, str(input_price), str(output_price), when))
    e = event(
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        occurred_at=when + timedelta(days=1),
    )
    store(db, [e])
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(models.Event.input_cost_units, models.Event.output_cost_units).where(
                models.Event.id == e.id
            )
        ).one()
    expected_in = input_price * prompt / Decimal(10**6)
    expected_out = output_price * completion / Decimal(10**6)
    assert Decimal(render_usd(row.input_cost_units)) == expected_in
    assert Decimal(render_usd(row.output_cost_units)) == expected_out
    assert Decimal(render_usd(row.input_cost_units + row.output_cost_units)) == (
        expected_in + expected_out
    )
    assert "E" not in render_usd(row.input_cost_units)


def test_occurred_at_with_offset_lands_in_its_utc_week(db: Database):
    from zoneinfo import ZoneInfo

    late_sunday_local = datetime(2026, 11, 29, 20, 0, tzinfo=ZoneInfo("America/New_York"))
    e = event(occurred_at=late_sunday_local)  # Monday 01:00 UTC
    store(db, [e])
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(models.Event.occurred_at, models.Event.week_start)).one()
    assert row.occurred_at == datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
    assert row.week_start.isoformat() == "2026-11-30"


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)
_AWKWARD = st.sampled_from(["\\", "\t", "\n", "\r", "\\N", "\\t", "a\\\tb\r\n", "", " ", "'\""])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(st.one_of(_TEXT, _AWKWARD), min_size=5, max_size=5),
    tag_value=st.one_of(_TEXT, _AWKWARD),
    micros=st.integers(0, 999_999),
)
def test_every_text_field_is_stored_verbatim(
    db: Database, texts: list[str], tag_value: str, micros: int
):
    """Backslashes, tabs, newlines and `\\N` in any text field: PostgreSQL's rows travel in
    COPY's text format, where each of those means something."""
    model, user, team, gen, tag_key = texts
    when = datetime(2026, 11, 24, 12, 0, 1, micros, tzinfo=UTC)
    e = event(
        model=model or "m",
        user=user,
        team=team,
        generation_id=gen,
        tags={tag_key: tag_value},
        occurred_at=when,
        latency_ms=micros,
    )
    plain = event(occurred_at=when)  # shares the batch: the fast path beside the escaped one
    assert store(db, [e, plain]) == (2, 0)
    with db.engine.connect() as conn:
        columns = sa.select(*models.Event.__table__.c)
        row = conn.execute(columns.where(models.Event.id == e.id)).one()
        other = conn.execute(columns.where(models.Event.id == plain.id)).one()
        conn.execute(sa.delete(models.Event))
        conn.commit()
    assert (row.model, row.user, row.team, row.generation_id) == (model or "m", user, team, gen)
    assert row.tags == {tag_key: tag_value}
    assert row.occurred_at == when and row.week_start.isoformat() == "2026-11-23"
    assert (row.latency_ms, row.ttft_ms, row.cached_tokens) == (micros, None, None)
    assert (other.user, other.team, other.tags, other.generation_id) == ("", "", None, None)
    assert other.occurred_at == when


def test_estimated_events_with_a_generation_id_are_queued_for_a_lookup_in_the_same_batch(
    db: Database,
):
    occurred = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    received = datetime(2026, 11, 24, 12, 0, 3, tzinfo=UTC)
    cancelled = event(status="cancelled", usage_source="estimated", generation_id="gen-a")
    cut = event(status="incomplete", usage_source="estimated", generation_id="gen-b")
    quiet = [
        event(generation_id="gen-ok"),  # provider usage: nothing to look up
        event(status="cancelled", usage_source="estimated"),  # no generation to ask about
        event(status="error", usage_source="none", generation_id="gen-e", prompt_tokens=0),
    ]
    with db.engine.begin() as conn:
        insert_events(
            conn,
            [cancelled, *quiet, cut, cancelled],  # a repeated id is queued once
            load_price_book(conn),
            db.tz,
            received_at=received,
            lookup_window=timedelta(minutes=10),
        )
        # A replay of a stored event changes nothing, not even a lookup's state.
        conn.execute(
            sa.update(models.GenerationLookup)
            .where(models.GenerationLookup.event_id == cut.id)
            .values(state="done", attempts=3)
        )
        insert_events(conn, [cut], load_price_book(conn), db.tz)
    g = models.GenerationLookup
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                g.event_id, g.generation_id, g.state, g.attempts, g.next_attempt_at, g.deadline_at
            ).order_by(g.generation_id)
        ).all()
    assert [tuple(r) for r in rows] == [
        (cancelled.id, "gen-a", "pending", 0, received, occurred + timedelta(minutes=10)),
        (cut.id, "gen-b", "done", 3, received, occurred + timedelta(minutes=10)),
    ]
