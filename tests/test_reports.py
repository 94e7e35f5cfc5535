"""Report sums across roll-up rows are exact past 2^63 units (SQLite's SUM would overflow)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meter.db.prices import add_price
from meter.db.session import Database
from meter.pricing import make_price
from meter.reports import team_summary, user_report, weekly_usage
from meter.rollup import run_rollup
from meter.weeks import now_utc, week_of
from tests.factories import event
from tests.test_rollup_helpers import store

BIG = "acme/very-expensive"


def test_ten_million_dollars_in_one_team_week_is_summed_exactly(db: Database):
    """Each user's row holds 10^18 units ($1M); the team's 10^19 is past 2^63 - 1."""
    with db.engine.begin() as conn:
        add_price(conn, make_price(BIG, "1000", "0", datetime(2020, 1, 6, tzinfo=UTC)))
    this = week_of(now_utc(), db.tz)
    at = this.bounds(db.tz)[0] + timedelta(minutes=1)
    store(db, [
        event(model=BIG, team="labs", user=f"u{i}", prompt_tokens=10**9, completion_tokens=0,
              occurred_at=at)
        for i in range(10)
    ])  # fmt: skip
    run_rollup(db)

    rows = weekly_usage(db, first=this.label, last=this.label, group_by="team").rows
    assert [(r.team, r.prompt_tokens, r.input_cost_usd, r.cost_usd) for r in rows] == [
        ("labs", 10 * 10**9, "10000000", "10000000")
    ]
    summary = team_summary(db, "labs", weeks=1)
    assert summary.weeks[0].cost_usd == "10000000"
    assert [u.cost_usd for u in summary.top_users] == ["1000000"] * 10
    assert user_report(db, "u3", week=this.label).total_cost_usd == "1000000"
