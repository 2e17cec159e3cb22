"""Multi-workspace installs: OAuth into our own database, and workspaces kept apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import requests
import yaml
from cryptography.fernet import Fernet

from bot.sim.slack import SlackSender
from bot.slack.workspaces import BOT_SCOPES
from tests.conftest import ALICE, BOB, SIGNING_SECRET, wait_for
from tests.helpers import db_rows, dm_links, response_texts, rooms_on_ams, settled

CLIENT_ID, CLIENT_SECRET = "1111.2222", "oauth-client-secret-abc"
T1, T2 = "T0001", "T0002"
SECRET_KEY = Fernet.generate_key().decode()
ERIN, FRED = "UERIN002", "UFRED002"  # members of the second workspace


def install(bot, slack, team_id):
    """Walk Bolt's install flow as a browser and Slack would."""
    page = requests.get(bot.url + "/slack/install", timeout=5)
    assert page.status_code == 200
    state = re.search(r"state=([\w-]+)", page.text).group(1)
    # Bolt's state cookie is `Secure`; a browser on https sends it back, and
    # so do we here by hand on loopback http.
    cookie = page.headers["Set-Cookie"].split(";", 1)[0]
    code = slack.issue_oauth_code(team_id)
    return requests.get(
        bot.url + "/slack/oauth_redirect",
        params={"code": code, "state": state},
        headers={"Cookie": cookie},
        timeout=10,
    )


def second_workspace_people(slack):
    """Erin and Fred, of the second workspace; the double's C1 stands for a channel of
    each workspace, so they are in it too."""
    slack.add_user(ERIN, "erin", team_id=T2)
    slack.add_user(FRED, "fred", team_id=T2)
    slack.join_channel("C1", ERIN, FRED)


def oauth_bot(start_bot, slack, **extra):
    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    if not any(w["team_id"] == T2 for w in slack.workspaces.values()):
        slack.add_workspace(T2)
    second_workspace_people(slack)
    return start_bot(
        SLACK_BOT_TOKEN="",
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET=CLIENT_SECRET,
        MEETBOT_SECRET_KEY=SECRET_KEY,
        **extra,
    )


def grid_people(slack):
    """Alice and Bob as people of the Enterprise Grid org E0001: Alice in its
    workspace T0003, Bob in another workspace of the org, T0004."""
    slack.add_user(ALICE, "alice", team_id="T0003", enterprise_id="E0001")
    slack.add_user(BOB, "bob", team_id="T0004", enterprise_id="E0001")


def token_of_team(slack, team_id):
    return next(t for t, w in slack.workspaces.items() if w["team_id"] == team_id)


def test_install_two_workspaces_and_keep_them_apart(start_bot, slack, ams):
    bot = oauth_bot(start_bot, slack)
    url = bot.env["DATABASE_URL"]
    for team in (T1, T2):
        done = install(bot, slack, team)
        assert done.status_code == 200, done.text
    installed = {r["team_id"] for r in db_rows(url, "slack_installations")}
    assert installed == {T1, T2}
    # The workspaces' bot tokens are stored encrypted, never in clear.
    stored = str(db_rows(url, "slack_installations")) + str(db_rows(url, "slack_bots"))
    for token in slack.workspaces:
        assert token not in stored

    one = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T1, double=slack)
    two = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T2, double=slack)
    r = one.command(f"plans <@{BOB}>", user_id=ALICE)
    wait_for(lambda: any("is open" in t for t in response_texts(slack, r.response_key)))
    (room,) = db_rows(url, "rooms")
    assert room["team_id"] == T1
    # Each workspace's messages go out with that workspace's own token.
    assert {c.team_id for c in slack.calls_to("chat.postMessage")} == {T1}

    # The other workspace can neither see, nor end, nor get a link to it.
    assert "no open rooms" in two.command("list", user_id=ERIN).text
    r = two.command(f"end {room['id']}", user_id=ERIN)
    assert "don't know a room" in slack.wait_for_responses(r.response_key)[0]["text"]
    two.block_action("meet_get_link", room["id"], user_id=ERIN, channel_id="C1")
    wait_for(lambda: slack.calls_to("chat.postMessage") and True)
    assert not dm_links(slack, ERIN)
    assert db_rows(url, "rooms")[0]["state"] == "active"

    r = two.command("retro", user_id=ERIN)
    wait_for(lambda: dm_links(slack, ERIN))
    # A button click in the second workspace looks its clicker up with that
    # workspace's token (users.info) before DMing them their link.
    retro = next(r for r in db_rows(url, "rooms") if r["team_id"] == T2)
    two.block_action("meet_get_link", retro["id"], user_id=FRED, channel_id="C1")
    wait_for(lambda: dm_links(slack, FRED))
    assert {c.team_id for c in slack.calls_to("users.info") if c.args.get("user") == FRED} == {T2}
    assert {c.team_id for c in slack.calls_to("chat.postMessage")} == {T1, T2}
    assert "retro" not in one.command("list", user_id=ALICE).text


