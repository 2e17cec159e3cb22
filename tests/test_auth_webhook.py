"""/meet kick and AMS's authorization webhook: one person out, everyone else stays.

The AMS double calls ``webhookAuthenticateURL`` on every join exactly as AMS
does (HTTP 200 only lets the publish through), so ``ams.check_join`` here is
the real decision path: JWT check on AMS, then the bot's webhook.
"""

from __future__ import annotations

import time

import jwt
import pytest
import requests

from tests.conftest import ALICE, BOB, CAROL, STREAM_SECRET, sender_for, wait_for
from tests.helpers import db_rows, dm_links, response_texts, token_of
from tests.test_metrics import scrape, value

HOOK_SECRET = "hook-secret_0123456789-abcdef"


def open_room(bot, slack, text=f"sync <@{BOB}> <@{CAROL}>"):
    r = sender_for(bot, slack).command(text, user_id=ALICE)
    assert r.status_code == 200, r.text
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    (room,) = db_rows(bot.env["DATABASE_URL"], "rooms")
    return room["id"]


def command(bot, slack, text, user):
    """Run a /meet sub-command and return the one reply that follows the ack."""
    r = sender_for(bot, slack).command(text, user_id=user)
    assert r.status_code == 200, r.text
    (reply,) = slack.wait_for_responses(r.response_key)
    return reply["text"]


def settle():
    """A pause before teardown's SIGTERM: see ``tests.test_joinlinks.settle``."""
    time.sleep(0.3)


def tokens(slack, *users):
    return {u: token_of(dm_links(slack, u)[0]) for u in users}


@pytest.fixture
def hooked(start_bot, slack, ams):
    """A bot with the webhook secret, and AMS pointed at its webhook."""
    bot = start_bot(MEETBOT_WEBHOOK_SECRET=HOOK_SECRET)
    ams.update_settings(webhookAuthenticateURL=f"{bot.url}/ams/auth/{HOOK_SECRET}")
    return bot


def hook(bot, body=None, *, secret=HOOK_SECRET, data=None):
    return requests.post(f"{bot.url}/ams/auth/{secret}", json=body, data=data, timeout=5)


def test_kick_refuses_one_person_while_the_others_stay(hooked, slack, ams):
    bot = hooked
    room_id = open_room(bot, slack)
    tok = tokens(slack, ALICE, BOB, CAROL)
    for user in (ALICE, BOB, CAROL):
        ok, why = ams.check_join(room_id, tok[user])
        assert ok, (user, why)

    # A participant who is not the owner cannot kick anyone.
    refusal = command(bot, slack, f"kick {room_id} <@{CAROL}|carol>", BOB)
    assert "Only the room's owner" in refusal
    assert ams.check_join(room_id, tok[CAROL])[0]

    reply = command(bot, slack, f"kick {room_id} <@{BOB}|bob>", ALICE)
    assert "Removed <@UBOB0001>" in reply and "refuse their next join or reconnect" in reply
    assert "MEETBOT_WEBHOOK_SECRET" not in reply

    ok, why = ams.check_join(room_id, tok[BOB])
    assert not ok and "403" in why
    for user in (ALICE, CAROL):
        ok, why = ams.check_join(room_id, tok[user])
        assert ok, (user, why)

    # Bob's DM now says he was removed, and holds no link.
    wait_for(lambda: "removed you" in str(slack.dms_to(BOB)[0].get("blocks")))
    assert dm_links(slack, BOB) == []
    assert dm_links(slack, CAROL)  # nobody else's DM changed

    # "Get my link" does not hand him a new one either.
    click = sender_for(bot, slack).block_action("meet_get_link", room_id, user_id=BOB)
    assert click.status_code == 200
    wait_for(lambda: any("removed you" in t for t in response_texts(slack, click.response_key)))

    url = bot.env["DATABASE_URL"]
    (kick,) = [a for a in db_rows(url, "audit") if a["action"] == "kick"]
    assert kick["actor"] == ALICE and BOB in kick["detail"]
    assert [g["user_id"] for g in db_rows(url, "grants") if g["revoked_at"]] == [BOB]
    assert command(bot, slack, f"kick {room_id} <@{BOB}|bob>", ALICE).startswith("<@UBOB0001>")
    assert tok[BOB] not in bot.log()
    settle()


