"""The Slack double and the signed-request sender, checked through the real clients.

Everything goes through `slack_sdk.WebClient` over loopback HTTP and through a
real Bolt `App`, so these tests also pin that the double speaks the wire format
those libraries expect; the rest of the suite relies on that.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import pytest
import requests
from slack_bolt import App, BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from bot.sim.slack import SlackDouble, SlackSender

TOKEN = "xoxb-test"
SECRET = "s3cr3t-signing-secret"


class FakeClock:
    """A clock the test moves by hand, so rate windows need no sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def double():
    with SlackDouble(TOKEN) as d:
        d.add_user("U2", "bob", tz="America/New_York")
        d.add_user("U3", "carol")
        yield d


@pytest.fixture
def client(double):
    return WebClient(token=TOKEN, base_url=double.api_url, timeout=5)


def button(action_id: str, text: str = "Get my link", value: str = "r1") -> dict:
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": action_id,
                "text": {"type": "plain_text", "text": text},
                "value": value,
            }
        ],
    }


# -- Web API ---------------------------------------------------------------------------


def test_auth_test_reports_bot_identity_and_scopes(double, client):
    resp = client.auth_test()
    assert resp["ok"] and resp["team_id"] == "T0001"
    assert resp["user_id"] == double.bot_user_id and resp["bot_id"] == double.bot_id
    assert resp["url"].startswith("https://")
    assert "chat:write" in resp.headers["x-oauth-scopes"].split(",")


def test_wrong_or_missing_token_and_unknown_method(double):
    with pytest.raises(SlackApiError) as e:
        WebClient(token="xoxb-wrong", base_url=double.api_url).auth_test()
    assert e.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as e:
        WebClient(base_url=double.api_url).api_call("auth.test")
    assert e.value.response["error"] == "not_authed"
    with pytest.raises(SlackApiError) as e:
        WebClient(token=TOKEN, base_url=double.api_url).api_call("foo.bar")
    assert e.value.response["error"] == "unknown_method"


def test_post_to_user_id_lands_in_dm_and_is_recorded(double, client):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "Your link"}}]
    resp = client.chat_postMessage(
        channel="U2", text="fallback", blocks=blocks, unfurl_links=False, unfurl_media=False
    )
    assert resp["channel"] == "DU2"
    assert resp["message"]["text"] == "fallback"
    dms = double.dms_to("U2")
    assert [m["ts"] for m in dms] == [resp["ts"]]
    assert dms[0]["blocks"][0]["block_id"]  # Slack fills in missing block ids
    (call,) = double.calls_to("chat.postMessage")
    assert call.ok and call.args["channel"] == "U2"
    assert call.args["unfurl_links"] is False and call.args["blocks"] == blocks
    assert double.messages("U2") == dms


def test_form_encoded_fields_are_decoded(double, client):
    blocks = [{"type": "section", "text": {"type": "plain_text", "text": "hi"}}]
    client.api_call(
        "chat.postMessage",
        params={"channel": "C1", "text": "hi", "blocks": json.dumps(blocks), "unfurl_links": False},
    )
    (call,) = double.calls_to("chat.postMessage")
    assert call.args["blocks"] == blocks and call.args["unfurl_links"] is False


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_post_errors(double, client):
    double.add_channel("G9", "secret", is_private=True, bot_member=False)
    double.add_channel("C9", "random", bot_member=False)
    cases = [
        ({"channel": "C404", "text": "x"}, "channel_not_found"),
        ({"channel": "U404", "text": "x"}, "channel_not_found"),
        ({"channel": "G9", "text": "x"}, "channel_not_found"),
        ({"channel": "C9", "text": "x"}, "not_in_channel"),
        ({"channel": double.bot_user_id, "text": "x"}, "cannot_dm_bot"),
        ({"channel": "C1"}, "no_text"),
        ({"channel": "C1", "text": "x", "blocks": [button("a", "x" * 76)]}, "invalid_blocks"),
        ({"channel": "C1", "text": "x", "blocks": [button("a")] * 51}, "invalid_blocks"),
    ]
    for kwargs, error in cases:
        with pytest.raises(SlackApiError) as e:
            client.chat_postMessage(**kwargs)
        assert e.value.response["error"] == error, kwargs
    assert double.messages("C1") == []
    assert all(not c.ok for c in double.calls_to("chat.postMessage"))