def test_uninstall_ends_that_workspace_only(start_bot, slack, ams):
    bot = oauth_bot(start_bot, slack)
    url = bot.env["DATABASE_URL"]
    for team in (T1, T2):
        install(bot, slack, team)
    one = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T1, double=slack)
    two = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T2, double=slack)
    one.command(f"plans <@{BOB}>", user_id=ALICE)
    two.command("retro", user_id=ERIN)
    wait_for(lambda: len([r for r in db_rows(url, "rooms") if r["state"] == "active"]) == 2)

    r = two.event({"type": "app_uninstalled"})
    assert r.status_code == 200
    wait_for(lambda: {r["team_id"]: r["state"] for r in db_rows(url, "rooms")}[T2] == "revoked")
    assert {r["team_id"]: r["state"] for r in db_rows(url, "rooms")}[T1] == "active"
    assert len(rooms_on_ams(ams)) == 1
    wait_for(lambda: {r["team_id"] for r in db_rows(url, "slack_installations")} == {T1})


def test_a_team_room_opens_on_schedule_in_its_own_workspace(start_bot, slack, ams):
    """The scheduler acts for no request: it must take the schedule's workspace
    (its token) for users.info, the room and the DMs."""
    import time

    from tests.helpers import db_exec

    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    slack.add_workspace(T2)
    second_workspace_people(slack)
    settings = dict(
        SLACK_BOT_TOKEN="",
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET=CLIENT_SECRET,
        MEETBOT_SECRET_KEY=SECRET_KEY,
        MEETBOT_SWEEP_INTERVAL="1s",
    )
    bot = start_bot(**settings)
    url = bot.env["DATABASE_URL"]
    install(bot, slack, T2)
    two = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T2, double=slack)
    r = two.command(f"schedule retro every day at 09:30 <@{FRED}|fred>", user_id=ERIN)
    assert r.status_code == 200
    wait_for(lambda: db_rows(url, "schedules"))
    # The next morning, as it were: a restarted bot, nothing of the request cached.
    assert bot.terminate() == 0
    bot = start_bot(**settings)
    # Due now (as if it were 09:30), rather than waiting for the clock.
    db_exec(url, "UPDATE schedules SET next_run_at = :t", t=int(time.time()) - 5)
    wait_for(lambda: dm_links(slack, ERIN) and dm_links(slack, FRED), timeout=30)
    (room,) = db_rows(url, "rooms")
    assert room["team_id"] == T2 and room["state"] == "active" and room["schedule_id"]
    assert len(rooms_on_ams(ams)) == 1


def test_install_with_a_forged_state_is_refused(start_bot, slack):
    bot = oauth_bot(start_bot, slack)
    code = slack.issue_oauth_code(T1)
    r = requests.get(
        bot.url + "/slack/oauth_redirect", params={"code": code, "state": "forged"}, timeout=5
    )
    assert r.status_code >= 400
    assert db_rows(bot.env["DATABASE_URL"], "slack_installations") == []


def test_oauth_scopes_match_the_manifest():
    manifest = yaml.safe_load((Path(__file__).parents[1] / "manifest.yml").read_text())
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == set(BOT_SCOPES)


