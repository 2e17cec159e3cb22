"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bot.store import Base, Store


def test_migrations_match_the_models(db_url):
    store = Store(db_url)
    try:
        store.migrate()
        with store.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        store.dispose()
    # slack_sdk's installation-store tables are made by migration 0004 from
    # slack_sdk's own metadata, not from our models.
    ours = [d for d in diffs if not _slack_sdk_table(d)]
    assert ours == []


def test_home_viewers_are_remembered_once_per_person(db_url):
    store = Store(db_url)
    try:
        store.migrate()
        assert store.home_viewers("T1", ["U1", "U2"]) == set()
        store.home_opened("T1", "U1")
        store.home_opened("T1", "U1")  # again: no error, one row
        store.home_opened("T2", "U2")  # another workspace
        assert store.home_viewers("T1", ["U1", "U2"]) == {"U1"}
        assert store.home_viewers("T2", ["U1", "U2"]) == {"U2"}
        assert store.home_viewers("T1", []) == set()
    finally:
        store.dispose()


def _slack_sdk_table(diff: object) -> bool:
    obj = diff[1] if isinstance(diff, tuple) and len(diff) > 1 else None
    table = getattr(obj, "table", obj)
    return str(getattr(table, "name", "")).startswith("slack_")


def test_head_names_the_newest_migration_and_a_current_schema_skips_alembic(tmp_path, monkeypatch):
    """``bot.migrations.HEAD`` is the real head; at it, ``migrate`` never calls Alembic."""
    from alembic.script import ScriptDirectory

    from bot import migrations
    from bot.store import alembic_config

    url = f"sqlite:///{tmp_path / 'm.db'}"
    store = Store(url)
    try:
        heads = ScriptDirectory.from_config(alembic_config(store.engine)).get_heads()
        assert heads == [migrations.HEAD]
        assert store.schema_revision() is None
        store.migrate()
        assert store.schema_revision() == migrations.HEAD

        def no_alembic(*_args, **_kwargs):
            raise AssertionError("Alembic ran on a current schema")

        import alembic.command

        monkeypatch.setattr(alembic.command, "upgrade", no_alembic)
        store.migrate()  # a restart: nothing to do
    finally:
        store.dispose()
