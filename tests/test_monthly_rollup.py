"""Monthly totals (monthly_usage): kept by the roll-up as the sums of their days, read whole by
the reports of whole months, and never read while the roll-up has them marked."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from meter.db import migrate
from meter.db.engine import make_engine
from meter.db.session import Database
from meter.money import units_to_usd
from meter.periods import pieces
from meter.pricing import SEED_MODEL
from meter.reports.period_service import billing_report
from meter.reports.service import user_report
from meter.rollup import run_rollup
from tests.conftest import DatabaseFactory
from tests.factories import event
from tests.test_rollup_helpers import (
    expected_days,
    marked_months,
    months_from_days,
    rolled_up_days,
    rolled_up_months,
    store,
)

NY = ZoneInfo("America/New_York")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)  # type: ignore[misc]


def _spread() -> list:
    """Events of two users over October-December 2026 in New York: month ends, the 25-hour
    2026-11-01, and the weeks that straddle two months (W44: Oct 26 - Nov 1; W49: Nov 30 -
    Dec 6)."""
    out = []
    for i, (y, m, d, h) in enumerate(
        [
            (2026, 10, 1, 9),
            (2026, 10, 26, 12),
            (2026, 10, 31, 23),  # W44, October
            (2026, 11, 1, 0),  # W44, November (the 25-hour day)
            (2026, 11, 1, 23),
            (2026, 11, 15, 8),
            (2026, 11, 30, 23),  # W49, November
            (2026, 12, 1, 0),  # W49, December
            (2026, 12, 31, 23),
        ]
    ):
        user = "alice" if i % 2 else "bob"
        out.append(
            event(
                user=user,
                team="search",
                occurred_at=local(y, m, d, h, 30),
                prompt_tokens=100 + i,
                completion_tokens=10 + i,
            )
        )
    return out


def _bill(db: Database, month: str) -> dict[str | None, tuple[int, int, int, Decimal]]:
    report, _ = billing_report(db, month=month)
    return {
        e.user: (e.requests, e.prompt_tokens, e.completion_tokens, Decimal(e.cost_usd or "0"))
        for e in report.users
    }


def _cost(prompt: int, completion: int) -> Decimal:
    return units_to_usd(prompt * 110_000 + completion * 190_000)


def test_months_are_the_sums_of_their_days_and_follow_late_events(
    databases: DatabaseFactory,
) -> None:
    db = databases.database("America/New_York")
    store(db, _spread())
    run_rollup(db)
    days = rolled_up_days(db)
    assert days == expected_days(db)
    months = rolled_up_months(db)
    assert months == months_from_days(days)
    assert not marked_months(db)
    # November: alice's events 3 (the 25-hour day) and 5; bob's 4 and 6 (11-30, in W49).
    nov = {k[2]: v for k, v in months.items() if k[0] == date(2026, 11, 1)}
    assert nov["alice"][:3] == (2, 103 + 105, 13 + 15)
    assert nov["bob"][:3] == (2, 104 + 106, 14 + 16)
    assert _bill(db, "2026-11") == {
        "alice": (2, 208, 28, _cost(208, 28)),
        "bob": (2, 210, 30, _cost(210, 30)),
    }
    # A late event in the week that straddles October and November changes both months' rows
    # only where its day lies.
    late = event(
        user="alice", team="search", occurred_at=local(2026, 10, 27, 10), prompt_tokens=1000
    )
    store(db, [late])
    run_rollup(db)
    assert rolled_up_months(db) == months_from_days(rolled_up_days(db))
    after = {k: v for k, v in rolled_up_months(db).items()}
    october = (date(2026, 10, 1), "search", "alice", SEED_MODEL)
    assert after[october][:2] == (months[october][0] + 1, months[october][1] + 1000)
    for key in months:
        if key != october:
            assert after[key] == months[key]
    assert not marked_months(db)


def test_a_marked_month_is_read_from_its_weeks_and_days(databases: DatabaseFactory) -> None:
    db = databases.database("America/New_York")
    store(db, _spread())
    run_rollup(db)
    exact = _bill(db, "2026-11")
    # The whole month is read from monthly_usage: a change there shows in the bill ...
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE monthly_usage SET requests = requests + 1000"))
    assert _bill(db, "2026-11")["alice"][0] == exact["alice"][0] + 1000
    # ... unless the month is marked (a roll-up changed its days and has not rewritten it
    # yet): then its weeks and days are read, and the bill is exact.
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO rollup_dirty_months (month_start) VALUES ('2026-11-01')"))
    assert _bill(db, "2026-11") == exact
    assert user_report(db, "alice", month="2026-11").total_cost_usd == str(exact["alice"][3])
    # The next run, even with nothing to roll up, rewrites the marked month.
    assert run_rollup(db).events_rolled_up == 0
    assert not marked_months(db)
    months = rolled_up_months(db)
    assert months[(date(2026, 11, 1), "search", "alice", SEED_MODEL)][0] == exact["alice"][0]
    assert months[(date(2026, 10, 1), "search", "alice", SEED_MODEL)][0] == 1000 + 1  # unmarked
    assert _bill(db, "2026-11") == exact


def test_a_range_splits_into_clean_months_whole_weeks_and_days() -> None:
    # 2026-10-15 .. 2027-01-10; November is marked, so it is read as weeks and days, and the
    # run of days from October 15 through November 30 keeps its weeks whole across the 1st.
    p = pieces(date(2026, 10, 15), date(2027, 1, 10), {date(2026, 11, 1)})
    assert p.months == [date(2026, 12, 1)]
    assert p.weeks == [date(2026, 10, 19) + timedelta(days=7 * i) for i in range(6)] + [
        date(2027, 1, 4)
    ]
    assert p.days == [
        (date(2026, 10, 15), date(2026, 10, 18)),
        (date(2026, 11, 30), date(2026, 11, 30)),
        (date(2027, 1, 1), date(2027, 1, 3)),
    ]
    # Every day of any range is covered exactly once.
    start = date(2026, 1, 1)
    for a_off in range(0, 400, 37):
        for length in (1, 6, 7, 30, 31, 62, 100, 365):
            a = start + timedelta(days=a_off)
            b = a + timedelta(days=length - 1)
            for skip in (set(), {a.replace(day=1)}, {b.replace(day=1)}):
                p = pieces(a, b, skip)
                covered: list[date] = []
                for m in p.months:
                    n = (m.replace(day=28) + timedelta(days=4)).replace(day=1)
                    covered += [m + timedelta(days=i) for i in range((n - m).days)]
                    assert m not in skip
                covered += [w + timedelta(days=i) for w in p.weeks for i in range(7)]
                for lo, hi in p.days:
                    covered += [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]
                assert sorted(covered) == [a + timedelta(days=i) for i in range(length)]


def test_the_migration_marks_every_rolled_up_month(databases: DatabaseFactory) -> None:
    url = databases.url(timezone="America/New_York", migrated=False)
    engine = make_engine(url)
    try:
        migrate.upgrade(engine, "America/New_York", revision="0005")
        db = Database(engine=engine, tz=NY)
        with engine.begin() as conn:
            for day, n in ((date(2026, 10, 31), 2), (date(2026, 11, 1), 3), (date(2026, 12, 7), 4)):
                monday = day - timedelta(days=day.weekday())
                conn.execute(
                    sa.text(
                        'INSERT INTO daily_usage (day, team, "user", model, week_start, requests, '
                        "prompt_tokens, completion_tokens, errors, estimated, unpriced, "
                        "input_cost_units, output_cost_units, reconciled, provider_cost_events, "
                        "provider_cost_units, provider_meter_cost_units, updated_at) VALUES "
                        "(:d, 'search', 'alice', :m, :w, :n, :n, :n, 0, 0, 0, :n, :n, 0, 0, 0, 0, "
                        ":now)"
                    ).bindparams(
                        sa.bindparam("d", type_=sa.Date()),
                        sa.bindparam("w", type_=sa.Date()),
                        sa.bindparam("now", type_=sa.DateTime()),
                    ),
                    {"d": day, "w": monday, "m": SEED_MODEL, "n": n, "now": datetime(2026, 12, 7)},
                )
            conn.execute(  # as the roll-up keeps them: a week is the sum of its days
                sa.text(
                    'INSERT INTO weekly_usage SELECT week_start, team, "user", model, '
                    "SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors), "
                    "SUM(estimated), SUM(unpriced), SUM(input_cost_units), "
                    "SUM(output_cost_units), MAX(updated_at) FROM daily_usage "
                    'GROUP BY week_start, team, "user", model'
                )
            )
        migrate.upgrade(engine, "America/New_York")
        assert marked_months(db) == [date(2026, 10, 1), date(2026, 11, 1), date(2026, 12, 1)]
        assert rolled_up_months(db) == {}
        run_rollup(db)
        assert not marked_months(db)
        assert {k[0]: v[0] for k, v in rolled_up_months(db).items()} == {
            date(2026, 10, 1): 2,
            date(2026, 11, 1): 3,
            date(2026, 12, 1): 4,
        }
    finally:
        engine.dispose()
