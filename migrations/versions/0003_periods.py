"""periods: events' local day, daily and tag roll-ups, budget periods

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 10:00:00.000000

Data: every stored event gets its local date in the database's timezone (computed here with
zoneinfo, week by week, from each local midnight's UTC instant), and daily_usage is filled from
the events of every group already rolled up, so that days, months and those weeks agree from
the start (groups still marked dirty get their days from the next roll-up). Existing
budgets and alerts become week ones, unchanged.
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

import meter.db.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOTALS = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "errors",
    "estimated",
    "unpriced",
    "input_cost_units",
    "output_cost_units",
]


def _totals_columns() -> list[sa.Column[Any]]:
    return [sa.Column(c, sa.BigInteger(), nullable=False) for c in _TOTALS]


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("day", sa.Date(), nullable=True))
    _backfill_days()
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.alter_column("day", existing_type=sa.Date(), nullable=False)

    op.create_table(
        "daily_usage",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("team", sa.String(length=200), nullable=False),
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("week_start", sa.Date(), nullable=False),
        *_totals_columns(),
        sa.Column("reconciled", sa.BigInteger(), nullable=False),
        sa.Column("provider_cost_events", sa.BigInteger(), nullable=False),
        sa.Column("provider_cost_units", sa.BigInteger(), nullable=False),
        sa.Column("provider_meter_cost_units", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", meter.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("day", "team", "user", "model", name=op.f("pk_daily_usage")),
    )
    with op.batch_alter_table("daily_usage", schema=None) as batch_op:
        batch_op.create_index("ix_daily_usage_team_day", ["team", "day"], unique=False)
        batch_op.create_index("ix_daily_usage_user_day", ["user", "day"], unique=False)
        batch_op.create_index(
            "ix_daily_usage_week_group", ["week_start", "team", "user", "model"], unique=False
        )

    op.create_table(
        "tag_keys",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("created_at", meter.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_tag_keys")),
    )
    op.create_table(
        "daily_tag_usage",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tag_key", sa.String(length=100), nullable=False),
        sa.Column("tag_value", sa.String(length=500), nullable=False),
        sa.Column("team", sa.String(length=200), nullable=False),
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("week_start", sa.Date(), nullable=False),
        *_totals_columns(),
        sa.Column("updated_at", meter.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "tag_key", "tag_value", "team", "user", "model", name=op.f("pk_daily_tag_usage")
        ),
    )
    with op.batch_alter_table("daily_tag_usage", schema=None) as batch_op:
        batch_op.create_index(
            "ix_daily_tag_usage_key_value_day", ["tag_key", "tag_value", "day"], unique=False
        )
        batch_op.create_index(
            "ix_daily_tag_usage_week_group", ["week_start", "team", "user", "model"], unique=False
        )

    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("period", sa.String(length=8), server_default="week", nullable=False)
        )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("period", sa.String(length=8), server_default="week", nullable=False)
        )

    _backfill_daily_usage()


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("period")
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_column("period")
    with op.batch_alter_table("daily_tag_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_daily_tag_usage_week_group")
        batch_op.drop_index("ix_daily_tag_usage_key_value_day")
    op.drop_table("daily_tag_usage")
    op.drop_table("tag_keys")
    with op.batch_alter_table("daily_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_daily_usage_week_group")
        batch_op.drop_index("ix_daily_usage_user_day")
        batch_op.drop_index("ix_daily_usage_team_day")
    op.drop_table("daily_usage")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("day")


def _timezone(conn: sa.Connection) -> ZoneInfo:
    name = conn.execute(
        sa.text("SELECT value FROM meter_meta WHERE key = 'timezone'")
    ).scalar_one_or_none()
    return ZoneInfo(name or "UTC")


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _backfill_days() -> None:
    """Each week's events get their day from the week's eight local midnights (as naive UTC,
    the way occurred_at is stored): one UPDATE per week, exact across DST changes."""
    conn = op.get_bind()
    tz = _timezone(conn)
    weeks = [
        _as_date(w)
        for w in conn.execute(sa.text("SELECT DISTINCT week_start FROM events")).scalars()
    ]
    for monday in weeks:
        days = [monday + timedelta(days=i) for i in range(8)]
        edges = [
            datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
            for d in days
        ]
        cases = " ".join(f"WHEN occurred_at < :e{i + 1} THEN :d{i}" for i in range(7))
        params: dict[str, Any] = {"w": monday}
        binds = [sa.bindparam("w", type_=sa.Date())]
        for i in range(7):
            params[f"d{i}"] = days[i]
            params[f"e{i + 1}"] = edges[i + 1]
            binds += [
                sa.bindparam(f"d{i}", type_=sa.Date()),
                sa.bindparam(f"e{i + 1}", type_=sa.DateTime()),
            ]
        conn.execute(
            sa.text(
                f"UPDATE events SET day = CASE {cases} ELSE :d6 END WHERE week_start = :w"
            ).bindparams(*binds),
            params,
        )


def _backfill_daily_usage() -> None:
    conn = op.get_bind()
    now = sa.bindparam("now", type_=meter.db.models.UTCDateTime())
    conn.execute(
        sa.text(
            'INSERT INTO daily_usage (day, team, "user", model, week_start, '
            "requests, prompt_tokens, completion_tokens, errors, estimated, unpriced, "
            "input_cost_units, output_cost_units, reconciled, provider_cost_events, "
            "provider_cost_units, provider_meter_cost_units, updated_at) "
            'SELECT e.day, e.team, e."user", e.model, MIN(e.week_start), COUNT(*), '
            "COALESCE(SUM(e.prompt_tokens), 0), COALESCE(SUM(e.completion_tokens), 0), "
            "COALESCE(SUM(CASE WHEN e.status = 'error' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN e.usage_source = 'estimated' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN e.input_cost_units IS NULL THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(e.input_cost_units), 0), COALESCE(SUM(e.output_cost_units), 0), "
            "COALESCE(SUM(CASE WHEN e.usage_source = 'reconciled' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN e.provider_cost_units IS NULL THEN 0 ELSE 1 END), 0), "
            "COALESCE(SUM(e.provider_cost_units), 0), "
            "COALESCE(SUM(CASE WHEN e.provider_cost_units IS NULL THEN 0 "
            "ELSE COALESCE(e.input_cost_units, 0) + COALESCE(e.output_cost_units, 0) END), 0), "
            ":now FROM events e "
            # Only groups already rolled up: the others have their mark, and the roll-up writes
            # a group's days and its week together (a range without weekly rows has no days).
            "WHERE EXISTS (SELECT 1 FROM weekly_usage w WHERE w.week_start = e.week_start "
            'AND w.team = e.team AND w."user" = e."user" AND w.model = e.model) '
            'GROUP BY e.day, e.team, e."user", e.model'
        ).bindparams(now),
        {"now": datetime.now(UTC)},
    )