def test_chat_update_edits_and_keeps_history(double, client):
    posted = client.chat_postMessage(channel="U2", text="v1", blocks=[button("get_link")])
    updated = client.chat_update(channel=posted["channel"], ts=posted["ts"], text="v2")
    assert updated["message"]["text"] == "v2"
    (msg,) = double.dms_to("U2")
    assert msg["text"] == "v2" and msg["edited"]["user"] == double.bot_user_id
    assert msg["blocks"] == posted["message"]["blocks"]  # absent `blocks` keeps them
    assert [m["text"] for m in double.message_history("DU2", posted["ts"])] == ["v1", "v2"]

    with pytest.raises(SlackApiError) as e:  # Slack wants the channel id, not the user id
        client.chat_update(channel="U2", ts=posted["ts"], text="v3")
    assert e.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as e:
        client.chat_update(channel="DU2", ts="1.000001", text="v3")
    assert e.value.response["error"] == "message_not_found"

    client.chat_delete(channel="DU2", ts=posted["ts"])
    assert double.dms_to("U2") == []
    assert len(double.message_history("DU2", posted["ts"])) == 2


def test_ephemeral(double, client):
    resp = client.chat_postEphemeral(channel="C1", user="U2", text="only you")
    assert resp["message_ts"]
    assert [e["text"] for e in double.ephemerals_to("U2")] == ["only you"]
    assert double.messages("C1") == []


def test_users_info(double, client):
    double.add_user("U5", "dave", is_admin=True, is_restricted=True, display_name="D")
    user = client.users_info(user="U2")["user"]
    expected = datetime.now(UTC).astimezone(ZoneInfo("America/New_York")).utcoffset()
    assert user["tz"] == "America/New_York"
    assert user["tz_offset"] == int(expected.total_seconds())
    assert user["name"] == "bob" and user["team_id"] == "T0001" and user["deleted"] is False
    dave = client.users_info(user="U5")["user"]
    assert dave["is_admin"] and dave["is_restricted"] and not dave["is_ultra_restricted"]
    assert dave["profile"]["display_name"] == "D" and dave["is_bot"] is False
    assert client.users_info(user=double.bot_user_id)["user"]["is_bot"] is True
    with pytest.raises(SlackApiError) as e:
        client.users_info(user="U404")
    assert e.value.response["error"] == "user_not_found"


def test_users_info_finds_people_of_the_tokens_own_workspace_org_or_slack_connect(double):
    """users.info answers user_not_found for a person of an unrelated workspace."""
    other = double.add_workspace("T0002")
    grid = double.add_workspace("T0003", enterprise_id="E0001")
    double.add_user("UOTHER01", "olga", team_id="T0002")
    double.add_user("UGRID001", "gina", team_id="T0004", enterprise_id="E0001")
    double.add_user("UCONNECT", "connie", team_id="T0009", connect=True)

    def info(token: str, user: str) -> dict | str:
        try:
            return WebClient(token=token, base_url=double.api_url).users_info(user=user)["user"]
        except SlackApiError as e:
            return e.response["error"]

    assert info(TOKEN, "UOTHER01") == "user_not_found"
    assert info(other, "UOTHER01")["team_id"] == "T0002"
    assert info(other, "U2") == "user_not_found"
    # The same Enterprise Grid org: found, with the org and the person's workspaces.
    gina = info(grid, "UGRID001")
    assert gina["team_id"] == "T0004"
    assert gina["enterprise_user"]["enterprise_id"] == "E0001"
    assert gina["enterprise_user"]["teams"] == ["T0004"]
    assert info(TOKEN, "UGRID001") == "user_not_found"
    assert "enterprise_user" not in info(TOKEN, "U2")
    # Slack Connect: every workspace finds them, with their own workspace.
    assert info(TOKEN, "UCONNECT")["team_id"] == "T0009"
    assert info(other, "UCONNECT")["team_id"] == "T0009"


