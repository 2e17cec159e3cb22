"""rooms.slack_call_id and rooms.slack_call_ended_at for Slack Calls

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rooms opened with MEETBOT_SLACK_CALLS off (or before it) have no Call.
    with op.batch_alter_table("rooms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slack_call_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("slack_call_ended_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rooms", schema=None) as batch_op:
        batch_op.drop_column("slack_call_ended_at")
        batch_op.drop_column("slack_call_id")
