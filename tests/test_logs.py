"""Nothing that lets someone in reaches a log line, in any form a library writes it.

slack_sdk at DEBUG logs each request's arguments (a Python ``repr``) and each
response body as Slack sent it: JSON with every "/" escaped as "\\/". The
redactor must catch links, tokens and secrets in all of those forms, and
values an attacker chooses (a query parameter, a webhook field) are logged
with ``%r`` so they cannot forge a log line.
"""

from __future__ import annotations

import json
import re
import string
from urllib.parse import parse_qs, quote, urlsplit

import jwt
import requests
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.logs import REDACTED, RedactingFilter, redact, secret_forms
from tests.conftest import ALICE, BOB, free_port, sender_for, wait_for
from tests.helpers import db_rows, dm_links, response_texts

B64URL = string.ascii_letters + string.digits + "-_"
ALNUM = string.ascii_letters + string.digits


# -- what must never survive ------------------------------------------------------------
@st.composite
def credentials(draw) -> tuple[str, str]:
    """``(text that carries it, the part that must not survive)``."""
    kind = draw(st.sampled_from(["join", "circle", "jwt", "slack", "code"]))
    host = draw(st.sampled_from(["https://bot.example", "http://127.0.0.1:3000", "https://a.b"]))
    if kind == "join":
        link_id = draw(st.text(B64URL, min_size=43, max_size=43))
        return f"{host}/join/{link_id}", link_id
    if kind in ("circle", "jwt"):
        claims = {
            "streamId": draw(st.text(ALNUM, min_size=1, max_size=24)),
            "type": "publish",
            "sub": draw(st.text(ALNUM, min_size=1, max_size=12)),
            "jti": draw(st.text(ALNUM, min_size=8, max_size=32)),
            "exp": draw(st.integers(0, 2**40)),
        }
        key = draw(st.text(ALNUM, min_size=32, max_size=48))
        token = jwt.encode(claims, key, algorithm="HS256")
        if kind == "jwt":
            return token, token.rsplit(".", 1)[1]
        extra = draw(st.sampled_from(["", "other=1&", "a=b&c=d&"]))
        return f"{host}:5443/Conference/{claims['streamId']}?{extra}token={token}", token
    if kind == "slack":
        prefix = draw(st.sampled_from(["xoxb-", "xoxp-", "xapp-1-", "xoxe-1-", "xoxe.xoxb-1-"]))
        tail = draw(st.text(ALNUM + "-", min_size=24, max_size=60))
        assume(re.search(r"[A-Za-z0-9]{12}", tail))
        return prefix + tail, tail
    code = draw(st.text(ALNUM + ".", min_size=20, max_size=60))
    assume(re.search(r"[A-Za-z0-9]{12}", code))
    return f"{host}/join/room/callback?code={code}&state=s", code


def slack_json(text: str) -> str:
    """``text`` inside a JSON string, the way Slack's responses spell it."""
    return json.dumps(text)[1:-1].replace("/", "\\/")


ENCODINGS = {
    "plain": lambda s: s,
    "slack json": slack_json,
    "json, ascii": lambda s: json.dumps(s, ensure_ascii=True)[1:-1],
    "repr": lambda s: repr(s),
    "repr of slack json": lambda s: repr(slack_json(s)),
    "json of slack json": lambda s: json.dumps(slack_json(s)),
    "url-encoded": lambda s: quote(s, safe=""),
}


@settings(max_examples=400, deadline=None)
@given(
    credential=credentials(),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    encoding=st.sampled_from(sorted(ENCODINGS)),
)
def test_no_link_or_token_survives_redaction(credential, before, after, encoding):
    carrier, secret = credential
    assume(secret not in before + after)
    logged = ENCODINGS[encoding](f"{before} {carrier} {after}")
    assert secret in logged  # the encoding kept it: the redactor has work to do
    assert secret not in redact(logged)


def test_slack_json_of_a_click_time_link_is_redacted():
    link_id = "A" * 21 + "-_b" * 7 + "z"
    body = json.dumps({"url": f"https://bot.example/join/{link_id}"}).replace("/", "\\/")
    assert link_id in body and "\\/join\\/" in body
    assert redact(body) == '{"url": "https:\\/\\/bot.example\\/join\\/' + REDACTED + '"}'


