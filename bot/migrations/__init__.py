"""The schema's Alembic migrations, shipped inside the package.

``bot.store.SCHEMA_HEAD`` names the newest revision.
"""
