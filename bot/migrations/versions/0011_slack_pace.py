"""slack_pace: Slack's posting budget (per channel, per workspace), shared by replicas

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-02 18:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slack_pace",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("next_at", sa.Double(), nullable=False),
        sa.Column("floor_at", sa.Double(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("slack_pace")
