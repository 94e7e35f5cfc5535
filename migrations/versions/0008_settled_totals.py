"""gateway settled totals: the settled holds' exact costs per (day, team, user, tags)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 05:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import meter.db.models
from meter.db import settled

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "gateway_settled",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("team", sa.String(length=200), nullable=False),
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.Column("tags_key", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("amount_units", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "team", "user", "tags_key", name=op.f("pk_gateway_settled")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("gateway_settled", schema=None) as batch_op:
        batch_op.create_index(
            "ix_gateway_settled_team_day", ["team", "day", "amount_units"], unique=False
        )
        batch_op.create_index(
            "ix_gateway_settled_user_day", ["user", "day", "amount_units"], unique=False
        )
    # The holds settled before this revision, summed into their groups: from now on every
    # writer of a settled hold keeps its group exact (meter.db.settled).
    holds = meter.db.models.GatewayHold.__table__
    rows = op.get_bind().execute(
        sa.select(
            holds.c.day, holds.c.team, holds.c.user, holds.c.tags, holds.c.amount_units
        ).where(holds.c.state == "settled")
    )
    groups = list(settled.summed(rows).values())
    if groups:
        op.bulk_insert(table, groups)


def downgrade() -> None:
    with op.batch_alter_table("gateway_settled", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_settled_user_day")
        batch_op.drop_index("ix_gateway_settled_team_day")
    op.drop_table("gateway_settled")
