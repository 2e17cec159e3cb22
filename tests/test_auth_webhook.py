"""AMS's authorization webhooks, /meet kick and /meet end, against a real server shape.

People join through the AMS double as Circle does (``ams.circle_join`` with the
link from their DM): they publish under their *own* stream id, share screens
as ``<id>_presentation``, and play the room; AMS calls the bot's
``/ams/auth/<secret>`` for the publish check (``webhookAuthenticateURL``) and
the play check (``webhookPlayAuthUrl``) with the shapes it really sends. What
AMS did (who is connected, who watches, which streams it was asked to stop) is
read from the double.
"""

from __future__ import annotations

import re
import time

import jwt
import pytest
import requests

from bot.sim.ams import AmsDouble, Participant
from tests.conftest import ALICE, BOB, CAROL, STREAM_SECRET, sender_for, wait_for
from tests.helpers import db_rows, dm_links, response_texts, token_of
from tests.test_metrics import scrape, value

HOOK_SECRET = "hook-secret_0123456789-abcdef"
STOP = re.compile(r"^/Conference/rest/v2/broadcasts/([^/]+)/stop$")


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


def links(slack, *users):
    return {u: dm_links(slack, u)[0] for u in users}


def join_all(ams: AmsDouble, slack, *users) -> dict[str, Participant]:
    people = {u: ams.circle_join(link, name=u.lower()) for u, link in links(slack, *users).items()}
    for user, person in people.items():
        assert person.joined, (user, person.why)
    return people


def stopped_ids(ams: AmsDouble) -> list[str]:
    """The stream ids AMS was asked to stop, in order."""
    matches = [STOP.match(r.path) for r in ams.requests if r.method == "POST"]
    return [m.group(1) for m in matches if m]


def streams_table(bot) -> dict[str, dict]:
    return {s["stream_id"]: s for s in db_rows(bot.env["DATABASE_URL"], "ams_streams")}


def hook(bot, body=None, *, secret=HOOK_SECRET, data=None):
    return requests.post(f"{bot.url}/ams/auth/{secret}", json=body, data=data, timeout=5)


@pytest.fixture
def hooked(start_bot, slack, ams):
    """A bot with the webhook secret, and AMS's both checks pointed at it."""
    bot = start_bot(MEETBOT_WEBHOOK_SECRET=HOOK_SECRET)
    url = f"{bot.url}/ams/auth/{HOOK_SECRET}"
    ams.update_settings(webhookAuthenticateURL=url, webhookPlayAuthUrl=url)
    return bot


# -- joins ------------------------------------------------------------------------------
def test_participants_under_their_own_ids_and_their_screen_shares_are_let_in(hooked, slack, ams):
    bot = hooked
    room_id = open_room(bot, slack)
    people = join_all(ams, slack, ALICE, BOB, CAROL)
    assert ams.share_screen(people[BOB]) and people[BOB].presenting

    # What AMS asked: the publish check names each person's own stream, never the room;
    # the play check names the room. Every one answered 200.
    publishes = [d for d in ams.deliveries if d.kind == "publish"]
    plays = [d for d in ams.deliveries if d.kind == "play"]
    assert [d.payload["streamId"] for d in publishes] == [
        people[ALICE].stream_id,
        people[BOB].stream_id,
        people[CAROL].stream_id,
        people[BOB].stream_id + "_presentation",
    ]
    assert room_id not in {d.payload["streamId"] for d in publishes}
    assert [d.payload["streamId"] for d in plays] == [room_id] * 3
    assert {d.status for d in publishes + plays} == {200}
    assert sorted(ams.connected(room_id)) == sorted(
        [p.stream_id for p in people.values()] + [people[BOB].presentation_id]
    )

    # Each allowed stream is recorded against its person's grant: who is live under what.
    grants = {g["id"]: g["user_id"] for g in db_rows(bot.env["DATABASE_URL"], "grants")}
    owners = {sid: grants[row["grant_id"]] for sid, row in streams_table(bot).items()}
    assert owners == {
        people[ALICE].stream_id: ALICE,
        people[BOB].stream_id: BOB,
        people[BOB].presentation_id: BOB,
        people[CAROL].stream_id: CAROL,
    }
    log = bot.log()
    assert all(token_of(link) not in log for link in links(slack, ALICE, BOB, CAROL).values())
    settle()


