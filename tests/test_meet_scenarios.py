"""/meet end to end: a real `meetbot serve`, the AMS and Slack doubles, signed requests."""

from __future__ import annotations

import jwt

from tests.conftest import ALICE, BOB, CAROL, STREAM_SECRET, wait_for


def dm_links(slack, user_id):
    """Every join URL in the bot's DMs to ``user_id`` (from the Join buttons)."""
    links = []
    for msg in slack.dms_to(user_id):
        for block in msg.get("blocks") or []:
            for el in block.get("elements") or []:
                if el.get("type") == "button" and el.get("url"):
                    links.append(el["url"])
    return links


def token_of(link):
    return link.split("token=", 1)[1].split("&", 1)[0]


def test_meet_opens_room_and_dms_each_person_their_own_link(bot, sender, slack, ams):
    r = sender.command(f"standup <@{BOB}|bob> <@{CAROL}|carol> for 30m", user_id=ALICE)
    assert r.status_code == 200
    assert "Creating" in r.text

    wait_for(lambda: all(dm_links(slack, u) for u in (ALICE, BOB, CAROL)))
    rooms = [b for b in ams.broadcasts.values() if not b.get("mainTrackStreamId")]
    assert len(rooms) == 1
    room = rooms[0]
    room_id = room["streamId"]
    assert room["name"] == "standup"
    assert room["plannedEndDate"] - room["plannedStartDate"] == 1800

    seen_jti = set()
    for user in (ALICE, BOB, CAROL):
        (link,) = dm_links(slack, user)
        assert link.startswith(f"{ams.url}/Conference/{room_id}?token=")
        token = token_of(link)
        claims = jwt.decode(token, STREAM_SECRET, algorithms=["HS256"])
        assert claims["streamId"] == room_id and claims["type"] == "publish"
        assert claims["sub"] == user
        assert "iat" not in claims and "nbf" not in claims
        assert claims["exp"] == room["plannedEndDate"] + 300
        seen_jti.add(claims["jti"])
        ok, why = ams.check_join(room_id, token)
        assert ok, why
    assert len(seen_jti) == 3

    posts = slack.calls_to("chat.postMessage")
    for call in posts:
        assert call.args.get("unfurl_links") is False and call.args.get("unfurl_media") is False
    card = wait_for(lambda: slack.messages("C1"))
    assert "Get my link" in str(card[-1]["blocks"])
    assert "token" not in str(card)
