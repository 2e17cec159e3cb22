"""Nothing lost: SIGKILL or SIGTERM in the middle of a fan-out, then a restart."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.conftest import ALICE, sender_for, wait_for
from tests.helpers import db_rows, dm_links, settled

PEOPLE = [f"UPEOPLE{i:02d}" for i in range(50)]


@pytest.fixture
def crowd(slack):
    for uid in PEOPLE:
        slack.add_user(uid, uid.lower())
    return PEOPLE


def dm_counts(slack, users):
    return Counter({u: len(slack.dms_to(u)) for u in users})


def fan_out(bot, slack, crowd):
    sender = sender_for(bot, slack)
    text = "all hands " + " ".join(f"<@{u}>" for u in crowd)
    r = sender.command(text, user_id=ALICE)
    assert "Creating" in r.text


def test_sigkill_mid_fanout_then_restart_every_invitee_gets_exactly_one_dm(start_bot, slack, crowd):
    slack.latency = 0.15  # slow enough to kill the bot in the middle
    env = {"MEETBOT_OUTBOX_LEASE": "3", "MEETBOT_FANOUT_WORKERS": "4"}
    bot = start_bot(**env)
    fan_out(bot, slack, crowd)
    wait_for(lambda: sum(dm_counts(slack, crowd).values()) >= 8, timeout=15)
    bot.kill()
    delivered_before = sum(1 for n in dm_counts(slack, crowd).values() if n)
    assert delivered_before < len(crowd), "the kill came too late to test anything"

    start_bot(bot.env["DATABASE_URL"], **env)
    wait_for(lambda: all(dm_counts(slack, crowd).values()), timeout=60)
    settled(bot.env["DATABASE_URL"])
    counts = dm_counts(slack, crowd)
    assert set(counts.values()) == {1}, {u: n for u, n in counts.items() if n != 1}
    assert all(dm_links(slack, u) for u in crowd)
    wait_for(lambda: {r["state"] for r in db_rows(bot.env["DATABASE_URL"], "outbox")} == {"done"})
    assert len(slack.dms_to(ALICE)) == 1


def test_sigterm_exits_promptly_and_hands_back_unsent_work(start_bot, slack, crowd):
    slack.latency = 0.3
    env = {"MEETBOT_OUTBOX_LEASE": "600", "MEETBOT_FANOUT_WORKERS": "2"}
    bot = start_bot(**env)
    fan_out(bot, slack, crowd)
    wait_for(lambda: sum(dm_counts(slack, crowd).values()) >= 2, timeout=15)
    started = time.monotonic()
    assert bot.terminate(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert sum(1 for n in dm_counts(slack, crowd).values() if n) < len(crowd)
    # A 600 s lease would stall the rest for ten minutes had they not been handed back.
    start_bot(bot.env["DATABASE_URL"], **env)
    wait_for(lambda: all(dm_counts(slack, crowd).values()), timeout=60)
    settled(bot.env["DATABASE_URL"])
    assert set(dm_counts(slack, crowd).values()) == {1}