def test_conversations_members_pages_through_a_channel(double, client):
    people = [f"UM{i:03d}" for i in range(7)]
    for u in people:
        double.add_user(u)
    double.add_channel("C7", "seven", members=people)
    first = client.conversations_members(channel="C7", limit=3)
    assert first["members"] == people[:3]
    cursor = first["response_metadata"]["next_cursor"]
    assert cursor
    seen = list(first["members"])
    while cursor:
        page = client.conversations_members(channel="C7", limit=3, cursor=cursor)
        seen += page["members"]
        cursor = page["response_metadata"]["next_cursor"]
    # Every member once, the bot too (it is in the channel), nobody else.
    assert seen == [*people, double.bot_user_id]
    everyone = client.conversations_members(channel="C7")  # default limit 100: one page
    assert everyone["members"] == seen and everyone["response_metadata"]["next_cursor"] == ""
    double.join_channel("C7", "U2")
    double.leave_channel("C7", people[0])
    assert "U2" in client.conversations_members(channel="C7")["members"]
    assert people[0] not in client.conversations_members(channel="C7")["members"]
    bad_args = ((dict(cursor="bm9wZQ=="), "invalid_cursor"), (dict(limit="x"), "invalid_limit"))
    for bad, error in bad_args:
        with pytest.raises(SlackApiError) as e:
            client.conversations_members(channel="C7", **bad)
        assert e.value.response["error"] == error


def test_conversations_members_is_refused_like_slack(double, client):
    double.add_channel("GSECRET1", "secret", is_private=True, bot_member=False, members=["U2"])
    double.add_channel("GPRIV001", "priv", is_private=True, members=["U3"])
    double.add_channel("CPUB0001", "pub", bot_member=False, members=["U2"])

    def error(channel: str, c: WebClient = client) -> str | None:
        try:
            c.conversations_members(channel=channel)
        except SlackApiError as e:
            return e.response["error"]
        return None

    # A private channel the bot is not in, a DM that is not the bot's, an unknown id.
    assert error("GSECRET1") == "channel_not_found"
    assert error("D0OTHERDM") == "channel_not_found"
    assert error("CNOPE") == "channel_not_found"
    # A public channel it is not in: readable, and the bot is not listed.
    assert client.conversations_members(channel="CPUB0001")["members"] == ["U2"]
    assert client.conversations_members(channel="GPRIV001")["members"] == ["U3", "UMEETBOT"]
    # The bot's own DM with someone: the two of them.
    dm = client.conversations_open(users="U2")["channel"]["id"]
    assert client.conversations_members(channel=dm)["members"] == ["U2", double.bot_user_id]
    # Each kind of conversation needs its own read scope.
    double.scopes = [s for s in double.scopes if s not in ("groups:read", "im:read")]
    assert error("GPRIV001") == "missing_scope"
    assert error(dm) == "missing_scope"
    assert error("CPUB0001") is None
    double.scopes = [s for s in double.scopes if s != "channels:read"]
    with pytest.raises(SlackApiError) as e:
        client.conversations_members(channel="CPUB0001")
    assert e.value.response["needed"] == "channels:read"


def test_a_held_call_waits_until_released(double, client):
    hold = double.hold("chat.postMessage", channel="U2")
    done = threading.Event()
    threading.Thread(
        target=lambda: (client.chat_postMessage(channel="U2", text="late"), done.set()),
        daemon=True,
    ).start()
    assert hold.arrived.wait(5)
    client.chat_postMessage(channel="U3", text="others go through")
    assert double.dms_to("U2") == [] and not done.is_set()
    hold.release()
    assert done.wait(5)
    assert [m["text"] for m in double.dms_to("U2")] == ["late"]


