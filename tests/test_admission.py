"""Who may get a link to a room: the one admission policy, on every path that makes a grant.

One real ``meetbot serve`` (Slack Calls on, so every door is open) and one
room, opened by Alice in #general with Bob and an invited guest. Then each
kind of person knocks on each door: ``/meet`` itself, *Get my link* on the
channel card and on the App Home (signed clicks, so a forged one is the same
request a real one is), the Slack Call's sign-in over HTTP, and ``meetbot
link``. What the policy says is read from what people saw: DMs, replies,
pages, the CLI's output, and the grants in the database.

Everyone but the invitees and the owner is in #general, so what refuses a
guest, a bot, a deactivated account or someone of another workspace is its
own rule, not the channel.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from bot.home import view as home
from bot.ops.cli import main
from tests.conftest import (
    ALICE,
    BOB,
    CAROL,
    GUEST,
    SOMEBOT,
    BotProcess,
    free_port,
    sender_for,
    wait_for,
)
from tests.helpers import BROWSER, db_exec, db_rows, response_texts, settled
from tests.test_home import home_click, home_of, notice, open_home

CLIENT_ID = "1234567890.0987654321"
CLIENT_SECRET = "calls-client-secret-0123456789abcdef"

OUTSIDER = "UOUTSID1"  # a full member of the workspace, not in #general, not invited
GUEST_OUT = "UGUEST02"  # a guest in #general, not invited
GONE = "UGONE001"  # deactivated, still listed in #general
STRANGER = "USTRANG1"  # Slack Connect: in #general, of another workspace (T0009)

#: who → (may have a link?, the policy's reason when not)
RULES: dict[str, tuple[bool, str | None]] = {
    ALICE: (True, None),  # the owner
    BOB: (True, None),  # an invitee
    GUEST: (True, None),  # a guest, invited
    CAROL: (True, None),  # a member of the room's channel
    OUTSIDER: (False, "not_member"),
    GUEST_OUT: (False, "guest"),
    SOMEBOT: (False, "bot"),
    GONE: (False, "deactivated"),
    STRANGER: (False, "wrong_workspace"),
}
#: What the person is told (Get my link's reply, the App Home's notice).
TOLD = {
    "not_member": "only for the people",
    "guest": "Guests can only join rooms they were invited to",
    "bot": "Bots can't join rooms",
    "deactivated": "deactivated",
    "wrong_workspace": "belongs to another Slack workspace",
}
#: The page a refused Call sign-in shows.
PAGE = {
    "not_member": "This meeting is for its invitees",
    "guest": "Guests need an invitation",
    "bot": "This account can&#8217;t join",
    "deactivated": "This account can&#8217;t join",
    "wrong_workspace": "This meeting is in another workspace",
}


@pytest.fixture
def people(slack) -> None:
    slack.add_user(OUTSIDER, "olivia")
    slack.add_user(GUEST_OUT, "gus", is_restricted=True)
    slack.add_user(GONE, "gone", deleted=True)
    slack.add_user(STRANGER, "sam", team_id="T0009", connect=True)
    slack.join_channel("C1", GUEST_OUT, GONE, STRANGER)


@pytest.fixture
def bot(start_bot, slack, people) -> Iterator[BotProcess]:
    """``meetbot serve`` with Slack Calls (and so click-time links) on."""
    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    port = free_port()
    yield start_bot(
        PORT=str(port),
        MEETBOT_PUBLIC_URL=f"http://127.0.0.1:{port}",
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET=CLIENT_SECRET,
        MEETBOT_SLACK_CALLS="1",
    )
    time.sleep(0.3)  # let the bot see the last connection close before SIGTERM


def open_room(bot: BotProcess, slack, text: str = f"sync <@{BOB}> <@{GUEST}>") -> dict:
    before = {r["id"] for r in db_rows(bot.env["DATABASE_URL"], "rooms")}
    r = sender_for(bot, slack).command(text, user_id=ALICE)
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    settled(bot)
    (room,) = [x for x in db_rows(bot.env["DATABASE_URL"], "rooms") if x["id"] not in before]
    # The invitees' links went out just now; let a click send them again.
    db_exec(bot.env["DATABASE_URL"], "UPDATE grants SET link_sent_at = 0")
    return room


def grantees(bot: BotProcess, room_id: str) -> set[str]:
    rows = db_rows(bot.env["DATABASE_URL"], "grants")
    return {g["user_id"] for g in rows if g["room_id"] == room_id and g["revoked_at"] is None}


def dm_count(slack, user: str) -> int:
    return len(slack.dms_to(user))


# -- /meet ----------------------------------------------------------------------------------
def test_meet_admits_its_owner_and_invitees_and_refuses_the_rest(bot, slack):
    url = bot.env["DATABASE_URL"]
    room = open_room(bot, slack)
    assert grantees(bot, room["id"]) == {ALICE, BOB, GUEST}  # the owner, an invitee, a guest
    assert all(dm_count(slack, u) == 1 for u in (ALICE, BOB, GUEST))
    # Someone outside the channel, once named, is invited all the same.
    room2 = open_room(bot, slack, f"pairing <@{OUTSIDER}>")
    assert grantees(bot, room2["id"]) == {ALICE, OUTSIDER}

    sender = sender_for(bot, slack)
    refused = {
        SOMEBOT: f"<@{SOMEBOT}> is a bot and can't join a room",
        GONE: f"<@{GONE}> is deactivated",
        STRANGER: f"<@{STRANGER}> is not in this room's Slack workspace",
    }
    for who, said in refused.items():
        r = sender.command(f"nope <@{who}>", user_id=ALICE)
        (reply,) = slack.wait_for_responses(r.response_key, 1)
        assert reply["text"] == f"I didn't open a room: {said}.", who
    r = sender.command(f"mine <@{BOB}>", user_id=GUEST_OUT)  # a guest may not open one
    (reply,) = slack.wait_for_responses(r.response_key, 1)
    assert "can't open rooms here" in reply["text"]
    settled(bot)
    assert len(db_rows(url, "rooms")) == 2
    for who in (SOMEBOT, GONE, STRANGER, GUEST_OUT):
        assert dm_count(slack, who) == 0, who


# -- Get my link on the channel card --------------------------------------------------------
def test_get_my_link_on_the_card_follows_the_policy(bot, slack):
    room = open_room(bot, slack)
    sender = sender_for(bot, slack)
    for who, (admitted, why) in RULES.items():
        before = dm_count(slack, who)
        r = sender.block_action("meet_get_link", room["id"], user_id=who, channel_id="C1")
        assert r.status_code == 200
        (reply,) = slack.wait_for_responses(r.response_key, 1)
        settled(bot)
        if admitted:
            assert reply["text"] == "I've sent your personal link to you by DM.", who
            assert dm_count(slack, who) == before + 1, who
        else:
            assert TOLD[why] in reply["text"], (who, reply["text"])
            assert dm_count(slack, who) == before, who
    assert grantees(bot, room["id"]) == {u for u, (ok, _) in RULES.items() if ok}
    links = [a for a in db_rows(bot.env["DATABASE_URL"], "audit") if a["action"] == "link"]
    assert {a["actor"] for a in links} == {u for u, (ok, _) in RULES.items() if ok}


def test_get_my_link_refusal_names_the_channel_and_the_owner(bot, slack):
    room = open_room(bot, slack)
    r = sender_for(bot, slack).block_action("meet_get_link", room["id"], user_id=OUTSIDER)
    (reply,) = slack.wait_for_responses(r.response_key, 1)
    assert reply["text"] == (
        f"This room is only for the people <@{ALICE}> invited and the members of <#C1>. "
        f"Ask <@{ALICE}> to invite you."
    )


def test_a_channel_member_who_joined_just_now_is_let_in(bot, slack):
    """The member list is cached briefly, but a refusal is asked again, not served stale."""
    room = open_room(bot, slack)
    sender = sender_for(bot, slack)
    r = sender.block_action("meet_get_link", room["id"], user_id=OUTSIDER)
    assert "only for the people" in slack.wait_for_responses(r.response_key, 1)[0]["text"]
    slack.join_channel("C1", OUTSIDER)
    sent = "I've sent your personal link to you by DM."

    def click() -> bool:
        r = sender.block_action("meet_get_link", room["id"], user_id=OUTSIDER)
        return slack.wait_for_responses(r.response_key, 1)[0]["text"] == sent

    wait_for(click, timeout=20, interval=1.0)
    members = slack.calls_to("conversations.members")
    assert members and all(c.args["channel"] == "C1" for c in members)


# -- Get my link on the App Home ---------------------------------------------------------
def test_get_my_link_on_the_app_home_follows_the_policy(bot, slack):
    room = open_room(bot, slack)
    sender = sender_for(bot, slack)
    for who, (admitted, why) in RULES.items():
        open_home(sender, who)
        wait_for(lambda who=who: home_of(slack, who))
        before = dm_count(slack, who)
        # Only the invited have the button on their Home: the others' clicks are forged.
        forge = None if who in (ALICE, BOB, GUEST) else ("home:forged", room["id"])
        home_click(sender, slack, who, home.ACTION_GET_LINK, room["id"], forge=forge)
        expected = "I've sent your personal link" if admitted else TOLD[why]
        wait_for(lambda who=who, expected=expected: expected in notice(home_of(slack, who)))
        settled(bot)
        assert dm_count(slack, who) == before + (1 if admitted else 0), who
    assert grantees(bot, room["id"]) == {u for u, (ok, _) in RULES.items() if ok}


# -- the Slack Call sign-in ------------------------------------------------------------------
def sign_in(bot: BotProcess, slack, room_id: str, user: str) -> requests.Response:
    """Press Join on the Call as ``user``: join_url → Slack's sign-in → the callback."""
    browser = requests.Session()
    public = bot.env["MEETBOT_PUBLIC_URL"]
    r = browser.get(f"{public}/join/room/{room_id}", headers=BROWSER, allow_redirects=False)
    assert r.status_code == 302, r.text
    slack.sign_in_as(user)
    at_slack = requests.get(r.headers["Location"], allow_redirects=False, timeout=5)
    assert at_slack.status_code == 302, at_slack.text
    return browser.get(at_slack.headers["Location"], headers=BROWSER, allow_redirects=False)


