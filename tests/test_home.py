"""App Home, its buttons, the New-room modal and "Meet about this", over a real `meetbot serve`.

Home clicks are sent as Slack sends them: a ``block_actions`` payload whose
container is the Home view, with no ``channel``, ``message`` or
``response_url``, so the bot's answers can only show on the republished Home.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import urlencode

from bot.home import view as home
from tests.conftest import ALICE, BOB, CAROL, DAVE, SOMEBOT, TEAM, wait_for
from tests.helpers import db_rows, dm_links, rooms_on_ams, settled


def home_of(slack, user: str) -> dict[str, Any] | None:
    with slack._lock:
        view = slack.home_views.get(user)
        return json.loads(json.dumps(view)) if view is not None else None


def block_ids(view: dict[str, Any] | None) -> list[str]:
    return [b.get("block_id", "") for b in (view or {}).get("blocks", [])]


def notice(view: dict[str, Any] | None) -> str:
    for block in (view or {}).get("blocks", []):
        if block.get("block_id") == "home:notice":
            return block["elements"][0]["text"]
    return ""


def home_click_outcomes(slack, user: str) -> list[str]:
    """Every notice ever published on ``user``'s Home, oldest first."""
    out = []
    for call in slack.calls_to("views.publish"):
        if call.args.get("user_id") == user:
            view = call.args.get("view")
            view = json.loads(view) if isinstance(view, str) else view
            if notice(view):
                out.append(notice(view))
    return out


def open_home(sender, user: str, tab: str = "home") -> None:
    r = sender.event({"type": "app_home_opened", "user": user, "channel": "D" + user, "tab": tab})
    assert r.status_code == 200, r.text


def home_click(sender, slack, user: str, action_id: str, value: str | None = None, *, forge=None):
    """Click a button on ``user``'s Home, or (``forge=(block_id, value)``) one that isn't there."""
    view = home_of(slack, user) or {"id": "VNONE", "blocks": []}
    element: dict[str, Any] | None = None
    block_id = ""
    if forge is None:
        for block in view["blocks"]:
            for el in [*(block.get("elements") or []), block.get("accessory")]:
                if isinstance(el, dict) and el.get("action_id") == action_id:
                    if value is None or el.get("value") == value:
                        element, block_id = el, block["block_id"]
        assert element is not None, f"no {action_id} button on {user}'s Home: {block_ids(view)}"
    else:
        block_id, forged_value = forge
        element = {"type": "button", "text": {"type": "plain_text", "text": "End"}}
        element["value"] = forged_value
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0001",
        "token": "verification-token",
        "container": {"type": "view", "view_id": view["id"]},
        "trigger_id": slack.issue_trigger_id(user),
        "team": {"id": TEAM, "domain": "meetbot-test"},
        "enterprise": None,
        "is_enterprise_install": False,
        "view": view,
        "state": {"values": {}},
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": element["text"],
                "value": element.get("value"),
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    r = sender.post(body, "application/x-www-form-urlencoded")
    assert r.status_code == 200, r.text
    return r


def open_room(sender, slack, ams, text: str, user: str = ALICE, people=(BOB,)) -> str:
    before = {b["streamId"] for b in rooms_on_ams(ams)}
    assert sender.command(text, user_id=user).status_code == 200
    wait_for(lambda: all(dm_links(slack, u) for u in (user, *people)))
    (room_id,) = {b["streamId"] for b in rooms_on_ams(ams)} - before
    return room_id


def deletes_of(ams, room_id: str) -> int:
    return ams.count("DELETE", re.compile(rf"/broadcasts/{re.escape(room_id)}$"))