def test_conversations_open(double, client):
    assert client.conversations_open(users="U2")["channel"]["id"] == "DU2"
    with pytest.raises(SlackApiError) as e:
        client.conversations_open(users=double.bot_user_id)
    assert e.value.response["error"] == "cannot_dm_bot"


def test_fault_per_recipient_wears_off(double, client):
    double.fail("chat.postMessage", "cannot_dm_bot", channel="U2")
    client.chat_postMessage(channel="U3", text="fine")  # other recipients unaffected
    with pytest.raises(SlackApiError) as e:
        client.chat_postMessage(channel="U2", text="x")
    assert e.value.response["error"] == "cannot_dm_bot"
    client.chat_postMessage(channel="U2", text="again")  # times=1 wore off
    assert [m["text"] for m in double.dms_to("U2")] == ["again"]


def test_fault_429_and_500(double, client):
    double.fail("users.info", "ratelimited", retry_after=7)
    with pytest.raises(SlackApiError) as e:
        client.users_info(user="U2")
    assert e.value.response.status_code == 429
    assert e.value.response.headers["Retry-After"] == "7"
    assert e.value.response["error"] == "ratelimited"
    assert double.ratelimited_count == 1

    double.fail("chat.postMessage", "internal_error", status=500, times=None)
    for _ in range(2):
        with pytest.raises(SlackApiError) as e:
            client.chat_postMessage(channel="C1", text="x")
        assert e.value.response.status_code == 500
    assert double.messages("C1") == []
    double.clear_faults()
    client.chat_postMessage(channel="C1", text="x")


def test_rate_limit_retry_handler_understands_the_429(double):
    double.fail("chat.postMessage", "ratelimited", retry_after=1)
    client = WebClient(token=TOKEN, base_url=double.api_url, timeout=5)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    assert client.chat_postMessage(channel="U2", text="x")["ok"]
    assert [c.status for c in double.calls_to("chat.postMessage")] == [429, 200]


def test_per_channel_rate_limit():
    clock = FakeClock()
    with SlackDouble(TOKEN, per_channel_rate=1.0, clock=clock) as d:
        d.add_user("U2")
        c = WebClient(token=TOKEN, base_url=d.api_url, timeout=5)
        c.chat_postMessage(channel="C1", text="1")
        with pytest.raises(SlackApiError) as e:
            c.chat_postMessage(channel="C1", text="2")
        assert e.value.response.status_code == 429
        assert int(e.value.response.headers["Retry-After"]) >= 1
        c.chat_postMessage(channel="U2", text="other channel is fine")
        clock.now += 1.0
        c.chat_postMessage(channel="C1", text="3")
        assert [m["text"] for m in d.messages("C1")] == ["1", "3"]
        assert d.ratelimited_count == 1


def test_workspace_cap_sliding_window():
    clock = FakeClock(0.0)
    with SlackDouble(TOKEN, workspace_cap_per_minute=3, clock=clock) as d:
        c = WebClient(token=TOKEN, base_url=d.api_url, timeout=5)
        for i in range(3):
            clock.now = i * 10.0
            c.chat_postMessage(channel="C1", text=str(i))
        clock.now = 30.0
        with pytest.raises(SlackApiError) as e:
            c.chat_postMessage(channel="C1", text="over")
        assert e.value.response.status_code == 429
        assert e.value.response.headers["Retry-After"] == "30"
        clock.now = 60.0  # the message at t=0 left the window
        c.chat_postMessage(channel="C1", text="3")
        assert len(d.messages("C1")) == 4 and d.ratelimited_count == 1