def test_the_call_sign_in_follows_the_policy(bot, slack, ams):
    room = open_room(bot, slack)
    for who, (admitted, why) in RULES.items():
        r = sign_in(bot, slack, room["id"], who)
        if admitted:
            assert r.status_code == 302, (who, r.text)
            assert r.headers["Location"].startswith(f"{ams.url}/Conference/{room['id']}?token=")
        else:
            assert r.status_code == 403, (who, r.status_code)
            assert PAGE[why] in r.text, who
            assert "Location" not in r.headers and "token=" not in r.text
    assert grantees(bot, room["id"]) == {u for u, (ok, _) in RULES.items() if ok}
    joins = [a for a in db_rows(bot.env["DATABASE_URL"], "audit") if a["action"] == "join"]
    assert {a["actor"] for a in joins} == {u for u, (ok, _) in RULES.items() if ok}


def test_a_non_member_who_has_the_calls_url_is_refused_in_a_private_channel(bot, slack):
    """The high-risk hole: the room id is no secret, so the Call's URL proves nothing."""
    slack.add_channel("GSECRET1", "secret", is_private=True, members=[ALICE, BOB])
    r = sender_for(bot, slack).command(f"secret <@{BOB}>", user_id=ALICE, channel_id="GSECRET1")
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    (room,) = db_rows(bot.env["DATABASE_URL"], "rooms")
    for outsider in (CAROL, OUTSIDER):  # in the workspace, one even in #general
        page = sign_in(bot, slack, room["id"], outsider)
        assert page.status_code == 403 and "This meeting is for its invitees" in page.text
    assert sign_in(bot, slack, room["id"], BOB).status_code == 302
    assert grantees(bot, room["id"]) == {ALICE, BOB}
    assert {c.args["channel"] for c in slack.calls_to("conversations.members")} == {"GSECRET1"}


