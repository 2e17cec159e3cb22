"""The Store's transactions on SQLite, one process with many threads."""

from __future__ import annotations

import threading
import time

from sqlalchemy import update

from bot import store as store_module
from bot.store import Meta, Store


def test_one_process_s_writers_take_turns_without_waiting_on_sqlite_s_busy_handler(
    sqlite_url, monkeypatch
):
    """SQLite lets one writer in at a time and makes the others retry with growing
    sleeps: in a burst of rooms a writer could wait seconds while fresh ones got in.
    This process's writers queue for their turn instead; with SQLite's own wait
    turned off, none of them is ever refused."""
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_S", 0)
    s = Store(sqlite_url)
    s.migrate()
    s.set_meta("counter", "0")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(15):
                with s.write() as tx:
                    tx.execute(
                        update(Meta)
                        .where(Meta.key == "counter")
                        .values(value=(Meta.value.cast(store_module.Integer) + 1))
                    )
                    time.sleep(0.002)  # the lock held a while, as under a busy interpreter
        except BaseException as e:  # noqa: BLE001 - what the test is about
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        assert s.meta("counter") == str(8 * 15)
    finally:
        s.dispose()