def test_home_opened_publishes_my_rooms_invitations_and_schedules(bot, sender, slack, ams):
    open_home(sender, BOB)  # BOB has looked at his Home before; DAVE never has
    wait_for(lambda: home_of(slack, BOB))
    room_id = open_room(
        sender, slack, ams, f"standup <@{BOB}|bob> <@{DAVE}|dave> for 30m", people=(BOB, DAVE)
    )
    r = sender.command("schedule retro every weekday at 09:30 for 15m", user_id=ALICE)
    assert r.status_code == 200
    wait_for(lambda: slack.responses.get(r.response_key))

    open_home(sender, CAROL, tab="messages")  # the Messages tab draws nothing
    open_home(sender, ALICE)
    view = wait_for(lambda: (v := home_of(slack, ALICE)) and "home:sch:1" in block_ids(v) and v)
    assert view["type"] == "home" and len(view["blocks"]) <= 100
    assert f"home:own:{room_id}" in block_ids(view)
    assert "standup" in json.dumps(view) and "retro" in json.dumps(view)
    actions = [
        el["action_id"]
        for b in view["blocks"]
        if b.get("block_id") == f"home:own-actions:{room_id}"
        for el in b["elements"]
    ]
    assert actions == [home.ACTION_GET_LINK, home.ACTION_END, home.ACTION_EXTEND]
    # Opening the room already refreshed the invitee's Home (the on_change hook),
    # for those who have ever looked at it: nobody else sees a Home to refresh.
    bob = wait_for(
        lambda: (v := home_of(slack, BOB)) and f"home:inv:{room_id}" in block_ids(v) and v
    )
    assert f"home:own:{room_id}" not in block_ids(bob)
    assert CAROL not in slack.home_views
    assert DAVE not in slack.home_views
    assert "token" not in json.dumps(view)  # the Home never carries a link

    # Stop the schedule from the Home: creator only, and a repeat says so.
    home_click(sender, slack, BOB, home.ACTION_CANCEL, forge=("home:sch:1", "1"))
    wait_for(lambda: "Only <@" in notice(home_of(slack, BOB)))
    home_click(sender, slack, ALICE, home.ACTION_CANCEL, "1")
    view = wait_for(lambda: (v := home_of(slack, ALICE)) and "Stopped" in notice(v) and v)
    assert "home:sch:1" not in block_ids(view)


def test_end_on_home_ends_the_room_once_and_republishes(bot, sender, slack, ams):
    room_id = open_room(sender, slack, ams, f"review <@{BOB}|bob> for 30m")
    open_home(sender, ALICE)
    open_home(sender, BOB)
    wait_for(lambda: f"home:own:{room_id}" in block_ids(home_of(slack, ALICE)))
    wait_for(lambda: f"home:inv:{room_id}" in block_ids(home_of(slack, BOB)))

    # Extend, twice from the same Home (a double click): the room gets 30 minutes once.
    # The second click carries the end the first one saw, and is told it came late.
    url = bot.env["DATABASE_URL"]
    (row,) = [r for r in db_rows(url, "rooms") if r["id"] == room_id]
    stale = (f"home:own-actions:{room_id}", home.extend_value(room_id, row["expires_at"]))
    home_click(sender, slack, ALICE, home.ACTION_EXTEND)
    wait_for(lambda: any("now runs until" in n for n in home_click_outcomes(slack, ALICE)))
    home_click(sender, slack, ALICE, home.ACTION_EXTEND, forge=stale)
    wait_for(lambda: "already extended" in notice(home_of(slack, ALICE)))
    settled(bot)
    assert len([a for a in db_rows(url, "audit") if a["action"] == "extend"]) == 1
    (after,) = [r for r in db_rows(url, "rooms") if r["id"] == room_id]
    assert after["expires_at"] == row["expires_at"] + home.EXTEND_S

    # Double click on End: one AMS delete, the Home republished without the room. A
    # slow AMS keeps the click that wins busy, so the other's "already ended" is
    # published on its own (notices that come together are coalesced into the last).
    ams.latency = 0.6  # slow, yet inside the bot's 1 s AMS timeout: no retried calls
    home_click(sender, slack, ALICE, home.ACTION_END, room_id)
    home_click(sender, slack, ALICE, home.ACTION_END, room_id)
    wait_for(lambda: deletes_of(ams, room_id) >= 1)
    view = wait_for(
        lambda: (v := home_of(slack, ALICE)) and f"home:own:{room_id}" not in block_ids(v) and v
    )
    assert "ended" in notice(view).lower()
    wait_for(lambda: f"home:inv:{room_id}" not in block_ids(home_of(slack, BOB)))
    wait_for(lambda: any("already ended" in n for n in home_click_outcomes(slack, ALICE)))
    ams.latency = 0.0
    settled(bot)
    assert deletes_of(ams, room_id) == 1
    assert room_id not in {b["streamId"] for b in rooms_on_ams(ams)}


def test_non_owner_cannot_end_or_extend_with_a_forged_click(bot, sender, slack, ams):
    room_id = open_room(sender, slack, ams, f"private <@{BOB}|bob> for 30m")
    open_home(sender, BOB)
    wait_for(lambda: f"home:inv:{room_id}" in block_ids(home_of(slack, BOB)))
    before = next(b for b in rooms_on_ams(ams) if b["streamId"] == room_id)["plannedEndDate"]

    home_click(sender, slack, BOB, home.ACTION_END, forge=(f"home:own-actions:{room_id}", room_id))
    wait_for(lambda: "Only the room's owner" in notice(home_of(slack, BOB)))
    home_click(
        sender,
        slack,
        BOB,
        home.ACTION_EXTEND,
        forge=(f"home:own-actions:{room_id}", home.extend_value(room_id, before)),
    )
    wait_for(lambda: "can extend it" in notice(home_of(slack, BOB)))

    assert deletes_of(ams, room_id) == 0
    room = next(b for b in rooms_on_ams(ams) if b["streamId"] == room_id)
    assert room["plannedEndDate"] == before
    assert f"home:inv:{room_id}" in block_ids(home_of(slack, BOB))


