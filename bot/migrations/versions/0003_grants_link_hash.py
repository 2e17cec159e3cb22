"""grants.link_hash for click-time join links

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: grants made before this revision get their hash the next time
    # their DM is rendered (bot/joinlinks.py), which is when a link first exists.
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_grants_link_hash", ["link_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index("ix_grants_link_hash")
        batch_op.drop_column("link_hash")
