"""gateway holds: covering indexes led by the state, for the admission's sums

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 00:10:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COVERED = ["state", "day", "amount_units", "expires_at"]


def upgrade() -> None:
    with op.batch_alter_table("gateway_holds", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_holds_team_day")
        batch_op.drop_index("ix_gateway_holds_user_day")
        batch_op.drop_index("ix_gateway_holds_day")
        batch_op.create_index("ix_gateway_holds_team_state", ["team", *_COVERED], unique=False)
        batch_op.create_index("ix_gateway_holds_user_state", ["user", *_COVERED], unique=False)
        batch_op.create_index("ix_gateway_holds_state_day", _COVERED, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gateway_holds", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_holds_state_day")
        batch_op.drop_index("ix_gateway_holds_user_state")
        batch_op.drop_index("ix_gateway_holds_team_state")
        batch_op.create_index("ix_gateway_holds_day", ["day"], unique=False)
        batch_op.create_index("ix_gateway_holds_user_day", ["user", "day"], unique=False)
        batch_op.create_index("ix_gateway_holds_team_day", ["team", "day"], unique=False)