def test_rooms_in_a_dm_or_a_channel_the_bot_cannot_read_admit_only_their_people(bot, slack):
    """Slack will not list a DM's members to the bot: nobody but the invitees gets in."""
    sender = sender_for(bot, slack)
    r = sender.command(f"just us <@{BOB}>", user_id=ALICE, channel_id="D0ALICEBOB")
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    (room,) = db_rows(bot.env["DATABASE_URL"], "rooms")
    assert sign_in(bot, slack, room["id"], CAROL).status_code == 403
    assert sign_in(bot, slack, room["id"], BOB).status_code == 302
    errors = {c.error for c in slack.calls_to("conversations.members")}
    assert errors == {"channel_not_found"}
    assert grantees(bot, room["id"]) == {ALICE, BOB}


def test_a_room_opened_from_the_app_home_admits_only_its_people(bot, slack):
    """The Home's form opens a room whose card goes to the owner's DM: no channel to be in."""
    url = bot.env["DATABASE_URL"]
    r = sender_for(bot, slack).view_submission(
        home.NEW_ROOM_CALLBACK,
        {
            "topic": {"value": "from home"},
            "invitees": {"value": [BOB]},
            "duration": {"value": {"type": "static_select", "selected_option": {"value": "1800"}}},
        },
        user_id=ALICE,
    )
    assert r.status_code == 200 and r.text == ""
    (room,) = wait_for(lambda: [r for r in db_rows(url, "rooms") if r["state"] == "active"])
    assert room["channel_id"] == ALICE
    assert sign_in(bot, slack, room["id"], CAROL).status_code == 403
    assert sign_in(bot, slack, room["id"], ALICE).status_code == 302
    assert slack.calls_to("conversations.members") == []