def test_latency_is_added():
    with SlackDouble(TOKEN, latency=0.05) as d:
        start = time.perf_counter()
        WebClient(token=TOKEN, base_url=d.api_url).auth_test()
        assert time.perf_counter() - start >= 0.05


def test_response_url_records_and_limits(double):
    url = double.make_response_url("k1")
    hook = WebhookClient(url, timeout=5)
    first = hook.send(text="Creating your room…", response_type="ephemeral")
    assert (first.status_code, first.body) == (200, "ok")
    assert hook.send(text="").status_code == 400  # no_text
    for i in range(4):
        assert hook.send(text=str(i)).status_code == 200
    used = hook.send(text="sixth")
    assert (used.status_code, used.body) == (404, "used_url")
    assert [r["text"] for r in double.responses["k1"]] == [
        "Creating your room…",
        "0",
        "1",
        "2",
        "3",
    ]


def test_views_and_triggers(double, client):
    view = {
        "type": "modal",
        "callback_id": "schedule",
        "title": {"type": "plain_text", "text": "T"},
    }
    trigger = double.issue_trigger_id("U2")
    opened = client.views_open(trigger_id=trigger, view=view)["view"]
    assert double.views[opened["id"]]["callback_id"] == "schedule"
    with pytest.raises(SlackApiError) as e:
        client.views_open(trigger_id=trigger, view=view)
    assert e.value.response["error"] == "trigger_exchanged"
    with pytest.raises(SlackApiError) as e:
        client.views_open(trigger_id="not-a-trigger", view=view)
    assert e.value.response["error"] == "invalid_trigger_id"
    updated = client.views_update(view_id=opened["id"], view=view, hash=opened["hash"])["view"]
    assert updated["id"] == opened["id"]
    with pytest.raises(SlackApiError) as e:
        client.views_update(view_id=opened["id"], view=view, hash="stale")
    assert e.value.response["error"] == "hash_conflict"
    home = {
        "type": "home",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "h"}}],
    }
    client.views_publish(user_id="U2", view=home)
    assert double.home_views["U2"]["type"] == "home"


def test_trigger_expires_after_three_seconds():
    clock = FakeClock()
    with SlackDouble(TOKEN, clock=clock) as d:
        trigger = d.issue_trigger_id("U1")
        clock.now += 3.5
        view = {"type": "modal", "title": {"type": "plain_text", "text": "T"}, "blocks": []}
        with pytest.raises(SlackApiError) as e:
            WebClient(token=TOKEN, base_url=d.api_url).views_open(trigger_id=trigger, view=view)
        assert e.value.response["error"] == "expired_trigger_id"


def test_calls_api_and_team_info(double, client):
    call = client.calls_add(
        external_unique_id="room-1",
        join_url="https://ams.example/Conference/room-1",
        created_by="U2",
        users=[{"slack_id": "U2"}],
    )["call"]
    client.calls_participants_add(id=call["id"], users=[{"slack_id": "U3"}])
    client.calls_participants_remove(id=call["id"], users=[{"slack_id": "U2"}])
    client.calls_update(id=call["id"], title="Standup")
    client.calls_end(id=call["id"], duration=60)
    state = double.slack_calls[call["id"]]
    assert state["users"] == [{"slack_id": "U3"}] and state["title"] == "Standup"
    assert state["duration"] == 60
    with pytest.raises(SlackApiError):
        client.calls_add(external_unique_id="x", join_url="https://x")  # no created_by
    assert client.team_info()["team"]["id"] == "T0001"


