"""Slack installations and OAuth states (multi-workspace installs)

The tables are slack_sdk's own (SQLAlchemyInstallationStore and
SQLAlchemyOAuthStateStore define them); creating them here keeps every schema
change in Alembic, so `meetbot serve` and `meetbot db upgrade` make them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 18:40:00.000000
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _stores():  # noqa: ANN202 - slack_sdk store objects
    from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
    from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore

    bind = op.get_bind()
    return (
        SQLAlchemyInstallationStore(client_id="migration", engine=bind),
        SQLAlchemyOAuthStateStore(expiration_seconds=600, engine=bind),
    )


def upgrade() -> None:
    bind = op.get_bind()
    for store in _stores():
        store.metadata.create_all(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for store in _stores():
        store.metadata.drop_all(bind)