def test_when_slack_cannot_list_the_channel_nobody_new_gets_in(bot, slack):
    room = open_room(bot, slack)
    slack.fail("conversations.members", "internal_error", status=500, times=None)
    page = sign_in(bot, slack, room["id"], CAROL)
    assert page.status_code == 503 and "Slack didn" in page.text
    r = sender_for(bot, slack).block_action("meet_get_link", room["id"], user_id=CAROL)
    assert "try again" in slack.wait_for_responses(r.response_key, 1)[0]["text"]
    # The invited are not asked about: their link is theirs.
    assert sign_in(bot, slack, room["id"], BOB).status_code == 302
    assert grantees(bot, room["id"]) == {ALICE, BOB, GUEST}


# -- meetbot link (support) ----------------------------------------------------------------
@pytest.fixture
def cli(bot) -> Iterator[Any]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*args: str):
        return CliRunner().invoke(main, list(args), env=dict(bot.env))

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def test_meetbot_link_follows_the_policy(bot, slack, cli):
    room = open_room(bot, slack)
    for who, (admitted, why) in RULES.items():
        result = cli("link", room["id"], "--user", who, "--json")
        if admitted:
            assert result.exit_code == 0, (who, result.output)
            assert json.loads(result.stdout)["user"] == who
        else:
            assert result.exit_code == 1, (who, result.output)
            assert "not handing out a link" in result.output and who in result.output
            assert "token=" not in result.output
    assert grantees(bot, room["id"]) == {u for u, (ok, _) in RULES.items() if ok}
    links = [a for a in db_rows(bot.env["DATABASE_URL"], "audit") if a["action"] == "link"]
    assert {json.loads(a["detail"])["user"] for a in links} == {
        u for u, (ok, _) in RULES.items() if ok
    }


# -- /meet kick bars every door ---------------------------------------------------------------
def test_someone_kicked_before_they_had_a_link_is_refused_everywhere(bot, slack, cli):
    room = open_room(bot, slack)
    sender = sender_for(bot, slack)
    r = sender.command(f"kick {room['id']} <@{CAROL}>", user_id=ALICE)
    wait_for(lambda: any("can't get one" in t for t in response_texts(slack, r.response_key)))
    (barred,) = [g for g in db_rows(bot.env["DATABASE_URL"], "grants") if g["user_id"] == CAROL]
    assert barred["revoked_at"] is not None and barred["secret_version"] is None
    r = sender.block_action("meet_get_link", room["id"], user_id=CAROL)
    assert "removed you" in slack.wait_for_responses(r.response_key, 1)[0]["text"]
    page = sign_in(bot, slack, room["id"], CAROL)
    assert page.status_code == 410 and "withdrawn" in page.text
    result = cli("link", room["id"], "--user", CAROL)
    assert result.exit_code == 1 and "was removed" in result.output
    settled(bot)
    assert dm_count(slack, CAROL) == 0