def test_a_stream_id_is_its_first_publishers(hooked, slack, ams):
    """Stream ids are visible to everyone in a room: reusing Carol's (from a link's
    ``streamId``) is refused, so her stream stays hers and a kick still finds it."""
    bot = hooked
    room_id = open_room(bot, slack)
    carol = join_all(ams, slack, CAROL)[CAROL]
    ams.hang_up(carol)  # not live: AMS itself would not refuse a second publisher now
    bob = ams.circle_join(links(slack, BOB)[BOB] + f"&streamId={carol.stream_id}")
    assert not bob.publishing and "403" in bob.why
    assert bob.playing  # his own token still plays the room
    assert streams_table(bot)[carol.stream_id]["user_id"] == CAROL
    # Nor may anyone publish as a room.
    bob2 = ams.circle_join(links(slack, BOB)[BOB] + f"&streamId={room_id}")
    assert not bob2.publishing and "403" in bob2.why
    settle()


# -- kick -------------------------------------------------------------------------------
@pytest.mark.parametrize("semantics", ["enterprise", "community"])
def test_kick_refuses_publish_and_play_and_stops_their_streams_while_the_others_stay(
    hooked, slack, ams, semantics
):
    ams.stop_semantics = semantics
    bot = hooked
    room_id = open_room(bot, slack)
    people = join_all(ams, slack, ALICE, BOB, CAROL)
    bob = people[BOB]
    assert ams.share_screen(bob)
    ams.clear_requests()

    # A participant who is not the owner cannot kick anyone.
    refusal = command(bot, slack, f"kick {room_id} <@{CAROL}|carol>", BOB)
    assert "Only the room's owner" in refusal
    assert stopped_ids(ams) == []

    reply = command(bot, slack, f"kick {room_id} <@{BOB}|bob>", ALICE)
    assert "Removed <@UBOB0001>" in reply
    assert "stopped their 2 streams" in reply
    assert "refuse their next join or reconnect, to speak and to watch" in reply
    assert "MEETBOT_WEBHOOK_SECRET" not in reply and ":warning:" not in reply

    # By the time the owner hears it, AMS has dropped Bob's streams, and only his.
    assert sorted(stopped_ids(ams)) == sorted([bob.stream_id, bob.presentation_id])
    stops = [r for r in ams.requests if STOP.match(r.path)]
    assert all(r.query == {"stopSubtracks": ["false"]} for r in stops)
    assert not bob.publishing and not bob.presenting
    assert sorted(ams.connected(room_id)) == sorted(
        [people[ALICE].stream_id, people[CAROL].stream_id]
    )
    # His client reconnects with the token it holds: publish and play are refused.
    assert not ams.reconnect(bob)
    assert not bob.publishing and not bob.playing and "403" in bob.why
    assert bob.stream_id not in ams.watching(room_id)
    # Everyone else is still in, and can reconnect.
    for user in (ALICE, CAROL):
        assert people[user].joined
        assert ams.reconnect(people[user]), people[user].why

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
    settle()


def test_with_the_publish_check_only_a_kicked_person_can_still_watch_and_is_told_so(
    start_bot, slack, ams
):
    bot = start_bot(MEETBOT_WEBHOOK_SECRET=HOOK_SECRET)
    ams.update_settings(webhookAuthenticateURL=f"{bot.url}/ams/auth/{HOOK_SECRET}")
    room_id = open_room(bot, slack)
    people = join_all(ams, slack, ALICE, BOB)

    reply = command(bot, slack, f"kick {room_id} <@{BOB}|bob>", ALICE)
    assert "stopped their stream" in reply and "refuse their next join or reconnect" in reply
    assert "can still watch and listen until" in reply and "webhookPlayAuthUrl" in reply
    assert stopped_ids(ams) == [people[BOB].stream_id]
    # As promised: no publish any more, but AMS never asks before he watches.
    assert not ams.reconnect(people[BOB])
    assert not people[BOB].publishing and people[BOB].playing
    settle()


