"""Alembic environment: runs against the engine the bot hands over."""

from alembic import context

from bot.store import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas starting together: one migrates, the others wait and
                # then find the schema at head.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7429001)")
            context.run_migrations()


run_migrations_online()
