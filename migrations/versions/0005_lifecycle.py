"""data lifecycle: the purge cutoff's row and the ids of erased events

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 21:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import meter.db.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erased_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("erased_at", meter.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erased_events")),
    )
    # The purge cutoff (meter.lifecycle.retention) lives in meter_meta. Its row exists from
    # the start, empty (no cutoff), so that writers can lock it (FOR SHARE) while they check
    # their events against it: a purge that moves it waits for them.
    op.execute("INSERT INTO meter_meta (key, value) VALUES ('raw_cutoff', '')")


def downgrade() -> None:
    op.execute("DELETE FROM meter_meta WHERE key = 'raw_cutoff'")
    op.drop_table("erased_events")