def test_without_the_webhook_secret_kick_warns_and_the_route_is_closed(start_bot, slack, ams):
    bot = start_bot()
    room_id = open_room(bot, slack, f"sync <@{BOB}>")
    r = requests.post(f"{bot.url}/ams/auth/anything-at-all-here", json={}, timeout=5)
    assert r.status_code == 404

    reply = command(bot, slack, f"kick {room_id} <@{BOB}|bob>", ALICE)
    assert "Removed <@UBOB0001>" in reply
    assert "MEETBOT_WEBHOOK_SECRET" in reply and "keeps working until it expires" in reply
    assert "stopped" not in reply  # nothing was live that the bot knew of
    wait_for(lambda: "removed you" in str(slack.dms_to(BOB)[0].get("blocks")))
    own = sender_for(bot, slack).command(f"kick {room_id} <@{ALICE}|alice>", user_id=ALICE)
    assert "kick yourself" in own.text  # refused in the ack itself
    assert "don't know a room" in command(bot, slack, f"kick nosuchroom <@{BOB}|bob>", ALICE)
    settle()


# -- end --------------------------------------------------------------------------------
@pytest.mark.parametrize("semantics", ["enterprise", "community"])
def test_an_ended_room_disconnects_everyone_and_its_links_open_nothing(
    hooked, slack, ams, semantics
):
    ams.stop_semantics = semantics
    bot = hooked
    room_id = open_room(bot, slack)
    people = join_all(ams, slack, ALICE, BOB, CAROL)
    kept = links(slack, ALICE, BOB)  # the DMs are edited when the room ends
    assert ams.share_screen(people[CAROL])
    ams.clear_requests()

    assert "Ended" in command(bot, slack, f"end {room_id}", ALICE)
    assert ams.connected(room_id) == [] and room_id not in ams.broadcasts
    assert all(not p.publishing and not p.presenting for p in people.values())
    # Nobody was left connected behind a deleted record: AMS counted 0 before the delete.
    paths = [r.path for r in ams.requests]
    count = paths.index(f"/Conference/rest/v2/broadcasts/{room_id}/active-subtracks-count")
    assert paths.index(f"/Conference/rest/v2/broadcasts/{room_id}") > count
    # Every link, used again, opens nothing: both checks refuse.
    for user, person in people.items():
        assert not ams.reconnect(person), user
        assert not person.publishing and not person.playing
    for user, link in kept.items():
        fresh = ams.circle_join(link)
        assert not fresh.publishing and not fresh.playing, user
    settle()


def test_an_end_finds_and_stops_participants_the_webhook_never_saw(start_bot, slack, ams):
    """No webhooks (nothing recorded) and Community Edition's stop, which ignores
    ``stopSubtracks``: the end lists AMS's active subtracks and stops each."""
    ams.stop_semantics = "community"
    bot = start_bot()
    room_id = open_room(bot, slack)
    people = join_all(ams, slack, ALICE, BOB, CAROL)
    assert streams_table(bot) == {}
    ams.clear_requests()
    assert "Ended" in command(bot, slack, f"end {room_id}", ALICE)
    assert ams.connected(room_id) == [] and room_id not in ams.broadcasts
    assert sorted(stopped_ids(ams)) == sorted([room_id] + [p.stream_id for p in people.values()])
    assert ams.count("GET", f"/Conference/rest/v2/broadcasts/{room_id}/active-subtracks/") == 1
    settle()


# -- the endpoint itself ----------------------------------------------------------------
def test_webhook_decisions_through_ams(hooked, slack, ams):
    """The bot's own decision, with AMS's JWT check off so only the webhook decides."""
    bot = hooked
    ams.update_settings(publishJwtControlEnabled=False, playJwtControlEnabled=False)
    room_id = open_room(bot, slack, f"sync <@{BOB}>")
    tok = {u: token_of(link) for u, link in links(slack, ALICE, BOB).items()}
    assert ams.check_join(room_id, tok[BOB]) == (True, "ok")
    claims = jwt.decode(tok[BOB], STREAM_SECRET, algorithms=["HS256"])

    def refused(token, room=room_id, mode="join"):
        ok, why = ams.check_join(room, token, mode)
        return not ok and "HTTP 403" in why

    forged = jwt.encode(claims, "not-the-stream-secret-0123456789-abcdef", algorithm="HS256")
    assert refused(forged)
    assert ams.check_join(room_id, "")[0] is False  # Circle's token "" for a link without one
    unknown_jti = jwt.encode({**claims, "jti": "made-up"}, STREAM_SECRET, algorithm="HS256")
    assert refused(unknown_jti)
    expired = jwt.encode({**claims, "exp": int(time.time()) - 1}, STREAM_SECRET, algorithm="HS256")
    assert refused(expired)
    someone_else = jwt.encode({**claims, "sub": CAROL}, STREAM_SECRET, algorithm="HS256")
    assert refused(someone_else)
    play_type = jwt.encode({**claims, "type": "play"}, STREAM_SECRET, algorithm="HS256")
    assert refused(play_type)
    # The token's room is the one it plays: another room's play is refused.
    assert refused(tok[BOB], room="another-room", mode="play")
    assert ams.check_join(room_id, tok[ALICE]) == (True, "ok")

    # The room ends: nobody's token passes either check.
    assert "Ended" in command(bot, slack, f"end {room_id}", ALICE)
    for token in tok.values():
        assert refused(token, mode="publish") and refused(token, mode="play")
    log = bot.log()
    assert all(t not in log for t in (*tok.values(), forged)) and HOOK_SECRET not in log
    settle()