def test_calls_end_answers_like_slack(double, client):
    """calls.end: invalid_call_id for an unknown Call; an ended one is ok + inactive_call."""
    with pytest.raises(SlackApiError) as e:
        client.calls_end(id="R0NOSUCHCALL")
    assert e.value.response["error"] == "invalid_call_id"
    call = client.calls_add(
        external_unique_id="room-2", join_url="https://ams.example/x", created_by="U2"
    )["call"]
    first = client.calls_end(id=call["id"], duration=30)
    assert first.data == {"ok": True}
    again = client.calls_end(id=call["id"], duration=99)  # ok: true, so no exception
    assert again.data == {"ok": True, "error": "inactive_call"}
    assert double.slack_calls[call["id"]]["duration"] == 30  # the second end changed nothing
    for method in (client.calls_update, client.calls_participants_add):
        with pytest.raises(SlackApiError) as e:
            method(id="R0NOSUCHCALL", users=[{"slack_id": "U2"}])
        assert e.value.response["error"] == "invalid_call_id"


def test_calls_add_refuses_a_bad_created_by(double, client):
    for bad in ("U0NOBODY", "not-a-user-id"):
        with pytest.raises(SlackApiError) as e:
            client.calls_add(external_unique_id="room-3", join_url="https://x", created_by=bad)
        assert e.value.response["error"] == "invalid_created_by", bad
    assert double.slack_calls == {}