def test_enterprise_grid_org_install_is_keyed_by_the_enterprise(start_bot, slack, ams):
    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    slack.add_workspace("T0003", enterprise_id="E0001")
    grid_people(slack)
    bot = start_bot(
        SLACK_BOT_TOKEN="",
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET=CLIENT_SECRET,
        MEETBOT_SECRET_KEY=SECRET_KEY,
    )
    url = bot.env["DATABASE_URL"]
    page = requests.get(bot.url + "/slack/install", timeout=5)
    state = re.search(r"state=([\w-]+)", page.text).group(1)
    code = slack.issue_oauth_code("T0003", is_enterprise_install=True)
    done = requests.get(
        bot.url + "/slack/oauth_redirect",
        params={"code": code, "state": state},
        headers={"Cookie": page.headers["Set-Cookie"].split(";", 1)[0]},
        timeout=10,
    )
    assert done.status_code == 200, done.text
    (inst,) = db_rows(url, "slack_installations")
    assert inst["enterprise_id"] == "E0001" and inst["team_id"] is None
    assert inst["is_enterprise_install"]

    # A workspace of the org, never installed on its own, is served by the org install.
    grid = SlackSender(
        bot.url + "/slack/events",
        SIGNING_SECRET,
        team_id="T0003",
        double=slack,
        enterprise_id="E0001",
        enterprise_install=True,
    )
    r = grid.command(f"grid sync <@{BOB}>", user_id=ALICE)
    wait_for(lambda: dm_links(slack, BOB))
    (room,) = db_rows(url, "rooms")
    assert (room["team_id"], room["enterprise_id"]) == ("T0003", "E0001")
    assert {c.team_id for c in slack.calls_to("chat.postMessage")} == {"T0003"}
    assert r.status_code == 200


# -- MEETBOT_ALLOWED_TEAMS ---------------------------------------------------------------
def not_served(bot, slack, ams, sender, user):
    """A /meet from ``sender``'s workspace is refused by Bolt before any listener runs."""
    posts = len(slack.calls_to("chat.postMessage"))
    r = sender.command(f"plans <@{user}>", user_id=user)
    assert r.status_code == 200
    # The listener acks "Creating your room…" and hands the work over; Bolt's
    # authorization answered instead (by response_url), so nothing was handed over.
    assert "Creating your room" not in r.text
    (reply,) = slack.wait_for_responses(r.response_key)
    assert "installation with this app is no longer available" in reply["text"]
    assert db_rows(bot.env["DATABASE_URL"], "rooms") == []
    assert rooms_on_ams(ams) == [] and len(slack.calls_to("chat.postMessage")) == posts
    return r


def test_an_install_into_a_workspace_not_on_the_list_is_refused(start_bot, slack, ams):
    bot = oauth_bot(start_bot, slack, MEETBOT_ALLOWED_TEAMS=f"{T1}, E0009")
    url = bot.env["DATABASE_URL"]
    assert install(bot, slack, T1).status_code == 200

    refused = install(bot, slack, T2)
    assert refused.status_code == 403
    assert "not available for this workspace" in refused.text
    assert T2 in refused.text and "MEETBOT_ALLOWED_TEAMS" in refused.text
    # Nothing of it is stored, and the token Slack issued for it no longer works.
    assert {r["team_id"] for r in db_rows(url, "slack_installations")} == {T1}
    assert {r["team_id"] for r in db_rows(url, "slack_bots")} == {T1}
    assert token_of_team(slack, T2) in slack.revoked
    assert token_of_team(slack, T1) not in slack.revoked
    assert "refused an install into workspace 'T0002'" in bot.log()

    # Its requests are not served; the allowed workspace's are.
    two = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T2, double=slack)
    not_served(bot, slack, ams, two, ERIN)
    one = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T1, double=slack)
    r = one.command(f"plans <@{BOB}>", user_id=ALICE)
    wait_for(lambda: any("is open" in t for t in response_texts(slack, r.response_key)))
    assert [room["team_id"] for room in db_rows(url, "rooms")] == [T1]


def test_a_workspace_taken_off_the_list_is_no_longer_served(start_bot, slack, ams):
    """Installed before the list said otherwise: its stored install is never used."""
    bot = oauth_bot(start_bot, slack)
    for team in (T1, T2):
        assert install(bot, slack, team).status_code == 200
    assert bot.terminate() == 0
    bot = oauth_bot(start_bot, slack, MEETBOT_ALLOWED_TEAMS=T1)  # the same database
    two = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T2, double=slack)
    not_served(bot, slack, ams, two, ERIN)
    one = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T1, double=slack)
    r = one.command(f"plans <@{BOB}>", user_id=ALICE)
    wait_for(lambda: any("is open" in t for t in response_texts(slack, r.response_key)))


