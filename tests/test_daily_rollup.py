"""Daily totals in the database's timezone: local midnights, month ends, a 25-hour day, late
events, and the migration that fills them from events stored before it."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from meter.db import migrate
from meter.db.engine import make_engine
from meter.db.ledger import insert_events, load_price_book
from meter.db.session import Database
from meter.periods import parse_period, window_of
from meter.pricing import SEED_MODEL
from meter.rollup import run_rollup
from meter.weeks import load_timezone
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.test_rollup_helpers import (
    TOTALS,
    expected_days,
    expected_totals,
    marked_months,
    months_from_days,
    rolled_up,
    rolled_up_days,
    rolled_up_months,
    store,
    weeks_from_days,
)

NY = ZoneInfo("America/New_York")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)  # type: ignore[misc]


def days_of(db: Database) -> dict[date, int]:
    """requests per local day."""
    out: dict[date, int] = defaultdict(int)
    for (day, *_), totals in rolled_up_days(db).items():
        out[day] += totals[0]
    return dict(out)


def test_events_land_on_their_local_day_month_and_week(databases: DatabaseFactory):
    db = databases.database("America/New_York")
    store(
        db,
        [
            event(occurred_at=local(2026, 11, 29, 23, 30)),  # Sunday, week 48
            event(occurred_at=local(2026, 11, 30, 0, 30)),  # Monday, week 49
            event(occurred_at=local(2026, 11, 30, 23, 30)),  # last hour of November
            event(occurred_at=local(2026, 12, 1, 0, 30)),  # first of December
            # 2026-11-01 lasts 25 hours: 00:30 EDT (04:30Z) to 23:30 EST (next day 04:30Z)
            event(occurred_at=local(2026, 11, 1, 0, 30)),
            event(occurred_at=datetime(2026, 11, 2, 4, 30, tzinfo=UTC)),
            event(occurred_at=datetime(2026, 11, 2, 5, 30, tzinfo=UTC)),  # 11-02 00:30 EST
            event(occurred_at=datetime(2026, 10, 31, 3, 59, tzinfo=UTC)),  # 10-30 23:59 EDT
        ],
    )
    assert run_rollup(db).events_rolled_up == 8
    assert days_of(db) == {
        date(2026, 10, 30): 1,
        date(2026, 11, 1): 2,
        date(2026, 11, 2): 1,
        date(2026, 11, 29): 1,
        date(2026, 11, 30): 2,
        date(2026, 12, 1): 1,
    }
    november = parse_period("month", "2026-11")
    per_day = days_of(db)
    assert sum(n for d, n in per_day.items() if november.start <= d < november.end) == 6
    start, end = parse_period("day", "2026-11-01").bounds(NY)
    assert end - start == timedelta(hours=25)
    assert window_of("month", datetime(2026, 12, 1, 4, 59, tzinfo=UTC), NY).label == "2026-11"
    assert window_of("month", datetime(2026, 12, 1, 5, 0, tzinfo=UTC), NY).label == "2026-12"
    days = rolled_up_days(db)
    assert days == expected_days(db)
    assert weeks_from_days(days) == rolled_up(db) == expected_totals(db)
    assert months_from_days(days) == rolled_up_months(db) and not marked_months(db)
    weeks = {k[0] for k in rolled_up(db)}
    assert weeks == {date(2026, 10, 26), date(2026, 11, 2), date(2026, 11, 23), date(2026, 11, 30)}


def test_late_events_count_once_in_their_day_week_and_month(db: Database):
    store(db, [event(user="alice", occurred_at=datetime(2026, 11, 24, 12, tzinfo=UTC))])
    run_rollup(db)
    late = [
        event(user="alice", occurred_at=datetime(2026, 11, 3, 9, tzinfo=UTC), prompt_tokens=7),
        event(user="bob", occurred_at=datetime(2026, 11, 3, 23, tzinfo=UTC), prompt_tokens=5),
    ]
    store(db, late)
    store(db, late)  # a replay counts nothing
    result = run_rollup(db)
    assert result.events_rolled_up == 2
    assert result.week_labels == ["2026-W45"]
    days = rolled_up_days(db)
    assert days[(date(2026, 11, 3), "", "alice", SEED_MODEL)][:3] == (1, 7, 1)
    assert days[(date(2026, 11, 3), "", "bob", SEED_MODEL)][:3] == (1, 5, 1)
    assert days == expected_days(db)
    assert weeks_from_days(days) == rolled_up(db)
    assert months_from_days(days) == rolled_up_months(db)
    assert run_rollup(db).events_rolled_up == 0
    assert rolled_up_days(db) == days


def test_provider_sums_and_sources_are_rolled_up_per_day(db: Database):
    at = datetime(2026, 11, 24, 12, tzinfo=UTC)
    store(
        db,
        [
            event(occurred_at=at, provider_cost_usd=Decimal("0.0001"), prompt_tokens=1000),
            event(occurred_at=at, provider_cost_usd=Decimal("0.000002"), usage_source="reconciled"),
            event(occurred_at=at, usage_source="estimated", status="incomplete"),
            event(occurred_at=at, model="acme/unpriced", provider_cost_usd=Decimal("0.5")),
        ],
    )
    run_rollup(db)
    days = rolled_up_days(db)
    seed_row = days[(date(2026, 11, 24), "", "", SEED_MODEL)]
    seed = dict(zip(TOTALS, seed_row[: len(TOTALS)], strict=True))
    # reconciled, provider events, provider units, meter's cost of those events
    assert seed_row[8:] == (
        1,
        2,
        100_000_000 + 2_000_000,
        1000 * 110_000 + 190_000 + 110_000 + 190_000,
    )
    assert seed["estimated"] == 1
    unpriced = days[(date(2026, 11, 24), "", "", "acme/unpriced")]
    assert unpriced[8:] == (0, 1, 500_000_000_000, 0)
    assert days == expected_days(db)


def test_the_migration_gives_stored_events_their_day_and_daily_rows(databases: DatabaseFactory):
    url = databases.url(timezone="America/New_York", migrated=False)
    engine = make_engine(url)
    try:
        migrate.upgrade(engine, "America/New_York", revision="0002")
        moments = [
            local(2026, 11, 1, 0, 30),
            datetime(2026, 11, 2, 4, 30, tzinfo=UTC),  # still 2026-11-01 local (25 h day)
            datetime(2026, 11, 2, 5, 30, tzinfo=UTC),
            local(2026, 11, 30, 23, 59),
            local(2026, 12, 1, 0, 0),
        ]
        with engine.begin() as conn:
            for i, moment in enumerate(moments):
                utc = moment.astimezone(UTC).replace(tzinfo=None)
                monday = moment.astimezone(NY).date()
                monday -= timedelta(days=monday.weekday())
                conn.execute(
                    sa.text(
                        'INSERT INTO events (id, occurred_at, week_start, model, "user", team, '
                        "prompt_tokens, completion_tokens, status, usage_source, "
                        "input_cost_units, output_cost_units, received_at) VALUES "
                        "(:id, :at, :w, :m, 'alice', 'search', 10, 20, 'ok', 'provider', "
                        ":i, :o, :at)"
                    ).bindparams(
                        sa.bindparam("at", type_=sa.DateTime()),
                        sa.bindparam("w", type_=sa.Date()),
                        sa.bindparam("id", type_=sa.Uuid()),
                    ),
                    {
                        "id": uuid.UUID(int=i + 1),
                        "at": utc,
                        "w": monday,
                        "m": SEED_MODEL,
                        "i": 10 * 110_000,
                        "o": 20 * 190_000,
                    },
                )
            # As the roll-up of 0002 left them (without marks: they are rolled up).
            conn.execute(
                sa.text(
                    'INSERT INTO weekly_usage SELECT week_start, team, "user", model, COUNT(*), '
                    "SUM(prompt_tokens), SUM(completion_tokens), 0, 0, 0, SUM(input_cost_units), "
                    "SUM(output_cost_units), MIN(received_at) FROM events "
                    'GROUP BY week_start, team, "user", model'
                )
            )
        migrate.upgrade(engine, "America/New_York")
        db = Database(engine=engine, tz=load_timezone("America/New_York"))
        days = rolled_up_days(db)
        assert days == expected_days(db)  # also checks every event's stored day
        assert {k[0]: v[0] for k, v in days.items()} == {
            date(2026, 11, 1): 2,
            date(2026, 11, 2): 1,
            date(2026, 11, 30): 1,
            date(2026, 12, 1): 1,
        }
        # New events after the upgrade join the same days.
        with engine.begin() as conn:
            insert_events(
                conn,
                [event(user="alice", team="search", occurred_at=local(2026, 11, 1, 23, 0))],
                load_price_book(conn),
                db.tz,
            )
        run_rollup(db)
        assert rolled_up_days(db)[(date(2026, 11, 1), "search", "alice", SEED_MODEL)][0] == 3
        assert weeks_from_days(rolled_up_days(db)) == rolled_up(db) == expected_totals(db)
        assert months_from_days(rolled_up_days(db)) == rolled_up_months(db)
    finally:
        engine.dispose()


def test_a_range_splits_into_whole_weeks_and_edge_days():
    from meter.periods import whole_weeks

    # November 2026: Sunday the 1st, Monday the 30th
    weeks, edges = whole_weeks(date(2026, 11, 1), date(2026, 11, 30))
    assert weeks == [date(2026, 11, 2) + timedelta(days=7 * i) for i in range(4)]
    assert edges == [
        (date(2026, 11, 1), date(2026, 11, 1)),
        (date(2026, 11, 30), date(2026, 11, 30)),
    ]
    assert whole_weeks(date(2026, 11, 23), date(2026, 11, 29)) == ([date(2026, 11, 23)], [])
    assert whole_weeks(date(2026, 11, 24), date(2026, 11, 29)) == (
        [], [(date(2026, 11, 24), date(2026, 11, 29))],
    )  # fmt: skip
    for first in range(1, 29):
        for last in range(first, 31):
            a, b = date(2026, 11, first), date(2026, 11, last)
            weeks, edges = whole_weeks(a, b)
            days = {w + timedelta(days=i) for w in weeks for i in range(7)}
            for lo, hi in edges:
                days |= {lo + timedelta(days=i) for i in range((hi - lo).days + 1)}
            n = (b - a).days + 1
            assert days == {a + timedelta(days=i) for i in range(n)}
            assert 7 * len(weeks) + sum((hi - lo).days + 1 for lo, hi in edges) == n
