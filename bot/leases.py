"""Job leases: which replica runs a periodic job (a rotation, a reconciliation) now.

A job is a row in ``jobs``. A replica takes it with one conditional UPDATE
(the lease is free or ran out, and the job is due), so of several replicas
claiming at once exactly one sees a row change, on SQLite and PostgreSQL
alike (PostgreSQL re-checks the WHERE after the winner commits; SQLite write
transactions are IMMEDIATE). A replica that dies holding a lease leaves it to
run out; whoever claims next takes the job over.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, or_, update

from bot.store import Job, Store

__all__ = ["claim", "insert_ignore", "release"]


def insert_ignore(store: Store, table: Any) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` in the store's dialect."""
    if store.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def claim(
    store: Store,
    name: str,
    owner: str,
    *,
    now: int,
    lease: int,
    due: ColumnElement[bool] | None = None,
    **values: Any,
) -> bool:
    """Take job ``name`` for ``lease`` seconds if nobody holds it (and ``due`` holds).

    The row is made on first use. ``values`` are written with the claim (a
    reconciliation moves its ``next_run_at`` on as it starts). True when this
    owner got it.
    """
    with store.write() as s:
        s.execute(insert_ignore(store, Job).values(name=name, next_run_at=0))
        conditions = [Job.name == name, or_(Job.lease_until.is_(None), Job.lease_until < now)]
        if due is not None:
            conditions.append(due)
        claimed = s.execute(
            update(Job)
            .where(*conditions)
            .values(lease_owner=owner, lease_until=now + lease, **values)
        ).rowcount
    return claimed == 1


def release(store: Store, name: str, owner: str, **values: Any) -> None:
    """Give job ``name`` back (only if this owner still holds it), recording ``values``.

    A ``next_run_at`` never moves earlier than the row's own: a pause that
    another path set (after a refused login, say) is kept.
    """
    with store.write() as s:
        if "next_run_at" in values:
            job = s.get(Job, name)
            if job is not None:
                values["next_run_at"] = max(values["next_run_at"], job.next_run_at or 0)
        s.execute(
            update(Job)
            .where(Job.name == name, Job.lease_owner == owner)
            .values(lease_owner=None, lease_until=None, **values)
        )