def test_webhook_answers(hooked, slack, ams):
    bot = hooked
    room_id = open_room(bot, slack, f"sync <@{BOB}>")
    tok = tokens(slack, ALICE, BOB)
    body = {
        "appName": "Conference",
        "name": "sync",
        "streamId": room_id,
        "mode": "publish",
        "token": tok[BOB],
        "subscriberId": "",
        "subscriberCode": "",
        "metaData": "",
        "queryParams": "",
    }
    assert hook(bot, body).status_code == 200

    # The path secret: wrong, truncated or empty is an unknown route.
    for wrong in ("x" * len(HOOK_SECRET), HOOK_SECRET[:-1], ""):
        r = hook(bot, body, secret=wrong)
        assert r.status_code == 404, wrong
    assert requests.get(f"{bot.url}/ams/auth/{HOOK_SECRET}", timeout=5).status_code == 405

    # Malformed bodies.
    assert hook(bot, data=b"{not json").status_code == 400
    assert hook(bot, data=b"[1, 2]").status_code == 400
    assert hook(bot, {"streamId": room_id}).status_code == 400
    assert hook(bot, {"token": tok[BOB]}).status_code == 400

    # Tokens that must not pass.
    claims = jwt.decode(tok[BOB], STREAM_SECRET, algorithms=["HS256"])
    forged = jwt.encode(claims, "not-the-stream-secret-0123456789-abcdef", algorithm="HS256")
    assert hook(bot, {**body, "token": forged}).status_code == 403
    assert hook(bot, {**body, "token": ""}).status_code == 403
    assert hook(bot, {**body, "streamId": "another-room"}).status_code == 403
    unknown_jti = jwt.encode({**claims, "jti": "made-up"}, STREAM_SECRET, algorithm="HS256")
    assert hook(bot, {**body, "token": unknown_jti}).status_code == 403
    expired = jwt.encode({**claims, "exp": int(time.time()) - 1}, STREAM_SECRET, algorithm="HS256")
    assert hook(bot, {**body, "token": expired}).status_code == 403
    assert hook(bot, {**body, "token": tok[ALICE]}).status_code == 200

    # The room ends: nobody's token passes the webhook any more.
    assert "Ended" in command(bot, slack, f"end {room_id}", ALICE)
    assert hook(bot, body).status_code == 403
    assert hook(bot, {**body, "token": tok[ALICE]}).status_code == 403
    log = bot.log()
    assert tok[BOB] not in log and forged not in log and HOOK_SECRET not in log

    # Every answer AMS got is timed, by outcome; wrong path secrets are not AMS.
    m = scrape(bot.url)
    count = "meetbot_auth_webhook_seconds_count"
    assert value(m, count, outcome="allowed") == 2
    assert value(m, count, outcome="refused") == 7
    assert value(m, count, outcome="malformed") == 5
    assert value(m, count, outcome="error") is None
    assert value(m, "meetbot_auth_webhook_seconds_bucket", outcome="allowed", le="+Inf") == 2
    settle()


def test_a_token_with_someone_elses_jti_is_refused(hooked, slack, ams):
    """A valid jti is not enough: the token must be that grant's person's (``sub``)."""
    bot = hooked
    room_id = open_room(bot, slack)
    tok = tokens(slack, BOB, CAROL)
    bobs = jwt.decode(tok[BOB], STREAM_SECRET, algorithms=["HS256"])
    carols = jwt.decode(tok[CAROL], STREAM_SECRET, algorithms=["HS256"])
    body = {"streamId": room_id, "mode": "publish", "token": tok[BOB]}
    assert hook(bot, body).status_code == 200
    # Signed with the real secret (as a leaked stream secret would allow), for this
    # room, with Bob's live jti, but in Carol's name, or in nobody's.
    for forged in (
        {**bobs, "sub": CAROL},
        {**carols, "jti": bobs["jti"]},
        {k: v for k, v in bobs.items() if k != "sub"},
    ):
        token = jwt.encode(forged, STREAM_SECRET, algorithm="HS256")
        assert hook(bot, {**body, "token": token}).status_code == 403, forged
        assert not ams.check_join(room_id, token)[0]
    assert "token does not match its grant" in bot.log()
    settle()


def test_without_the_webhook_secret_kick_warns_and_the_route_is_closed(start_bot, slack, ams):
    bot = start_bot()
    room_id = open_room(bot, slack, f"sync <@{BOB}>")
    r = requests.post(f"{bot.url}/ams/auth/anything-at-all-here", json={}, timeout=5)
    assert r.status_code == 404

    reply = command(bot, slack, f"kick {room_id} <@{BOB}|bob>", ALICE)
    assert "Removed <@UBOB0001>" in reply
    assert "MEETBOT_WEBHOOK_SECRET" in reply and "keeps working until it expires" in reply
    wait_for(lambda: "removed you" in str(slack.dms_to(BOB)[0].get("blocks")))
    own = sender_for(bot, slack).command(f"kick {room_id} <@{ALICE}|alice>", user_id=ALICE)
    assert "kick yourself" in own.text  # refused in the ack itself
    assert "don't know a room" in command(bot, slack, f"kick nosuchroom <@{BOB}|bob>", ALICE)
    settle()
