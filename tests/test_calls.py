"""Slack Calls: a room registered as a Call, joined through Sign in with Slack.

Scenario tests drive a real ``meetbot serve`` over HTTP with the Slack and AMS
doubles: ``/meet`` is a signed slash command, the Call's join URL is followed
the way a browser would (one hop at a time, cookies kept), Slack's authorize
page is the double's stand-in, and people join through the AMS double, which sends its
``listenerHookURL`` events as AMS does. Assertions are on what Slack and AMS received.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from bot.config import ConfigError, Settings, load_settings
from bot.rooms.links import parse_stream_id, participant_stream_id
from bot.sim.ams import FORM_CONTENT_TYPE, ManualClock
from bot.slack.messages import room_card
from bot.tokens import circle_link
from bot.web.call_join import make_state, read_state, state_key
from tests.conftest import (
    ALICE,
    BOB,
    BOT_TOKEN,
    CAROL,
    DAVE,
    SIGNING_SECRET,
    STREAM_SECRET,
    TEAM,
    BotProcess,
    free_port,
    sender_for,
    wait_for,
)
from tests.helpers import BROWSER, db_rows, dm_links, response_texts, settled, token_of

CLIENT_ID = "1234567890.0987654321"
CLIENT_SECRET = "calls-client-secret-0123456789abcdef"
HOOK_SECRET = "hook-secret-0123456789abcdef"


# -- helpers --------------------------------------------------------------------------
@pytest.fixture
def start(start_bot, slack) -> Callable[..., BotProcess]:
    """Start a bot whose MEETBOT_PUBLIC_URL is its own address (Calls on unless told)."""
    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    started: list[BotProcess] = []

    def run(calls: bool = True, **extra: str) -> BotProcess:
        port = free_port()
        env = dict(
            PORT=str(port),
            MEETBOT_PUBLIC_URL=f"http://127.0.0.1:{port}",
            SLACK_CLIENT_ID=CLIENT_ID,
            SLACK_CLIENT_SECRET=CLIENT_SECRET,
            MEETBOT_WEBHOOK_SECRET=HOOK_SECRET,
        )
        if calls:
            env["MEETBOT_SLACK_CALLS"] = "1"
        bot = start_bot(**{**env, **extra})
        started.append(bot)
        return bot

    yield run
    # Let the bot see the last connection close before SIGTERM (see test_joinlinks.settle).
    time.sleep(0.3)


def open_room(bot: BotProcess, slack, text: str = f"standup <@{BOB}>", user: str = ALICE) -> dict:
    """/meet, wait until the requester heard how the DMs went; the new room's row."""
    before = {r["id"] for r in db_rows(bot.env["DATABASE_URL"], "rooms")}
    r = sender_for(bot, slack).command(text, user_id=user)
    assert r.status_code == 200, r.text
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    (room,) = [x for x in db_rows(bot.env["DATABASE_URL"], "rooms") if x["id"] not in before]
    return room


def end_and_settle(bot: BotProcess, slack, room_id: str) -> None:
    """/meet end, its "Ended" reply (the room's hooks ran before it), then the outbox."""
    r = sender_for(bot, slack).command(f"end {room_id}", user_id=ALICE)
    wait_for(lambda: any("Ended" in t for t in response_texts(slack, r.response_key)))
    settled(bot)


def card_of(slack, room_id: str) -> dict:
    (card,) = [
        m
        for m in slack.messages("C1")
        if any(b.get("block_id") == f"room:{room_id}" for b in m.get("blocks") or [])
    ]
    return card


def call_blocks(message: dict) -> list[dict]:
    return [b for b in message.get("blocks") or [] if b.get("type") == "call"]


def calls_api(slack) -> list[str]:
    return [c.method for c in slack.calls if c.method.startswith(("calls.", "openid."))]


def hook(bot: BotProcess, body: dict, *, secret: str = HOOK_SECRET):
    """A hand-made POST to the listener hook: for what AMS would never send."""
    return requests.post(f"{bot.url}/ams/hook/{secret}", data=body, timeout=5)


def assert_private(r: requests.Response) -> None:
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Referrer-Policy"] == "no-referrer"