def test_an_org_wide_install_needs_its_org_on_the_list(start_bot, slack, ams):
    slack.add_workspace("T0003", enterprise_id="E0001")
    bot = oauth_bot(start_bot, slack, MEETBOT_ALLOWED_TEAMS="T0003")
    page = requests.get(bot.url + "/slack/install", timeout=5)
    state = re.search(r"state=([\w-]+)", page.text).group(1)
    code = slack.issue_oauth_code("T0003", is_enterprise_install=True)
    done = requests.get(
        bot.url + "/slack/oauth_redirect",
        params={"code": code, "state": state},
        headers={"Cookie": page.headers["Set-Cookie"].split(";", 1)[0]},
        timeout=10,
    )
    assert done.status_code == 403 and "E0001" in done.text
    assert db_rows(bot.env["DATABASE_URL"], "slack_installations") == []


# -- tokens_revoked ----------------------------------------------------------------------------
def test_tokens_revoked_uninstalls_only_when_the_bot_token_goes(start_bot, slack, ams):
    """A person revoking their own (user) token leaves the workspace's rooms alone."""
    from slack_bolt.request import BoltRequest

    from bot.config import load_settings
    from bot.services import Services

    bot = oauth_bot(start_bot, slack)
    url = bot.env["DATABASE_URL"]
    assert install(bot, slack, T2).status_code == 200
    two = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T2, double=slack)
    r = two.command(f"retro <@{FRED}>", user_id=ERIN)
    wait_for(lambda: any("is open" in t for t in response_texts(slack, r.response_key)))
    settled(bot)
    env = dict(bot.env)
    assert bot.terminate() == 0

    def deliver(tokens: dict) -> None:
        """The event as Slack sends it, to the bot's listeners in this process; stop()
        returns once the work they handed on is done, so what follows is final."""
        services = Services(load_settings(env))
        try:
            app = services.bolt_app()
            body = {
                "type": "event_callback",
                "team_id": T2,
                "api_app_id": "A0001",
                "event_id": f"Ev{len(tokens)}{sorted(tokens)}",
                "event_time": 1700000000,
                "event": {"type": "tokens_revoked", "tokens": tokens},
            }
            assert app.dispatch(BoltRequest(body=body, mode="socket_mode")).status == 200
        finally:
            services.stop()

    deliver({"oauth": [ERIN]})  # Erin revoked her own sign-in: the bot keeps working
    assert {r["team_id"] for r in db_rows(url, "slack_installations")} == {T2}
    assert [room["state"] for room in db_rows(url, "rooms")] == ["active"]
    assert len(rooms_on_ams(ams)) == 1

    deliver({"oauth": [], "bot": ["UMEETBOT"]})  # the bot's token: the app is gone
    assert db_rows(url, "slack_installations") == [] and db_rows(url, "slack_bots") == []
    assert [room["state"] for room in db_rows(url, "rooms")] == ["revoked"]
    assert rooms_on_ams(ams) == []


# -- Enterprise Grid and OAuth: the App Home, the schedule form, the operator's CLI ------------
def install_org(bot, slack, org: str = "E0001", team: str = "T0003") -> None:
    """An org-wide install of the Grid org ``org``, approved from its workspace ``team``."""
    page = requests.get(bot.url + "/slack/install", timeout=5)
    state = re.search(r"state=([\w-]+)", page.text).group(1)
    code = slack.issue_oauth_code(team, is_enterprise_install=True)
    done = requests.get(
        bot.url + "/slack/oauth_redirect",
        params={"code": code, "state": state},
        headers={"Cookie": page.headers["Set-Cookie"].split(";", 1)[0]},
        timeout=10,
    )
    assert done.status_code == 200, done.text