def test_the_slack_call_link_names_a_room_and_stays():
    """``/join/room/<room id>`` carries no credential; operators need the room id."""
    line = "GET /join/room/r-abcdefghijklmnopqrstuvwx from https:\\/\\/x\\/join\\/room\\/r-12345678"
    assert redact(line) == line


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(string.printable.strip(), min_size=8, max_size=40),
    before=st.text(max_size=20),
    encoding=st.sampled_from(["plain", "slack json", "repr", "repr of slack json"]),
)
def test_a_configured_secret_is_redacted_in_every_form_it_is_logged(secret, before, encoding):
    """AMS_JWT_SECRET may hold any printable character ("/", a quote, a backslash)."""
    assume(secret not in before)
    logged = ENCODINGS[encoding](before + secret)
    forms = secret_forms([secret])
    out = redact(logged, forms)
    assert secret not in out
    assert ENCODINGS[encoding](secret).strip("'\"") not in out


def test_the_filter_uses_every_form_of_a_secret():
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "body: %s", None, None)
    record.args = (json.dumps({"k": 'se/cr"et-0123'}).replace("/", "\\/"),)
    RedactingFilter(['se/cr"et-0123']).filter(record)
    assert "cr" not in record.getMessage()


# -- the real bot at DEBUG ------------------------------------------------------------------
def start_public(start_bot, **extra):
    port = free_port()
    return start_bot(PORT=str(port), MEETBOT_PUBLIC_URL=f"http://127.0.0.1:{port}", **extra)


def test_join_links_stay_out_of_the_debug_log_in_slacks_json(start_bot, slack, ams):
    """slack_sdk logs chat.postMessage's answer, with the DM's ``\\/join\\/<id>`` in it."""
    bot = start_public(start_bot)  # MEETBOT_LOG_LEVEL=DEBUG (tests.conftest.bot_env)
    r = sender_for(bot, slack).command(f"sync <@{BOB}>", user_id=ALICE)
    assert r.status_code == 200
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    wait_for(lambda: dm_links(slack, ALICE) and dm_links(slack, BOB))
    ids = [link.rsplit("/join/", 1)[1] for u in (ALICE, BOB) for link in dm_links(slack, u)]
    assert len(ids) == 2
    log = wait_for(lambda: (t := bot.log()) and "\\/join\\/" in t and t)
    # slack_sdk did log Slack's JSON, escaped, and the ids in it are gone.
    assert "Received the following response" in log
    assert "\\/join\\/" + REDACTED in log
    for link_id in ids:
        assert link_id not in log


# -- values an attacker chooses are quoted ---------------------------------------------------
FORGED = "\n2030-01-01 00:00:00,000 CRITICAL meetbot.app [-]: forged line"
CLIENT_ID, CLIENT_SECRET = "1234567890.0987654321", "calls-client-secret-0123456789abcdef"
HOOK_SECRET = "hook-secret-0123456789abcdef"


def test_request_values_cannot_forge_a_log_line(start_bot, slack, ams):
    slack.enable_oauth(CLIENT_ID, CLIENT_SECRET)
    bot = start_public(
        start_bot,
        SLACK_CLIENT_ID=CLIENT_ID,
        SLACK_CLIENT_SECRET=CLIENT_SECRET,
        MEETBOT_WEBHOOK_SECRET=HOOK_SECRET,
        MEETBOT_SLACK_CALLS="1",
    )
    r = sender_for(bot, slack).command(f"sync <@{BOB}>", user_id=ALICE)
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    (room,) = db_rows(bot.env["DATABASE_URL"], "rooms")
    public = bot.env["MEETBOT_PUBLIC_URL"]

    # Sign in with Slack comes back with an error of the caller's choosing.
    browser = requests.Session()
    start = browser.get(f"{public}/join/room/{room['id']}", allow_redirects=False, timeout=5)
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    back = browser.get(
        f"{public}/join/room/callback",
        params={"state": state, "error": "access_denied" + FORGED},
        allow_redirects=False,
        timeout=5,
    )
    assert back.status_code == 400 and "sign-in didn" in back.text
    # AMS's hooks carry a stream id the joining client picked.
    hook = requests.post(
        f"{bot.url}/ams/auth/{HOOK_SECRET}",
        json={"streamId": room["id"] + FORGED, "token": "x", "mode": "publish" + FORGED},
        timeout=5,
    )
    assert hook.status_code == 403
    listener = requests.post(
        f"{bot.url}/ams/hook/{HOOK_SECRET}", json={"action": "liveStreamStarted" + FORGED}
    )
    assert listener.status_code == 200

    log = wait_for(lambda: (t := bot.log()) and "liveStreamStarted" in t and t)
    assert "forged line" in log  # it was logged...
    assert FORGED not in log  # ...but never as a line of its own
    assert not re.search(r"^2030-01-01", log, re.MULTILINE)
    assert "sign-in cancelled ('access_denied\\n2030" in log