def sign_in(bot: BotProcess, slack, room_id: str, user: str) -> requests.Response:
    """Click the Call's Join as ``user``: join_url → Slack authorize → callback.

    Returns the callback's answer (the redirect to the person's Circle link).
    """
    browser = requests.Session()
    r = browser.get(f"{bot.env['MEETBOT_PUBLIC_URL']}/join/room/{room_id}", allow_redirects=False)
    assert r.status_code == 302, r.text
    slack.sign_in_as(user)
    at_slack = requests.get(r.headers["Location"], allow_redirects=False, timeout=5)
    assert at_slack.status_code == 302, at_slack.text
    return browser.get(at_slack.headers["Location"], allow_redirects=False, timeout=5)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# -- scenarios --------------------------------------------------------------------------
def test_meet_registers_a_call_shows_it_on_the_card_and_ends_it(start, slack, ams):
    bot = start()
    public = bot.env["MEETBOT_PUBLIC_URL"]
    room = open_room(bot, slack)
    room_id = room["id"]

    (add,) = slack.calls_to("calls.add")
    assert add.ok
    assert add.args["created_by"] == ALICE
    assert add.args["external_unique_id"] == room_id
    assert add.args["join_url"] == f"{public}/join/room/{room_id}"
    assert add.args["title"] == "standup"
    assert int(add.args["date_start"]) == room["created_at"]
    (call_id,) = slack.slack_calls
    assert room["slack_call_id"] == call_id

    card = card_of(slack, room_id)
    assert [(b["type"], b["call_id"]) for b in call_blocks(card)] == [("call", call_id)]
    # The per-person DMs are unchanged: each holds its own click-time link.
    for user in (ALICE, BOB):
        (link,) = dm_links(slack, user)
        assert link.startswith(f"{public}/join/") and "/join/room/" not in link

    r = sender_for(bot, slack).command(f"end {room_id}", user_id=ALICE)
    assert r.status_code == 200
    (end,) = slack.wait_for_calls("calls.end")
    assert end.ok and end.args["id"] == call_id
    assert int(end.args["duration"]) >= 0
    wait_for(lambda: db_rows(bot.env["DATABASE_URL"], "rooms")[0]["slack_call_ended_at"])
    assert "date_end" in slack.slack_calls[call_id]


