"""monthly roll-up: totals per (local month, team, user, model) and the months to recompute

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 23:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import meter.db.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOTALS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "errors",
    "estimated",
    "unpriced",
    "input_cost_units",
    "output_cost_units",
)


def upgrade() -> None:
    op.create_table(
        "monthly_usage",
        sa.Column("month_start", sa.Date(), nullable=False),
        sa.Column("team", sa.String(length=200), nullable=False),
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _TOTALS),
        sa.Column("updated_at", meter.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month_start", "team", "user", "model", name=op.f("pk_monthly_usage")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_dirty_months",
        sa.Column("month_start", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("month_start", name=op.f("pk_rollup_dirty_months")),
    )
    # Every month rolled up so far is marked: the next roll-up run writes its rows (readers
    # take a marked month from its weeks and days until then, so nothing reads wrong meanwhile).
    if op.get_bind().dialect.name == "postgresql":
        month = "date_trunc('month', day)::date"
    else:
        month = "substr(day, 1, 7) || '-01'"  # SQLite stores dates as text: YYYY-MM-DD
    op.execute(
        f"INSERT INTO rollup_dirty_months (month_start) SELECT DISTINCT {month} FROM daily_usage"
    )


def downgrade() -> None:
    op.drop_table("rollup_dirty_months")
    op.drop_table("monthly_usage")