def test_the_app_home_of_an_org_wide_install_is_published_with_the_orgs_token(
    start_bot, slack, ams
):
    """Such an install is found by its org, not its workspace: every Home publish must
    say which org (opening the Home, a room changing, the outcome of a click)."""
    from bot.home import view as home
    from tests.test_home import home_of, notice

    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    org_token = slack.add_workspace("T0003", enterprise_id="E0001")
    grid_people(slack)
    bot = start_bot(
        SLACK_BOT_TOKEN="",
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET=CLIENT_SECRET,
        MEETBOT_SECRET_KEY=SECRET_KEY,
    )
    install_org(bot, slack)
    grid = SlackSender(
        bot.url + "/slack/events",
        SIGNING_SECRET,
        team_id="T0003",
        double=slack,
        enterprise_id="E0001",
        enterprise_install=True,
    )
    r = grid.event(
        {"type": "app_home_opened", "user": ALICE, "channel": "D" + ALICE, "tab": "home"}
    )
    assert r.status_code == 200
    wait_for(lambda: home_of(slack, ALICE))
    # A room opening redraws it (the rooms' change hook, off any request).
    r = grid.command(f"grid sync <@{BOB}>", user_id=ALICE)
    wait_for(lambda: any("is open" in t for t in response_texts(slack, r.response_key)))
    (room,) = db_rows(bot.env["DATABASE_URL"], "rooms")
    wait_for(lambda: f"home:own:{room['id']}" in json.dumps(home_of(slack, ALICE)))
    # A click on the Home is answered on the Home.
    grid.block_action(home.ACTION_END, room["id"], user_id=ALICE, channel_id="D" + ALICE)
    wait_for(lambda: "Ended" in notice(home_of(slack, ALICE)))
    publishes = slack.calls_to("views.publish")
    assert publishes and all(c.ok for c in publishes)
    assert {c.team_id for c in publishes} == {"T0003"}
    assert org_token not in bot.log()


def test_a_bare_meet_schedule_opens_the_form_in_an_oauth_workspace(start_bot, slack, ams):
    """No SLACK_BOT_TOKEN here: the form opens with the listener's client (its token)."""
    bot = oauth_bot(start_bot, slack)
    assert install(bot, slack, T2).status_code == 200
    two = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T2, double=slack)
    r = two.command("schedule", user_id=ERIN)
    assert r.status_code == 200
    (opened,) = slack.wait_for_calls("views.open")
    assert opened.ok, opened.error
    assert opened.team_id == T2
    assert [v["callback_id"] for v in slack.views.values()] == ["meet_schedule_modal"]
    settled(bot)
    assert response_texts(slack, r.response_key) == []  # no "I couldn't open the form"


def test_meetbot_rooms_end_and_link_use_the_workspaces_own_token(start_bot, slack, ams):
    """The operator's CLI has no SLACK_BOT_TOKEN in OAuth mode: it speaks for each room's
    workspace with the token installed there, to edit its DMs and to ask who may join."""
    import logging

    from click.testing import CliRunner

    from bot.ops.cli import main

    gina = "UGINA002"  # of the second workspace, in the room's channel, not invited
    bot = oauth_bot(start_bot, slack)
    slack.add_user(gina, "gina", team_id=T2)
    slack.join_channel("C1", gina)
    url = bot.env["DATABASE_URL"]
    assert install(bot, slack, T2).status_code == 200
    two = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=T2, double=slack)
    r = two.command(f"retro <@{FRED}>", user_id=ERIN)
    wait_for(lambda: any("is open" in t for t in response_texts(slack, r.response_key)))
    settled(bot)
    env = dict(bot.env)
    assert bot.terminate() == 0
    (room,) = db_rows(url, "rooms")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        linked = CliRunner().invoke(main, ["link", room["id"], "--user", gina], env=env)
        assert linked.exit_code == 0, linked.output
        assert f"/Conference/{room['id']}?token=" in linked.stdout
        asked = [c for c in slack.calls_to("users.info") if c.args.get("user") == gina]
        assert asked and {c.team_id for c in asked} == {T2}
        assert {c.team_id for c in slack.calls_to("conversations.members")} == {T2}

        updates_before = len(slack.calls_to("chat.update"))
        ended = CliRunner().invoke(main, ["rooms", "end", room["id"]], env=env)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert ended.exit_code == 0, ended.output
    assert "3 message edit(s) sent" in ended.stdout
    updates = slack.calls_to("chat.update")[updates_before:]
    assert len(updates) == 3 and all(c.ok for c in updates)
    assert {c.team_id for c in updates} == {T2}
    for user in (ERIN, FRED):
        assert "ended" in slack.dms_to(user)[-1]["text"].lower()