def test_join_url_signs_the_clicker_in_and_sends_them_to_their_own_circle_link(start, slack, ams):
    bot = start()
    public = bot.env["MEETBOT_PUBLIC_URL"]
    room_id = open_room(bot, slack)["id"]

    browser = requests.Session()
    r = browser.get(f"{public}/join/room/{room_id}", allow_redirects=False)
    assert r.status_code == 302, r.text
    assert_private(r)
    authorize = r.headers["Location"]
    assert authorize.startswith(f"{slack.base_url}/openid/connect/authorize?")
    q = query(authorize)
    assert q["response_type"] == "code" and q["scope"] == "openid"
    assert q["client_id"] == CLIENT_ID and q["team"] == TEAM
    assert q["redirect_uri"] == f"{public}/join/room/callback"
    assert q["state"] and q["nonce"]
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Lax" in r.headers["Set-Cookie"]

    # CAROL was not invited: like "Get my link", signing in gives her a grant.
    slack.sign_in_as(CAROL)
    at_slack = requests.get(authorize, allow_redirects=False, timeout=5)
    assert at_slack.status_code == 302
    callback = at_slack.headers["Location"]
    assert callback.startswith(f"{public}/join/room/callback?") and "code=" in callback
    r = browser.get(callback, allow_redirects=False)
    assert r.status_code == 302, r.text
    assert_private(r)
    circle = r.headers["Location"]
    assert circle.startswith(f"{ams.url}/Conference/{room_id}?token=")
    token = token_of(circle)
    ok, why = ams.check_join(room_id, token)
    assert ok, why
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == CAROL and claims["streamId"] == room_id
    grants = {g["user_id"]: g for g in db_rows(bot.env["DATABASE_URL"], "grants")}
    assert claims["jti"] == grants[CAROL]["jti"]
    (exchange,) = slack.calls_to("openid.connect.token")
    assert exchange.ok and exchange.args["redirect_uri"] == f"{public}/join/room/callback"

    # Circle publishes under a stream id that names the person (for the Call's roster).
    stream_id = query(circle)["streamId"]
    assert stream_id.startswith(f"{room_id}_{CAROL}_")
    # The code is single-use: replaying the callback does not let anyone in again.
    assert browser.get(callback, allow_redirects=False).status_code == 400

    # An invited person gets a link for the grant they already have.
    r = sign_in(bot, slack, room_id, BOB)
    assert r.status_code == 302
    bob = jwt.decode(token_of(r.headers["Location"]), options={"verify_signature": False})
    assert (bob["sub"], bob["jti"]) == (BOB, grants[BOB]["jti"])

    # AMS's listenerHookURL: Carol's Circle publishes under that stream id; AMS tells
    # the bot when it starts and ends (form encoding here, JSON below).
    (call_id,) = slack.slack_calls
    ams.update_settings(
        listenerHookURL=f"{bot.url}/ams/hook/{HOOK_SECRET}", webhookContentType=FORM_CONTENT_TYPE
    )
    carol = ams.circle_join(circle)
    assert carol.joined and carol.stream_id == stream_id, carol.why
    (added,) = slack.wait_for_calls("calls.participants.add")
    assert added.ok and added.args["id"] == call_id
    assert added.args["users"] == [{"slack_id": CAROL}]
    assert slack.slack_calls[call_id]["users"] == [{"slack_id": CAROL}]
    assert ams.wait_hooks()  # the double records a delivery once it has the answer
    hooks = [d for d in ams.deliveries if d.kind == "hook"]
    assert hooks[0].payload["id"] == stream_id and hooks[0].status == 200

    ams.update_settings(webhookContentType="application/json")
    ams.hang_up(carol)
    (removed,) = slack.wait_for_calls("calls.participants.remove")
    assert removed.ok and removed.args["users"] == [{"slack_id": CAROL}]
    assert slack.slack_calls[call_id]["users"] == []

    # Foreign and forged stream ids: nothing reaches Slack for them.
    forged = f"{room_id}_{DAVE}_{'0' * 24}"
    for foreign in ("someone-elses-stream", room_id, forged, f"other_{CAROL}_{'a' * 24}"):
        r = hook(bot, {"id": foreign, "action": "liveStreamStarted", "mainTrackId": room_id})
        assert r.status_code == 200
    event = {"id": stream_id, "action": "vodReady", "mainTrackId": room_id}
    assert hook(bot, event).status_code == 200  # other AMS events
    assert hook(bot, event, secret="x" * len(HOOK_SECRET)).status_code == 404
    assert requests.get(f"{bot.url}/ams/hook/{HOOK_SECRET}", timeout=5).status_code == 405
    bad = requests.post(
        f"{bot.url}/ams/hook/{HOOK_SECRET}",
        data=b"[1, 2]",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert bad.status_code == 400
    ams.wait_hooks()
    time.sleep(0.3)  # the Calls thread would have sent anything it was going to by now
    assert len(slack.calls_to("calls.participants.add")) == 1  # the forged ones never got there
    assert len(slack.calls_to("calls.participants.remove")) == 1


def test_reordered_hooks_leave_the_right_call_participants(start, slack, ams):
    """AMS sends listener hooks from a worker pool without ordering: here every hook
    arrives in the reverse of the order AMS produced it. The bot goes by each event's
    ``timestamp``, so Bob (who reconnected) is in the Call and Carol (who left) is not."""
    bot = start()
    clock = ManualClock(time.time())  # distinct milliseconds for every event
    ams.clock = clock
    room_id = open_room(bot, slack, f"standup <@{BOB}> <@{CAROL}>")["id"]
    (call_id,) = slack.slack_calls
    ams.update_settings(listenerHookURL=f"{bot.url}/ams/hook/{HOOK_SECRET}")
    links = {user: sign_in(bot, slack, room_id, user).headers["Location"] for user in (BOB, CAROL)}

    ams.hold_hooks()
    bob = ams.circle_join(links[BOB])
    clock.advance(1)
    carol = ams.circle_join(links[CAROL])
    clock.advance(1)
    ams.hang_up(carol)
    clock.advance(1)
    assert ams.reconnect(bob), bob.why
    held = [(h["id"], h["action"]) for h in ams.held_hooks()]
    assert (carol.stream_id, "liveStreamEnded") in held and len(held) >= 5
    delivered = ams.release_hooks("reversed")
    order = [(d.payload["id"], d.payload["action"]) for d in delivered]
    assert order.index((carol.stream_id, "liveStreamEnded")) < order.index(
        (carol.stream_id, "liveStreamStarted")
    )
    assert all(d.status == 200 for d in delivered)

    wait_for(lambda: slack.slack_calls[call_id]["users"] == [{"slack_id": BOB}])
    time.sleep(0.5)  # the Calls thread has nothing left that would change it
    assert slack.slack_calls[call_id]["users"] == [{"slack_id": BOB}]
    adds = [c.args["users"] for c in slack.calls_to("calls.participants.add")]
    assert [{"slack_id": CAROL}] not in adds
    live = {r["stream_id"]: r["live"] for r in db_rows(bot.env["DATABASE_URL"], "ams_streams")}
    assert live == {bob.stream_id: True, carol.stream_id: False}


def test_replicas_agree_on_the_order_of_hooks(start, slack, ams, postgres_url):
    """Two replicas on one database: Carol's ``started`` reaches one, her ``ended`` the
    other, ended first. The newest event wins in the database, whoever applied it."""
    one = start(DATABASE_URL=postgres_url)
    two = start(DATABASE_URL=postgres_url)
    clock = ManualClock(time.time())
    ams.clock = clock
    room_id = open_room(one, slack, f"standup <@{CAROL}>")["id"]
    (call_id,) = slack.slack_calls
    link = sign_in(one, slack, room_id, CAROL).headers["Location"]

    ams.hold_hooks()
    ams.update_settings(listenerHookURL=f"{one.url}/ams/hook/{HOOK_SECRET}")
    carol = ams.circle_join(link)
    clock.advance(1)
    ams.update_settings(listenerHookURL=f"{two.url}/ams/hook/{HOOK_SECRET}")
    ams.hang_up(carol)
    delivered = ams.release_hooks("reversed")
    carols = [(d.url.split("/ams/")[0], d.payload["action"]) for d in delivered]
    carols = [
        c for c, d in zip(carols, delivered, strict=True) if d.payload["id"] == carol.stream_id
    ]
    assert carols == [(two.url, "liveStreamEnded"), (one.url, "liveStreamStarted")]
    assert all(d.status == 200 for d in delivered)
    time.sleep(1.0)  # both Calls threads have had their turn
    assert slack.slack_calls[call_id]["users"] == []
    assert [{"slack_id": CAROL}] not in [
        c.args["users"] for c in slack.calls_to("calls.participants.add")
    ]


def test_forged_expired_or_foreign_sign_ins_are_refused(start, slack, ams):
    bot = start()
    public = bot.env["MEETBOT_PUBLIC_URL"]
    callback = f"{public}/join/room/callback"
    room_id = open_room(bot, slack)["id"]
    key = state_key(Settings(ams_url=ams.url, slack_client_secret=CLIENT_SECRET))

    def attempt(state: str, nonce: str, *, code: str | None = None) -> requests.Response:
        code = code or slack.issue_openid_code(BOB, redirect_uri=callback, nonce=nonce)
        return requests.get(
            callback,
            params={"code": code, "state": state},
            cookies={"meetbot_signin": nonce},
            allow_redirects=False,
            timeout=5,
        )

    nonce = "n" * 22
    expired = make_state(key, room_id, nonce, now=time.time() - 3600)
    forged = make_state(b"not-the-key-" * 3, room_id, nonce)
    valid = make_state(key, room_id, nonce)
    for state in (expired, forged, "garbage", valid[:-3] + "abc", ""):
        r = attempt(state, nonce)
        assert r.status_code == 400, state
        assert_private(r)
        assert "sign-in didn" in r.text and "<script" not in r.text
    assert slack.calls_to("openid.connect.token") == []  # no code was spent on them

    # A valid state, but the callback arrives in a browser that did not start it.
    r = requests.get(
        callback,
        params={"code": slack.issue_openid_code(BOB, redirect_uri=callback), "state": valid},
        allow_redirects=False,
        timeout=5,
    )
    assert r.status_code == 400
    # The id_token's nonce must be the state's.
    r = attempt(valid, nonce, code=slack.issue_openid_code(BOB, redirect_uri=callback, nonce="x"))
    assert r.status_code == 400
    # Cancelled at Slack.
    browser = requests.Session()
    r = browser.get(f"{public}/join/room/{room_id}", allow_redirects=False)
    slack.sign_in_as(BOB, approve=False)
    back = requests.get(r.headers["Location"], allow_redirects=False, timeout=5)
    assert "error=access_denied" in back.headers["Location"]
    assert browser.get(back.headers["Location"], allow_redirects=False).status_code == 400

    # The same valid state and nonce work: the refusals above were for the reasons given.
    r = attempt(valid, nonce)
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{ams.url}/Conference/")

    # Unknown and ended rooms.
    assert requests.get(f"{public}/join/room/nope", timeout=5).status_code == 404
    assert sender_for(bot, slack).command(f"end {room_id}", user_id=ALICE).status_code == 200
    wait_for(lambda: db_rows(bot.env["DATABASE_URL"], "rooms")[0]["state"] == "revoked")
    r = requests.get(f"{public}/join/room/{room_id}", allow_redirects=False, timeout=5)
    assert r.status_code == 410 and "has ended" in r.text
    assert attempt(make_state(key, room_id, nonce), nonce).status_code == 410


def test_calls_add_failure_still_opens_the_room_with_a_plain_card(start, slack, ams):
    bot = start()
    slack.fail("calls.add", "internal_error", status=500)
    room = open_room(bot, slack)
    assert room["state"] == "active" and room["slack_call_id"] is None
    assert len(slack.calls_to("calls.add")) == 1  # a 5xx may have happened: never resent
    card = card_of(slack, room["id"])
    assert call_blocks(card) == []
    assert any(b.get("type") == "actions" for b in card["blocks"])  # "Get my link" is there
    assert len(dm_links(slack, BOB)) == 1
    # Without a Call, links carry no participant stream id and the room ends without calls.end.
    r = sign_in(bot, slack, room["id"], BOB)
    assert r.status_code == 302 and "streamId=" not in r.headers["Location"]
    end_and_settle(bot, slack, room["id"])
    assert slack.calls_to("calls.end") == []


def test_calls_off_means_no_calls_api_traffic_at_all(start, slack, ams):
    bot = start(calls=False)
    room = open_room(bot, slack)
    assert room["slack_call_id"] is None
    assert call_blocks(card_of(slack, room["id"])) == []
    public = bot.env["MEETBOT_PUBLIC_URL"]
    r = requests.get(f"{public}/join/room/{room['id']}", allow_redirects=False, timeout=5)
    assert r.status_code == 404
    link = dm_links(slack, BOB)[0]
    r = requests.get(link, headers=BROWSER, allow_redirects=False, timeout=5)
    assert r.status_code == 302 and "streamId=" not in r.headers["Location"]
    ams.update_settings(listenerHookURL=f"{bot.url}/ams/hook/{HOOK_SECRET}")
    bob = ams.circle_join(r.headers["Location"])
    assert bob.joined, bob.why
    ams.hang_up(bob)
    assert ams.wait_hooks()
    assert {d.status for d in ams.deliveries if d.kind == "hook"} == {200}
    end_and_settle(bot, slack, room["id"])
    assert calls_api(slack) == []


# -- configuration and pure parts ---------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "AMS_URL": "http://ams.local:5080",
        "AMS_JWT_SECRET": STREAM_SECRET,
        **extra,
    }