def test_meet_about_this_opens_a_room_in_the_channel_and_invites_the_author(
    bot, sender, slack, ams
):
    message = {
        "type": "message",
        "user": BOB,
        "ts": "1700000000.000100",
        "text": "<!channel> can we go over the &lt;deploy&gt; plan with <@UCAROL01> "
        "and <https://example.com/pr/7|the PR> today? " + "x" * 200,
    }
    r = sender.message_shortcut(
        "meet_about_message", user_id=ALICE, channel_id="C1", message=message
    )
    assert r.status_code == 200 and r.text == ""  # acked at once, nothing to show yet

    wait_for(lambda: dm_links(slack, ALICE) and dm_links(slack, BOB))
    (room,) = rooms_on_ams(ams)
    assert room["name"].startswith("can we go over the ‹deploy› plan with and the PR today?")
    assert len(room["name"]) <= 80 and "<" not in room["name"] and "channel" not in room["name"]
    card = wait_for(lambda: slack.messages("C1"))
    assert "Get my link" in json.dumps(card[-1]["blocks"])
    assert not dm_links(slack, CAROL)  # mentioned, not invited
    said = wait_for(lambda: slack.responses.get(r.response_key))
    assert "open until" in said[-1]["text"] and f"<@{BOB}>" in said[-1]["text"]

    # A bot's message: nobody but the clicker is invited.
    bot_message = {"type": "message", "bot_id": "B999", "user": SOMEBOT, "text": "deploy failed"}
    r = sender.message_shortcut(
        "meet_about_message", user_id=ALICE, channel_id="C1", message=bot_message
    )
    wait_for(lambda: len(rooms_on_ams(ams)) == 2)
    assert not any(c.args.get("user") == SOMEBOT for c in slack.calls_to("users.info"))


def test_new_room_modal_from_home_opens_a_room_with_the_card_in_my_dm(bot, sender, slack, ams):
    open_home(sender, ALICE)
    wait_for(lambda: home_of(slack, ALICE))
    home_click(sender, slack, ALICE, home.ACTION_NEW_ROOM)
    (opened,) = slack.wait_for_calls("views.open")
    assert opened.args["view"]["callback_id"] == home.NEW_ROOM_CALLBACK

    duration = {"type": "static_select", "selected_option": {"value": "1800"}}
    bad = sender.view_submission(
        home.NEW_ROOM_CALLBACK,
        {
            "topic": {"value": "x"},
            "invitees": {"value": [SOMEBOT]},
            "duration": {"value": duration},
        },
        user_id=ALICE,
    )
    assert bad.status_code == 200 and bad.json()["response_action"] == "errors"
    assert "bot" in bad.json()["errors"]["invitees"]

    r = sender.view_submission(
        home.NEW_ROOM_CALLBACK,
        {
            "topic": {"value": "Design <!here> review\n"},
            "invitees": {"value": [BOB]},
            "duration": {"value": duration},
        },
        user_id=ALICE,
    )
    assert r.status_code == 200 and r.text == ""
    wait_for(lambda: dm_links(slack, ALICE) and dm_links(slack, BOB))
    (room,) = rooms_on_ams(ams)
    assert room["name"] == "Design ‹!here› review"
    assert room["plannedEndDate"] - room["plannedStartDate"] == 1800
    card = wait_for(lambda: [m for m in slack.dms_to(ALICE) if "meet_get_link" in json.dumps(m)])
    assert card
    view = wait_for(lambda: (v := home_of(slack, ALICE)) and "is open until" in notice(v) and v)
    assert f"home:own:{room['streamId']}" in block_ids(view)


def test_new_room_modal_keeps_the_open_room_limit(start_bot, slack, ams):
    """The form says so while Slack waits, and nothing is created."""
    from bot.sim.slack import SlackSender
    from tests.conftest import SIGNING_SECRET
    from tests.helpers import creates

    bot = start_bot(MEETBOT_MAX_OPEN_ROOMS_PER_USER="1")
    sender = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=TEAM, double=slack)
    open_room(sender, slack, ams, f"first <@{BOB}|bob>")
    made = creates(ams)
    duration = {"type": "static_select", "selected_option": {"value": "1800"}}
    r = sender.view_submission(
        home.NEW_ROOM_CALLBACK,
        {
            "topic": {"value": "second"},
            "invitees": {"value": [CAROL]},
            "duration": {"value": duration},
        },
        user_id=ALICE,
    )
    assert r.status_code == 200 and r.text, "the form was accepted and closed"
    assert r.json()["response_action"] == "errors"
    assert "You already have 1 open rooms" in r.json()["errors"][home.B_TOPIC]
    settled(bot)  # (the form stays open: nothing was handed over)
    assert creates(ams) == made and len(rooms_on_ams(ams)) == 1
    assert not dm_links(slack, CAROL)
    assert [r["topic"] for r in db_rows(bot.env["DATABASE_URL"], "rooms")] == ["first"]


