"""ams_streams (who publishes under which stream), meta (the deployment's identity),
rooms.ams_missing_since (a 404 waiting for confirmation), outbox.settled_attempts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ams_streams",
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("grant_id", sa.Integer(), nullable=True),
        sa.Column("published_at", sa.BigInteger(), nullable=True),
        sa.Column("event_ts", sa.BigInteger(), nullable=True),
        sa.Column("live", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(["grant_id"], ["grants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("stream_id"),
    )
    op.create_index("ix_ams_streams_room_id", "ams_streams", ["room_id"], unique=False)
    op.create_index("ix_ams_streams_grant_id", "ams_streams", ["grant_id"], unique=False)
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    # Nullable: no room has had a 404 yet.
    with op.batch_alter_table("rooms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ams_missing_since", sa.BigInteger(), nullable=True))
    # Rows already there start at 0: an earlier attempt counts as unknown, so they
    # keep the history check they had before.
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("settled_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("settled_attempts")
    with op.batch_alter_table("rooms", schema=None) as batch_op:
        batch_op.drop_column("ams_missing_since")
    op.drop_table("meta")
    op.drop_index("ix_ams_streams_grant_id", table_name="ams_streams")
    op.drop_index("ix_ams_streams_room_id", table_name="ams_streams")
    op.drop_table("ams_streams")
