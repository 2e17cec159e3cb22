"""grants.enterprise_id: every room, grant and schedule row carries team and enterprise

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 19:05:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enterprise_id", sa.String(length=32), nullable=True))
    # Grants made before this revision take their room's enterprise.
    op.execute(
        "UPDATE grants SET enterprise_id = "
        "(SELECT rooms.enterprise_id FROM rooms WHERE rooms.id = grants.room_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_column("enterprise_id")