def test_calls_need_sign_in_with_slack_credentials_and_a_public_url():
    with pytest.raises(ConfigError) as e:
        load_settings(_env(MEETBOT_SLACK_CALLS="1"))
    (problem,) = e.value.problems
    assert problem.startswith("MEETBOT_SLACK_CALLS=1 needs MEETBOT_PUBLIC_URL and SLACK_CLIENT_ID")
    with pytest.raises(ConfigError) as e:
        load_settings(_env(MEETBOT_SLACK_CALLS="1", SLACK_CLIENT_ID="1.2", SLACK_CLIENT_SECRET="s"))
    assert e.value.problems == [
        "MEETBOT_SLACK_CALLS=1 needs MEETBOT_PUBLIC_URL (people joining a Slack Call sign in "
        "with Slack to get their own link)"
    ]
    s = load_settings(
        _env(
            MEETBOT_SLACK_CALLS="1",
            SLACK_CLIENT_ID="1.2",
            SLACK_CLIENT_SECRET="s",
            MEETBOT_PUBLIC_URL="https://meet.example.com",
        )
    )
    assert s.slack_calls and not s.oauth_enabled


def test_serve_refuses_calls_without_credentials(tmp_path):
    env = {
        **_env(MEETBOT_SLACK_CALLS="1"),
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot.ops.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2
    assert "MEETBOT_SLACK_CALLS=1 needs" in done.stderr and "SLACK_CLIENT_SECRET" in done.stderr


def test_participant_stream_ids_name_the_person_and_cannot_be_forged():
    settings = Settings(ams_url="http://ams", slack_client_secret=CLIENT_SECRET)
    room = "a_b-c.Room_with_underscores"
    one = participant_stream_id(settings, room, BOB)
    two = participant_stream_id(settings, room, BOB)
    assert one != two  # two devices never share a stream id
    assert parse_stream_id(settings, one) == (room, BOB)
    assert parse_stream_id(settings, one, room) == (room, BOB)
    assert parse_stream_id(settings, one, "another-room") is None
    other = Settings(ams_url="http://ams", slack_client_secret="another-secret")
    assert parse_stream_id(other, one) is None
    assert parse_stream_id(settings, one.replace(BOB, CAROL)) is None
    assert parse_stream_id(settings, room) is None
    link = circle_link("http://ams", "Conference", room, "tok", "Bob B", stream_id=one)
    assert link == f"http://ams/Conference/{room}?token=tok&streamName=Bob%20B&streamId={one}"
    with pytest.raises(ValueError):
        circle_link("http://ams", "Conference", room, "tok", stream_id="a&b=c")


def test_state_round_trip_and_card_block():
    key = state_key(Settings(ams_url="http://ams", slack_client_secret=CLIENT_SECRET))
    assert read_state(key, make_state(key, "room1", "n1")) == ("room1", "n1")
    assert read_state(key, make_state(key, "room1", "n1", now=time.time() - 601)) is None
    assert read_state(key, make_state(key, "bad room/", "n1")) is None
    _, blocks = room_card(room_id="r", topic="t", owner_id=ALICE, expires_at=0, call_id="R123")
    assert {"type": "call", "call_id": "R123"} in blocks
    _, blocks = room_card(room_id="r", topic="t", owner_id=ALICE, expires_at=0)
    assert all(b["type"] != "call" for b in blocks)


# -- calls.end's answers ------------------------------------------------------------------
def test_calls_end_unknown_call_is_final_and_an_ended_call_counts_as_ended(sqlite_url, slack, ams):
    """``invalid_call_id``: Slack does not know the Call, trying again cannot help.
    ``ok: true`` with ``inactive_call``: it had already ended, which is what we want."""
    from bot.slack.calls import END_RETRY_AFTER_S, SlackCalls
    from bot.slack.gateway import SlackGateway
    from bot.store import Room, RoomState, Store

    store = Store(sqlite_url)
    store.migrate()
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    ended = gateway.call_add(
        external_unique_id="r2",
        join_url="https://x/join",
        created_by=ALICE,
        title="t",
        date_start=int(time.time()),
    )
    gateway.call_end(ended, 5)
    t = int(time.time())
    with store.write() as tx:
        for room_id, call_id in (("r1", "R0NOSUCHCALL"), ("r2", ended)):
            tx.add(
                Room(
                    id=room_id,
                    team_id=TEAM,
                    owner_id=ALICE,
                    channel_id="C1",
                    topic=room_id,
                    state=RoomState.REVOKED,
                    created_at=t - 600,
                    expires_at=t - 120,
                    ended_at=t - END_RETRY_AFTER_S - 1,
                    attempts=0,
                    next_attempt_at=0,
                    slack_call_id=call_id,
                )
            )
    calls = SlackCalls(Settings(ams_url=ams.url, slack_bot_token=BOT_TOKEN), store, gateway)
    try:
        assert calls.sweep() == 2
        assert calls.sweep() == 0  # neither is tried again
    finally:
        calls.close()
        store.dispose()
    answers = [(c.args["id"], c.error) for c in slack.calls_to("calls.end")]
    assert answers == [
        (ended, None),  # the test's own end, above
        ("R0NOSUCHCALL", "invalid_call_id"),
        (ended, None),  # ok: true, with "inactive_call" beside it
    ]
    rows = {r["id"]: r for r in db_rows(sqlite_url, "rooms")}
    assert rows["r1"]["slack_call_ended_at"] and rows["r2"]["slack_call_ended_at"]
