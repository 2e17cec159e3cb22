"""/meet with bad input and misbehaving AMS or Slack: what each person ends up seeing.

Every test drives a real `meetbot serve` over HTTP and asserts what AMS, Slack
and the database hold afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time

import jwt
import pytest

from tests.conftest import (
    ADMIN,
    ALICE,
    BOB,
    CAROL,
    DAVE,
    SOMEBOT,
    STREAM_SECRET,
    bot_env,
    sender_for,
    wait_for,
)
from tests.helpers import (
    CREATE,
    creates,
    db_dump,
    db_exec,
    db_rows,
    dm_links,
    response_texts,
    rooms_on_ams,
    settled,
    token_of,
)


def open_room(sender, slack, text=f"sync <@{BOB}>", user=ALICE):
    """/meet and wait until every invitation went out; returns (room_id, response key)."""
    r = sender.command(text, user_id=user)
    assert r.status_code == 200, r.text
    key = r.response_key
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, key)))
    return r, key


def only_room(url):
    (room,) = db_rows(url, "rooms")
    return room


# -- bad input ---------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        (f"sync <@{ALICE}>", "always invited to your own room"),
        ("sync for 0", "longer than 0"),
        ("sync for -5m", "Usage"),
        ("sync for 99d", "at most 1d"),
        ("sync for banana", '"banana" is not a duration'),
        ("end", "Usage"),
        ("extend abc", "Usage"),
        ("end not/a/room", "not a room id"),
        ("<!channel> hi", "@here, @channel"),
    ],
)
def test_bad_input_gets_a_usage_error_and_creates_nothing(bot, sender, ams, text, expected):
    r = sender.command(text, user_id=ALICE)
    assert r.status_code == 200
    assert expected in r.text
    settled(bot)
    assert creates(ams) == 0
    assert db_rows(bot.env["DATABASE_URL"], "rooms") == []


def test_mentioning_a_bot_is_refused_after_the_ack_and_leaves_nothing(bot, sender, slack, ams):
    """Slack says who everyone is while AMS creates the room (the link comes sooner),
    so a refusal may find the room made: it is deleted before the requester hears."""
    r = sender.command(f"sync <@{SOMEBOT}|somebot> <@{BOB}>", user_id=ALICE)
    assert "Creating" in r.text
    (reply,) = slack.wait_for_responses(r.response_key)
    assert "is a bot" in reply["text"]
    assert rooms_on_ams(ams) == []
    assert ams.count("DELETE", "^/Conference/rest/v2/broadcasts/") == creates(ams)  # made, went
    assert db_rows(bot.env["DATABASE_URL"], "rooms") == []
    settled(bot)
    assert slack.dms_to(BOB) == [] and slack.dms_to(ALICE) == []


def test_long_topic_is_truncated_and_control_characters_dropped(bot, sender, slack, ams):
    topic = "Ünïcødé ☕ " + "\x07\x1b" + "x" * 3000
    open_room(sender, slack, f"{topic} <@{BOB}>")
    room = only_room(bot.env["DATABASE_URL"])
    assert room["topic"].startswith("Ünïcødé ☕ x")
    assert len(room["topic"]) <= 150
    assert "\x07" not in room["topic"] and "\x1b" not in room["topic"]
    (on_ams,) = rooms_on_ams(ams)
    assert on_ams["name"] == room["topic"]


def test_a_5000_character_topic_is_refused_clearly(bot, sender, ams):
    r = sender.command("x" * 5000, user_id=ALICE)
    assert "too long" in r.text.lower() or "at most" in r.text.lower(), r.text
    settled(bot)
    assert creates(ams) == 0


def test_help_and_list(bot, sender, slack):
    assert "/meet" in sender.command("help", user_id=ALICE).text
    assert "no open rooms" in sender.command("list", user_id=ALICE).text
    open_room(sender, slack, f"planning <@{BOB}>")
    room = only_room(bot.env["DATABASE_URL"])
    listing = sender.command("list", user_id=ALICE).text
    assert room["id"] in listing and "planning" in listing
    assert "no open rooms" in sender.command("list", user_id=BOB).text


# -- AMS faults -----------------------------------------------------------------
def assert_clean_failure(bot, slack, ams, key, phrase):
    """The requester was told, nobody got a dead link, nothing is left anywhere."""
    (reply,) = slack.wait_for_responses(key, timeout=10)
    assert phrase in reply["text"]
    assert all(not slack.dms_to(u) for u in (ALICE, BOB))
    rows = db_rows(bot.env["DATABASE_URL"], "rooms")
    assert rows and all(r["state"] == "failed" for r in rows)
    return rows


@pytest.mark.parametrize(
    "fault, phrase",
    [
        (lambda ams: ams.fail_next(1, status=500, path_regex=CREATE), "video server"),
        (lambda ams: setattr(ams, "ip_allowed", False), "video server"),
    ],
    ids=["500", "ip-filter-403"],
)
def test_ams_refusing_the_create(bot, sender, slack, ams, fault, phrase):
    fault(ams)
    r = sender.command(f"sync <@{BOB}>", user_id=ALICE)
    assert "Creating" in r.text
    assert_clean_failure(bot, slack, ams, r.response_key, phrase)
    ams.ip_allowed = True
    assert rooms_on_ams(ams) == []


def test_ams_unreachable(start_bot, ams, slack):
    bot = start_bot()
    sender = sender_for(bot, slack)
    ams.stop()
    r = sender.command(f"sync <@{BOB}>", user_id=ALICE)
    assert "Creating" in r.text
    assert_clean_failure(bot, slack, ams, r.response_key, "I couldn't open the room")


def test_ams_slow_past_the_timeout_leaves_nothing_behind(bot, sender, slack, ams):
    # AMS_TIMEOUT is 1 s in tests; AMS finishes the create 1.5 s later, after
    # the bot gave up: the sweep must still remove it.
    ams.hang_next(1, seconds=1.5, path_regex=CREATE)
    r = sender.command(f"sync <@{BOB}>", user_id=ALICE)
    started = time.monotonic()
    assert_clean_failure(bot, slack, ams, r.response_key, "I couldn't open the room")
    assert time.monotonic() - started < 8
    wait_for(lambda: rooms_on_ams(ams) == [], timeout=15)


# -- Slack faults ------------------------------------------------------------------
def test_one_failed_dm_affects_only_that_person(bot, sender, slack, ams):
    slack.fail("chat.postMessage", "cannot_dm_bot", channel=BOB, times=None)
    slack.fail("chat.postMessage", "user_not_found", channel=CAROL, times=None)
    r = sender.command(f"sync <@{BOB}> <@{CAROL}> <@{DAVE}>", user_id=ALICE)
    replies = slack.wait_for_responses(r.response_key, timeout=10)
    text = replies[-1]["text"]
    assert f"I couldn't DM <@{BOB}>" in text and f"I couldn't DM <@{CAROL}>" in text
    assert f"<@{DAVE}>" in text.split("Personal links went by DM to", 1)[1].split("\n")[0]
    assert dm_links(slack, ALICE) and dm_links(slack, DAVE)
    assert not slack.dms_to(BOB) and not slack.dms_to(CAROL)
    (room,) = db_rows(bot.env["DATABASE_URL"], "rooms")
    assert room["state"] == "active"


def test_rate_limited_and_5xx_dms_are_retried_until_delivered(bot, sender, slack):
    slack.fail("chat.postMessage", "ratelimited", channel=BOB, retry_after=1)
    slack.fail("chat.postMessage", "internal_error", status=500, channel=CAROL)
    r = sender.command(f"sync <@{BOB}> <@{CAROL}>", user_id=ALICE)
    # The ack is immediate even though delivery takes seconds.
    assert "Creating" in r.text
    wait_for(lambda: dm_links(slack, BOB) and dm_links(slack, CAROL), timeout=15)
    assert len(slack.dms_to(BOB)) == 1 and len(slack.dms_to(CAROL)) == 1
    bob_calls = [c for c in slack.calls_to("chat.postMessage") if c.args["channel"] == BOB]
    assert [c.status for c in bob_calls] == [429, 200]
    assert bob_calls[1].at - bob_calls[0].at >= 0.9  # waited for Retry-After
    reply = slack.wait_for_responses(r.response_key, timeout=10)[-1]["text"]
    assert "couldn't" not in reply


# -- signatures -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bad", "stale"])
def test_bad_or_stale_signature_is_refused_and_does_nothing(bot, sender, ams, slack, kind):
    if kind == "bad":
        r = sender.command(f"sync <@{BOB}>", user_id=ALICE, signature="v0=" + "0" * 64)
    else:
        r = sender.command(f"sync <@{BOB}>", user_id=ALICE, timestamp=int(time.time()) - 400)
    assert r.status_code == 401
    settled(bot)
    assert creates(ams) == 0 and not slack.dms_to(BOB)


# -- Get my link ------------------------------------------------------------------------
def test_get_my_link_double_click_sends_one_dm(bot, sender, slack, ams):
    open_room(sender, slack, f"sync <@{BOB}>")
    room = only_room(bot.env["DATABASE_URL"])
    wait_for(lambda: slack.messages("C1"))
    clicks = []
    for _ in range(2):
        resp = sender.block_action("meet_get_link", room["id"], user_id=CAROL)
        assert resp.status_code == 200
        clicks.append(resp.response_key)
    # Each click is answered once it is done; then whatever DMs it owed have gone out.
    replies = sorted(slack.wait_for_responses(key)[0]["text"] for key in clicks)
    settled(bot)
    assert len(slack.dms_to(CAROL)) == 1
    assert replies == [
        "I've sent your personal link to you by DM.",
        "Your link is in your DMs with me.",
    ]
    (link,) = dm_links(slack, CAROL)
    claims = jwt.decode(token_of(link), STREAM_SECRET, algorithms=["HS256"])
    assert claims["sub"] == CAROL and claims["streamId"] == room["id"]
    assert ams.check_join(room["id"], token_of(link))[0]


# -- /meet end ------------------------------------------------------------------------------
def test_end_by_someone_else_is_refused(bot, sender, slack, ams):
    open_room(sender, slack, f"sync <@{BOB}>")
    room = only_room(bot.env["DATABASE_URL"])
    r = sender.command(f"end {room['id']}", user_id=BOB)
    (reply,) = slack.wait_for_responses(r.response_key)
    assert "Only the room's owner" in reply["text"]
    assert only_room(bot.env["DATABASE_URL"])["state"] == "active"
    assert len(rooms_on_ams(ams)) == 1


@pytest.mark.parametrize("who", [ALICE, ADMIN], ids=["owner", "admin"])
def test_end_revokes_on_ams_and_edits_every_message(bot, sender, slack, ams, who):
    open_room(sender, slack, f"sync <@{BOB}>")
    room = only_room(bot.env["DATABASE_URL"])
    (bob_link,) = dm_links(slack, BOB)
    wait_for(lambda: slack.messages("C1"))
    r = sender.command(f"end {room['id']}", user_id=who)
    (reply,) = slack.wait_for_responses(r.response_key)
    assert "Ended" in reply["text"]
    assert rooms_on_ams(ams) == []
    # Nobody was in it: AMS confirmed that, then the DELETE (which stops the room itself).
    base = f"^/Conference/rest/v2/broadcasts/{room['id']}"
    assert ams.count("GET", f"{base}/active-subtracks-count$") == 1
    assert ams.count("DELETE", f"{base}$") == 1
    assert only_room(bot.env["DATABASE_URL"])["state"] == "revoked"
    wait_for(
        lambda: "has ended" in str(slack.dms_to(BOB)) and "has ended" in str(slack.messages("C1"))
    )
    assert dm_links(slack, BOB) == [] and "Get my link" not in str(slack.messages("C1"))
    assert bob_link  # the old link is gone from the DM (edited in place)
    rows = db_rows(bot.env["DATABASE_URL"], "audit")
    assert [r["action"] for r in rows if r["room_id"] == room["id"]][-1] == "revoke"


# -- expiry, extension, restart ---------------------------------------------------------------
@pytest.fixture
def fast_bot(start_bot):
    return start_bot(MEETBOT_SWEEP_INTERVAL="1")


@pytest.fixture
def fast_sender(fast_bot, slack):
    return sender_for(fast_bot, slack)


def test_room_ends_when_it_expires(fast_bot, fast_sender, slack, ams):
    url = fast_bot.env["DATABASE_URL"]
    open_room(fast_sender, slack, f"sync <@{BOB}>")
    room = only_room(url)
    db_exec(
        url,
        "UPDATE rooms SET expires_at = :t WHERE id = :id",
        t=int(time.time()) - 1,
        id=room["id"],
    )
    wait_for(lambda: only_room(url)["state"] == "revoked", timeout=10)
    assert rooms_on_ams(ams) == []
    wait_for(lambda: "has ended" in str(slack.dms_to(BOB)))


def test_room_stays_due_while_ams_is_down_and_ends_once_it_is_back(
    fast_bot, fast_sender, slack, ams
):
    url = fast_bot.env["DATABASE_URL"]
    open_room(fast_sender, slack, f"sync <@{BOB}>")
    room = only_room(url)
    ams.fail_next(100, status=503, path_regex=rf"/broadcasts/{room['id']}")
    db_exec(
        url,
        "UPDATE rooms SET expires_at = :t WHERE id = :id",
        t=int(time.time()) - 1,
        id=room["id"],
    )
    wait_for(lambda: only_room(url)["attempts"] >= 1, timeout=10)
    assert only_room(url)["state"] == "active"
    assert len(rooms_on_ams(ams)) == 1
    ams.clear_faults()
    db_exec(url, "UPDATE rooms SET next_attempt_at = 0 WHERE id = :id", id=room["id"])
    wait_for(lambda: only_room(url)["state"] == "revoked", timeout=10)
    assert rooms_on_ams(ams) == []


def test_rooms_that_expired_while_the_bot_was_down_end_on_the_first_sweep(
    start_bot, slack, ams, tmp_path
):
    first = start_bot()
    url = first.env["DATABASE_URL"]
    sender = sender_for(first, slack)
    open_room(sender, slack, f"sync <@{BOB}>")
    assert first.terminate() == 0
    db_exec(url, "UPDATE rooms SET expires_at = :t", t=int(time.time()) - 3600)
    start_bot(url)  # default 15 s sweep interval: only the first, immediate sweep can do it
    wait_for(lambda: only_room(url)["state"] == "revoked", timeout=8)
    assert rooms_on_ams(ams) == []


def test_extend_renews_every_link_in_place(bot, sender, slack, ams):
    url = bot.env["DATABASE_URL"]
    open_room(sender, slack, f"sync <@{BOB}> for 30m")
    room = only_room(url)
    (old,) = dm_links(slack, BOB)
    old_exp = jwt.decode(token_of(old), STREAM_SECRET, algorithms=["HS256"])["exp"]

    r = sender.command(f"extend {room['id']} for 30m", user_id=BOB)
    assert "Only the room's owner" in slack.wait_for_responses(r.response_key)[0]["text"]

    r = sender.command(f"extend {room['id']} for 30m", user_id=ALICE)
    assert "now runs until" in slack.wait_for_responses(r.response_key)[0]["text"]
    wait_for(lambda: dm_links(slack, BOB) != [old])
    (new,) = dm_links(slack, BOB)
    assert len(slack.dms_to(BOB)) == 1  # edited, not a second DM
    claims = jwt.decode(token_of(new), STREAM_SECRET, algorithms=["HS256"])
    assert claims["exp"] == old_exp + 1800
    assert only_room(url)["expires_at"] == room["expires_at"] + 1800

    r = sender.command(f"extend {room['id']} for 23h30m", user_id=ALICE)
    assert "at most 1d" in slack.wait_for_responses(r.response_key)[0]["text"]


def test_owner_dm_extend_button(bot, sender, slack):
    url = bot.env["DATABASE_URL"]
    open_room(sender, slack, f"sync <@{BOB}> for 30m")
    room = only_room(url)
    value = f"{room['id']}|{room['expires_at']}"  # what the owner's DM button carries
    clicks = []
    for _ in range(2):  # a double click extends once
        r = sender.block_action("meet_extend", value, user_id=ALICE, channel_id="D" + ALICE)
        assert r.status_code == 200
        clicks.append(r.response_key)
    replies = [slack.wait_for_responses(key)[0]["text"] for key in clicks]  # both done
    settled(bot)
    assert only_room(url)["expires_at"] == room["expires_at"] + 1800
    assert sum("already extended" in text for text in replies) == 1, replies
    assert len([a for a in db_rows(url, "audit") if a["action"] == "extend"]) == 1


# -- secrets stay secret --------------------------------------------------------------------
def test_no_token_in_channel_replies_logs_or_database(bot, sender, slack, ams):
    _, key = open_room(sender, slack, f"sync <@{BOB}> <@{CAROL}>")
    room = only_room(bot.env["DATABASE_URL"])
    sender.block_action("meet_get_link", room["id"], user_id=DAVE)
    wait_for(lambda: dm_links(slack, DAVE))
    tokens = [token_of(link) for u in (ALICE, BOB, CAROL, DAVE) for link in dm_links(slack, u)]
    assert len(tokens) == 4
    bot.terminate()
    public = [slack.messages("C1"), slack.responses, slack.calls_to("chat.postEphemeral")]
    notification_texts = [c.args.get("text", "") for c in slack.calls_to("chat.postMessage")]
    logs = bot.log()
    assert "DEBUG" in logs  # the run logged at DEBUG, so there was every chance to leak
    database = db_dump(bot.env["DATABASE_URL"])
    for token in tokens:
        assert token not in str(public)
        assert token not in str(notification_texts)
        assert token not in logs
        assert token not in database
    assert STREAM_SECRET not in logs and STREAM_SECRET not in database


def test_healthz(bot):
    import requests

    r = requests.get(bot.url + "/healthz", timeout=5)
    assert r.status_code == 200 and r.json() == {"ok": True}


# -- configuration -----------------------------------------------------------------------------
def test_serve_refuses_a_bad_configuration_with_exit_code_2(ams, slack, tmp_path):
    env = bot_env(ams, slack, f"sqlite:///{tmp_path}/x.db", AMS_JWT_SECRET="short", PORT="http")
    del env["AMS_URL"]
    proc = subprocess.run(
        [sys.executable, "-m", "bot.ops.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    err = proc.stderr
    assert "AMS_URL" in err and "AMS_JWT_SECRET must be at least 32 characters" in err
    assert "PORT" in err
    assert "short" not in err  # a secret's value is never echoed


# -- reconciliation -------------------------------------------------------------------------------
def test_reconciliation_removes_bot_rooms_the_database_does_not_know(start_bot, slack, ams):
    from bot.ams.client import AmsClient

    bot = start_bot(MEETBOT_SWEEP_INTERVAL="1", MEETBOT_RECONCILE_INTERVAL="1")
    url = bot.env["DATABASE_URL"]
    open_room(sender_for(bot, slack), slack, f"sync <@{BOB}>")
    room = only_room(url)
    # Someone else's broadcast, without meetbot's marker, must survive.
    AmsClient(ams.url, "Conference").create_room("not-ours", "theirs", 0, 0)
    db_exec(url, "DELETE FROM grants")
    db_exec(url, "DELETE FROM outbox")
    db_exec(url, "DELETE FROM rooms")
    wait_for(lambda: [b["streamId"] for b in rooms_on_ams(ams)] == ["not-ours"], timeout=10)
    # The audit row is written just after AMS confirmed the delete.
    wait_for(
        lambda: (
            ("reconcile_delete", room["id"])
            in [(a["action"], a["room_id"]) for a in db_rows(url, "audit")]
        )
    )


def test_reconciliation_ends_rooms_that_vanished_from_ams(start_bot, slack, ams):
    from bot.ams.client import AmsClient

    bot = start_bot(MEETBOT_SWEEP_INTERVAL="1", MEETBOT_RECONCILE_INTERVAL="1")
    url = bot.env["DATABASE_URL"]
    open_room(sender_for(bot, slack), slack, f"sync <@{BOB}>")
    room = only_room(url)
    wait_for(lambda: slack.messages("C1"))
    db_exec(url, "UPDATE rooms SET created_at = created_at - 600")
    AmsClient(ams.url, "Conference").delete_room(room["id"])  # an operator, on AMS
    wait_for(lambda: only_room(url)["state"] == "revoked", timeout=10)
    assert "disappeared" in only_room(url)["end_reason"]
    wait_for(lambda: "has ended" in str(slack.dms_to(BOB)))


def test_socket_mode_is_used_with_an_app_token(ams, slack, tmp_path):
    """With SLACK_APP_TOKEN, serve opens a Socket Mode connection instead of listening for
    Slack's HTTP requests; here Slack refuses it, and serve says so and exits 1."""
    env = bot_env(ams, slack, f"sqlite:///{tmp_path}/x.db", SLACK_APP_TOKEN="xapp-1-test")
    del env["SLACK_SIGNING_SECRET"]
    proc = subprocess.run(
        [sys.executable, "-m", "bot.ops.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Socket Mode could not connect" in proc.stderr
    assert slack.calls_to("apps.connections.open")
    assert "xapp-1-test" not in proc.stderr


def test_serve_warns_at_start_on_community_edition(start_bot, ams):
    ams.edition = "Community Edition"
    bot = start_bot()
    wait_for(lambda: "does NOT check join tokens" in bot.log())
