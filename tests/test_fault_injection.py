"""Faults injected in the doubles (and the database): each ends in the right state."""

from __future__ import annotations

import sqlite3
import threading
import time

from tests.conftest import ALICE, BOB, CAROL, DAVE, sender_for, wait_for
from tests.helpers import (
    CREATE,
    db_exec,
    db_rows,
    dm_links,
    response_texts,
    rooms_on_ams,
    settled,
)


def opened(slack, key):
    return any("is open" in t for t in response_texts(slack, key))


def test_a_429_storm_delays_but_neither_loses_nor_doubles(bot, sender, slack):
    # Every chat.postMessage in the workspace is refused ten times over.
    slack.fail("chat.postMessage", "ratelimited", times=10, retry_after=1)
    r = sender.command(f"storm <@{BOB}> <@{CAROL}> <@{DAVE}>", user_id=ALICE)
    assert "Creating" in r.text  # the ack never waits for Slack's Web API
    wait_for(lambda: all(dm_links(slack, u) for u in (ALICE, BOB, CAROL, DAVE)), timeout=40)
    settled(bot, timeout=40)
    assert [len(slack.dms_to(u)) for u in (ALICE, BOB, CAROL, DAVE)] == [1, 1, 1, 1]
    assert len(slack.messages("C1")) == 1
    wait_for(lambda: opened(slack, r.response_key), timeout=20)


def test_slack_5xx_on_the_channel_card_is_retried(bot, sender, slack):
    slack.fail("chat.postMessage", "internal_error", status=503, channel="C1", times=2)
    sender.command(f"sync <@{BOB}>", user_id=ALICE)
    wait_for(lambda: slack.messages("C1"), timeout=20)
    assert len(slack.messages("C1")) == 1


def test_connection_reset_after_ams_created_the_room_is_not_a_failure(bot, sender, slack, ams):
    # AMS created the room but the answer was lost: the client looks before
    # deciding, finds its own room and carries on. No second create.
    ams.reset_next(1, path_regex=CREATE, after_processing=True)
    r = sender.command(f"sync <@{BOB}>", user_id=ALICE)
    wait_for(lambda: opened(slack, r.response_key), timeout=15)
    assert len(rooms_on_ams(ams)) == 1
    assert ams.count("POST", CREATE) == 1
    (room,) = db_rows(bot.env["DATABASE_URL"], "rooms")
    assert room["state"] == "active" and dm_links(slack, BOB)


def test_connection_reset_before_ams_created_the_room_fails_cleanly(bot, sender, slack, ams):
    ams.reset_next(1, path_regex=CREATE)
    r = sender.command(f"sync <@{BOB}>", user_id=ALICE)
    (reply,) = slack.wait_for_responses(r.response_key, timeout=15)
    assert "I couldn't open the room" in reply["text"]
    assert rooms_on_ams(ams) == [] and not slack.dms_to(BOB)
    (room,) = db_rows(bot.env["DATABASE_URL"], "rooms")
    assert room["state"] == "failed"


def test_ams_timeouts_during_a_revoke_keep_the_room_due(start_bot, slack, ams):
    bot = start_bot(MEETBOT_SWEEP_INTERVAL="1")
    url = bot.env["DATABASE_URL"]
    r = sender_for(bot, slack).command(f"sync <@{BOB}>", user_id=ALICE)
    wait_for(lambda: opened(slack, r.response_key))
    (room,) = db_rows(url, "rooms")
    ams.hang_next(20, seconds=1.5, path_regex=rf"/broadcasts/{room['id']}")
    db_exec(url, "UPDATE rooms SET expires_at = :t", t=int(time.time()) - 1)
    wait_for(lambda: db_rows(url, "rooms")[0]["attempts"] >= 1, timeout=30)
    assert db_rows(url, "rooms")[0]["state"] == "active"
    ams.clear_faults()
    db_exec(url, "UPDATE rooms SET next_attempt_at = 0")
    wait_for(lambda: db_rows(url, "rooms")[0]["state"] == "revoked", timeout=20)
    assert rooms_on_ams(ams) == []


def test_a_locked_sqlite_file_makes_the_bot_wait_not_fail(bot, sender, slack, ams):
    path = bot.env["DATABASE_URL"].removeprefix("sqlite:///")
    holder = sqlite3.connect(path, timeout=1, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    released = threading.Event()

    def release_later() -> None:
        time.sleep(3)
        holder.execute("COMMIT")
        holder.close()
        released.set()

    threading.Thread(target=release_later, daemon=True).start()
    r = sender.command(f"sync <@{BOB}>", user_id=ALICE)
    assert "Creating" in r.text  # acked while the database was locked
    wait_for(lambda: opened(slack, r.response_key), timeout=30)
    assert released.is_set()
    assert len(rooms_on_ams(ams)) == 1 and dm_links(slack, BOB)