# -- coalescing, without a server --------------------------------------------------------------


class _Recorder:
    """Stands in for the store, the schedules and the gateway: no rooms; records publishes."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.published: list[str] = []
        self.started: list[str] = []
        self.viewers: set[str] | None = None  # None: everyone has opened their Home

    def home_viewers(self, team, users):
        return set(users) if self.viewers is None else set(users) & self.viewers

    def open_rooms_of(self, team, user):
        return []

    def rooms_invited(self, team, user):
        return []

    def list_all(self, team):
        return []

    def publish_home(self, user, view):
        assert view["type"] == "home"
        self.started.append(user)
        time.sleep(self.latency)  # a slow views.publish
        self.published.append(user)


class _Pool:
    """The bot's background pool, keeping every future: settled when all are done."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(4)
        self.futures: list = []

    def submit(self, fn, *args):
        future = self.pool.submit(fn, *args)
        self.futures.append(future)
        return future

    def settled(self) -> None:
        """Every flush submitted so far has finished (a change made meanwhile submits another)."""
        wait_for(lambda: all(f.done() for f in list(self.futures)))

    def shutdown(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait)


def test_a_burst_of_changes_publishes_each_home_once_and_close_drops_the_rest():
    from bot.home.tab import HomeTab

    fake = _Recorder()
    pool = _Pool()
    tab = HomeTab(fake, fake, pool.submit, fake.list_all, debounce=0.1)
    for _ in range(50):
        tab.changed(TEAM, [ALICE, BOB])
        tab.changed(TEAM, [BOB, CAROL])
    pool.settled()
    assert sorted(fake.published) == sorted([ALICE, BOB, CAROL])

    # A change during a slow publish is published again afterwards, never lost.
    fake.latency = 0.5
    tab.changed(TEAM, [ALICE])
    wait_for(lambda: fake.started.count(ALICE) == 2)  # the publish is under way
    tab.changed(TEAM, [ALICE])
    pool.settled()
    assert fake.published.count(ALICE) == 3

    # Closing drops what is pending: shutdown waits for no more than the publishes
    # already under way (PUBLISHERS at most), never for the other Homes.
    fake.published.clear()
    tab.changed(TEAM, [f"U{i:08d}" for i in range(40)])
    tab.close()
    pool.shutdown(wait=True)
    assert len(fake.published) <= 4
    tab.changed(TEAM, [ALICE])  # after close: ignored, no error


def test_only_homes_someone_has_opened_are_kept_current():
    """A mass expiry must not spend views.publish on people who never look."""
    from bot.home.tab import HomeTab

    fake = _Recorder()
    fake.viewers = {ALICE}
    pool = _Pool()
    tab = HomeTab(fake, fake, pool.submit, fake.list_all, debounce=0.05)
    tab.changed(TEAM, [ALICE, BOB, CAROL])
    pool.settled()
    assert fake.published == [ALICE]
    # The outcome of a click is shown even before the store knows the Home was opened.
    tab.notice(TEAM, CAROL, "Room ended.")
    wait_for(lambda: CAROL in fake.published)
    assert BOB not in fake.published
    tab.close()
    pool.shutdown(wait=True)


def test_a_notice_from_a_listener_reaches_the_home(bot, sender, slack, monkeypatch):
    """New room with a dead trigger: the listener tells the Home itself."""
    open_home(sender, ALICE)
    wait_for(lambda: home_of(slack, ALICE))
    monkeypatch.setattr(slack, "issue_trigger_id", lambda user=None: "not-a-trigger")
    home_click(sender, slack, ALICE, home.ACTION_NEW_ROOM)
    wait_for(lambda: "couldn't open the form" in notice(home_of(slack, ALICE)))

    # And again: the front's Home publisher is not stuck after its first flush. Only
    # the front's publisher knows this notice, so each Home carrying it is one flush.
    def told() -> int:
        return sum("couldn't open the form" in n for n in home_click_outcomes(slack, ALICE))

    assert told() == 1
    home_click(sender, slack, ALICE, home.ACTION_NEW_ROOM)
    wait_for(lambda: told() == 2)
