"""The schema's Alembic migrations, shipped inside the package.

``HEAD`` is the newest revision: ``Store.migrate`` compares it with the
database's and loads Alembic only when they differ, so a restart on a current
schema never imports Alembic (and its templates) into the running bot.
tests/test_migrations.py checks that it names the real head. It is defined in
``bot.store``, the layer below, which must not import this package.
"""

from bot.store import HEAD

__all__ = ["HEAD"]