def test_concurrent_posts_are_all_recorded(double):
    for i in range(20):
        double.add_user(f"UC{i}")
    client = WebClient(token=TOKEN, base_url=double.api_url, timeout=5)
    threads = [
        threading.Thread(target=client.chat_postMessage, kwargs={"channel": f"UC{i}", "text": "x"})
        for i in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(double.calls_to("chat.postMessage")) == 20
    assert len({double.dms_to(f"UC{i}")[0]["ts"] for i in range(20)}) == 20
    double.reset()
    assert double.calls == [] and double.dms_to("UC1") == []


# -- SlackSender against a real Bolt app -------------------------------------------------


@pytest.fixture
def bolt_bot(double):
    """A Bolt app in HTTP mode on loopback, talking to the double."""
    app = App(
        signing_secret=SECRET,
        client=WebClient(token=TOKEN, base_url=double.api_url, timeout=5),
        process_before_response=True,
    )
    seen: dict[str, list] = {"actions": [], "events": []}

    @app.command("/meet")
    def meet(ack, respond, command, client):
        ack("Creating your room…")
        respond(f"done: {command['text']}")
        client.chat_postMessage(channel=command["user_id"], text="your link")

    @app.action("get_link")
    def get_link(ack, body):
        ack()
        seen["actions"].append(body)

    @app.view("schedule")
    def schedule(ack, view):
        name = view["state"]["values"]["name"]["name_input"]["value"]
        if not name:
            ack(response_action="errors", errors={"name": "required"})
        else:
            ack()
        seen.setdefault("metadata", []).append(view["private_metadata"])

    @app.shortcut("open_modal")
    def open_modal(ack, shortcut, client):
        ack()
        view = {"type": "modal", "callback_id": "schedule", "private_metadata": "m1"}
        view["title"] = {"type": "plain_text", "text": "Schedule"}
        client.views_open(trigger_id=shortcut["trigger_id"], view=view)

    @app.event("app_home_opened")
    def home(event, request):
        seen["events"].append((event["user"], request.headers.get("x-slack-retry-num")))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
            headers = {k.lower(): v for k, v in self.headers.items()}
            resp = app.dispatch(BoltRequest(body=raw, headers=headers))
            body = (resp.body or "").encode()
            self.send_response(resp.status)
            for name, values in resp.headers.items():
                for v in values:
                    self.send_header(name, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/slack/events"
    sender = SlackSender(url, SECRET, double=double)
    yield sender, seen
    sender.close()
    server.shutdown()
    server.server_close()


def signature_ok(resp: requests.Response) -> bool:
    req = resp.request
    return SignatureVerifier(SECRET).is_valid(
        body=req.body,
        timestamp=req.headers["X-Slack-Request-Timestamp"],
        signature=req.headers["X-Slack-Signature"],
    )


def test_signed_command_reaches_bolt_and_replies_are_recorded(bolt_bot, double):
    sender, _ = bolt_bot
    resp = sender.command("standup @bob for 30m")
    assert signature_ok(resp)
    assert resp.status_code == 200 and resp.text == "Creating your room…"
    assert double.responses[resp.response_key] == [{"text": "done: standup @bob for 30m"}]
    assert [m["text"] for m in double.dms_to("U1")] == ["your link"]
    assert double.calls_to("auth.test")  # Bolt verified the token against the double
    form = parse_qsl(resp.request.body.decode())
    assert [k for k, _ in form] == [
        "token", "team_id", "team_domain", "channel_id", "channel_name", "user_id", "user_name",
        "command", "text", "api_app_id", "is_enterprise_install", "response_url", "trigger_id",
    ]  # fmt: skip
    fields = dict(form)
    assert fields["command"] == "/meet" and fields["user_name"] == "alice"
    assert fields["channel_name"] == "general" and fields["is_enterprise_install"] == "false"
    assert (
        fields["response_url"] == resp.response_url == double.make_response_url(resp.response_key)
    )


def test_command_as_another_user_in_a_dm(bolt_bot, double):
    sender, _ = bolt_bot
    resp = sender.command("help", user_id="U2", channel_id="U2")
    fields = dict(parse_qsl(resp.request.body.decode()))
    assert (fields["user_name"], fields["channel_id"]) == ("bob", "DU2")
    assert fields["channel_name"] == "directmessage"
    assert [m["text"] for m in double.dms_to("U2")] == ["your link"]


def test_bad_signature_and_stale_timestamp_get_401(bolt_bot):
    sender, _ = bolt_bot
    bad = sender.command("x", signature=SlackSender.BAD_SIGNATURE)
    stale = sender.command("x", timestamp=sender.stale_timestamp())
    assert not signature_ok(bad) and not signature_ok(stale)
    assert bad.status_code == 401 and stale.status_code == 401


def test_block_action_clicks_the_posted_button(bolt_bot, double):
    sender, seen = bolt_bot
    posted = WebClient(token=TOKEN, base_url=double.api_url).chat_postMessage(
        channel="C1", text="Room open", blocks=[button("get_link")]
    )
    resp = sender.block_action("get_link", "r1", user_id="U2")
    assert resp.status_code == 200 and signature_ok(resp)
    (body,) = seen["actions"]
    assert body["message"]["ts"] == posted["ts"] == body["container"]["message_ts"]
    assert body["actions"][0]["block_id"] == posted["message"]["blocks"][0]["block_id"]
    assert body["user"] == {"id": "U2", "username": "bob", "name": "bob", "team_id": "T0001"}
    assert body["response_url"].endswith(resp.response_key)


def test_shortcut_opens_modal_and_submission_round_trips(bolt_bot, double):
    sender, seen = bolt_bot
    assert sender.shortcut("open_modal", user_id="U1").status_code == 200
    (opened,) = double.views.values()
    bad = sender.view_submission("schedule", {"name": {"name_input": ""}}, user_id="U1")
    assert bad.json() == {"response_action": "errors", "errors": {"name": "required"}}
    ok = sender.view_submission("schedule", {"name": {"name_input": "standup"}}, user_id="U1")
    assert ok.status_code == 200 and ok.text == ""
    assert seen["metadata"] == ["m1", "m1"]  # taken from the modal the bot opened
    assert opened["callback_id"] == "schedule"


def test_event_with_retry_headers(bolt_bot):
    sender, seen = bolt_bot
    event = {"type": "app_home_opened", "user": "U1", "channel": "DU1", "tab": "home"}
    first = sender.event(event)
    retry = sender.event(event, event_id=first.event_id, retry_num=1)
    assert first.status_code == retry.status_code == 200
    assert seen["events"] == [("U1", None), ("U1", ["1"])]
    assert retry.request.headers["X-Slack-Retry-Reason"] == "http_timeout"
    assert json.loads(retry.request.body)["event_id"] == first.event_id