def test_webhook_route_refuses_what_is_not_ams(hooked, slack, ams):
    bot = hooked
    body = {"appName": "Conference", "name": "s", "streamId": "s_0123456789", "mode": "live"}
    # No token (AMS leaves null fields out): a refusal, not an error.
    assert hook(bot, body).status_code == 403
    # The path secret: wrong, truncated or empty is an unknown route.
    for wrong in ("x" * len(HOOK_SECRET), HOOK_SECRET[:-1], ""):
        assert hook(bot, body, secret=wrong).status_code == 404, wrong
    assert requests.get(f"{bot.url}/ams/auth/{HOOK_SECRET}", timeout=5).status_code == 405
    # Malformed bodies.
    assert hook(bot, data=b"{not json").status_code == 400
    assert hook(bot, data=b"[1, 2]").status_code == 400
    assert hook(bot, {"token": "x"}).status_code == 400
    # ISO-8859-1 (the publish check's encoding) is read, and refused on its merits.
    latin = '{"streamId":"s_0123456789","token":"x","metaData":"caf\u00e9"}'.encode("latin-1")
    assert hook(bot, data=latin).status_code == 403
    settle()


def test_every_answer_to_ams_is_timed_by_outcome(hooked, slack, ams):
    """AMS makes every join of the application wait for this webhook: its latency is a
    metric, by outcome; a wrong path secret is not AMS, so it is not counted."""
    bot = hooked
    room_id = open_room(bot, slack, f"sync <@{BOB}>")
    tok = token_of(links(slack, BOB)[BOB])
    assert ams.check_join(room_id, tok) == (True, "ok")  # the publish and the play check
    assert hook(bot, {"streamId": "s_0123456789", "token": "x"}).status_code == 403
    assert hook(bot, data=b"{not json").status_code == 400
    assert hook(bot, {"streamId": "s_0123456789"}, secret="x" * 12).status_code == 404
    m = scrape(bot.url)
    count = "meetbot_auth_webhook_seconds_count"
    assert value(m, count, outcome="allowed") == 2
    assert value(m, count, outcome="refused") == 1
    assert value(m, count, outcome="malformed") == 1
    assert value(m, count, outcome="error") is None
    assert value(m, "meetbot_auth_webhook_seconds_bucket", outcome="allowed", le="+Inf") == 2
    settle()


def test_kick_says_so_when_ams_never_asked_and_when_a_stop_went_unanswered(start_bot, slack, ams):
    """MEETBOT_WEBHOOK_SECRET is set but AMS was never pointed at the bot: the reply
    does not promise a refusal. A stop AMS does not answer is said, not hidden."""
    bot = start_bot(MEETBOT_WEBHOOK_SECRET=HOOK_SECRET)
    room_id = open_room(bot, slack)
    join_all(ams, slack, ALICE, BOB)
    reply = command(bot, slack, f"kick {room_id} <@{BOB}|bob>", ALICE)
    assert "hasn't asked me about any join lately" in reply
    assert "keeps working until it expires" in reply and "refuse" not in reply

    url = f"{bot.url}/ams/auth/{HOOK_SECRET}"
    ams.update_settings(webhookAuthenticateURL=url, webhookPlayAuthUrl=url)
    carol = join_all(ams, slack, CAROL)[CAROL]
    ams.fail_next(20, status=503, path_regex=f"/broadcasts/{carol.stream_id}/stop$")
    reply = command(bot, slack, f"kick {room_id} <@{CAROL}|carol>", ALICE)
    assert "didn't answer when I tried to stop 1 of their streams" in reply
    assert "refuse their next join or reconnect, to speak and to watch" in reply
    assert carol.publishing  # as the reply says: still connected
    assert not ams.reconnect(carol) and not carol.playing
    settle()
