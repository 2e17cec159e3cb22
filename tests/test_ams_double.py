"""The AMS double must behave like ams.md says, since every other test trusts it.

These tests talk to it with plain ``requests`` (not the bot's client) so a bug in
the client cannot hide a bug in the double.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.sim.ams import (
    COMMUNITY_EDITION,
    DEFAULT_ADMIN_EMAIL,
    DEFAULT_ADMIN_PASSWORD,
    DEFAULT_APP_SETTINGS,
    MSG_ID_INVALID,
    MSG_ID_TAKEN,
    MSG_INVALID_APP_JWT,
    MSG_NOT_ALLOWED_IP,
    REMOTE_BOT_IP,
    AmsDouble,
    ManualClock,
    circle_stream_id,
    verify_hs256,
)
from tests.conftest import wait_for

SECRET = "stream-secret-0123456789-0123456789-abcdef"
REST_SECRET = "rest-secret-0123456789-0123456789-abcdefgh"
SERVER_SECRET = "server-secret-0123456789-0123456789-abcdef"
T0 = 1_700_000_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def ams(clock: ManualClock) -> Iterator[AmsDouble]:
    with AmsDouble(stream_secret=SECRET, clock=clock) as double:
        yield double


@dataclass
class Call:
    """One POST the double made to the receiver."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("latin-1"), keep_blank_values=True))


class Receiver:
    """A loopback HTTP server that records the double's webhook and hook POSTs.

    ``status[path]`` picks the answer (200 by default); ``hold[path]`` is an Event
    the handler waits on (up to 10 s) before answering.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.status: dict[str, int] = {}
        self.hold: dict[str, threading.Event] = {}
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call = Call(self.path, dict(self.headers), body, time.monotonic())
                with receiver._cond:
                    receiver.calls.append(call)
                    receiver._cond.notify_all()
                gate = receiver.hold.get(self.path)
                if gate is not None:
                    gate.wait(10)
                status = receiver.status.get(self.path, 200)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.url("/redirected"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def to(self, path: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.path == path]

    def wait_for(self, path: str, n: int, timeout: float = 10) -> list[Call]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.to(path)) >= n, timeout)
        calls = self.to(path)
        assert len(calls) >= n, f"{path}: {len(calls)} calls, wanted {n}"
        return calls

    def close(self) -> None:
        for gate in self.hold.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def link(ams: AmsDouble, room: str, tok: str | None = None, **params: str) -> str:
    """A Circle link as the bot writes it: {AMS_URL}/{app}/{room}?token=...&more."""
    query = {"token": tok if tok is not None else token(room), **params}
    return f"{ams.url}/{ams.app}/{room}?" + "&".join(f"{k}={v}" for k, v in query.items())


def rest(ams: AmsDouble, path: str) -> str:
    return f"{ams.url}{ams.rest_base}{path}"


def token(room: str, *, secret: str = SECRET, **claims: Any) -> str:
    body = {"streamId": room, "type": "publish", "exp": T0 + 3600}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm="HS256")


def create(ams: AmsDouble, room: str, **extra: Any) -> requests.Response:
    body = {"streamId": room, "name": "topic", "plannedStartDate": T0, "plannedEndDate": T0 + 60}
    body.update(extra)
    return requests.post(rest(ams, "/broadcasts/create"), json=body, timeout=5)


# --------------------------------------------------------------------------- app REST


def test_create_get_delete_follow_ams_shapes(ams: AmsDouble) -> None:
    r = create(ams, "room-1", metaData='{"meetbot":1}')
    assert r.status_code == 200
    b = r.json()
    assert b["streamId"] == "room-1" and b["status"] == "created"
    assert b["plannedEndDate"] == T0 + 60 and b["metaData"] == '{"meetbot":1}'
    assert b["zombi"] is False and b["type"] == "liveStream"

    got = requests.get(rest(ams, "/broadcasts/room-1"), timeout=5)
    assert got.status_code == 200 and got.json()["name"] == "topic"

    assert requests.delete(rest(ams, "/broadcasts/room-1"), timeout=5).json()["success"] is True
    missing = requests.get(rest(ams, "/broadcasts/room-1"), timeout=5)
    assert missing.status_code == 404 and missing.content == b""  # 404 with an EMPTY body
    again = requests.delete(rest(ams, "/broadcasts/room-1"), timeout=5)
    assert again.status_code == 200 and again.json()["success"] is False  # 200 always


def test_create_rejects_taken_and_invalid_ids(ams: AmsDouble) -> None:
    assert create(ams, "dup").status_code == 200
    taken = create(ams, "dup")
    assert taken.status_code == 400 and taken.json()["message"] == MSG_ID_TAKEN
    assert taken.json()["success"] is False
    for bad in ("has space", "slash/x", "emoji-\u00e9", "semi;colon"):
        r = create(ams, bad)
        assert r.status_code == 400 and r.json()["message"] == MSG_ID_INVALID, bad
    assert create(ams, "A-z_0.9" * 40).status_code == 200  # no length limit


def test_create_without_id_generates_one(ams: AmsDouble) -> None:
    r = requests.post(rest(ams, "/broadcasts/create"), json={"name": "x"}, timeout=5)
    assert r.status_code == 200
    assert r.json()["streamId"] in ams.broadcasts


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(min_size=1, max_size=12))
def test_id_validation_matches_the_allowed_alphabet(ams: AmsDouble, room: str) -> None:
    r = create(ams, room)
    allowed = all(c.isascii() and (c.isalnum() or c in "-_.") for c in room)
    if allowed:
        assert r.status_code == 200 or r.json()["message"] == MSG_ID_TAKEN
    else:
        assert r.status_code == 400 and r.json()["message"] == MSG_ID_INVALID


def test_list_is_capped_at_250_and_pages(ams: AmsDouble) -> None:
    for i in range(260):
        assert create(ams, f"r{i:03d}").status_code == 200
    first = requests.get(rest(ams, "/broadcasts/list/0/1000"), timeout=5).json()
    assert len(first) == 250
    rest_page = requests.get(rest(ams, "/broadcasts/list/250/250"), timeout=5).json()
    assert [b["streamId"] for b in rest_page] == [f"r{i:03d}" for i in range(250, 260)]


def test_participants_stop_and_zombi_rooms(ams: AmsDouble) -> None:
    create(ams, "room")
    assert ams.join("room", token("room"), "p1")
    assert ams.join("room", token("room"), "p2")
    count = requests.get(rest(ams, "/broadcasts/room/active-subtracks-count"), timeout=5)
    assert count.json() == {"number": 2}
    tracks = requests.get(rest(ams, "/broadcasts/room/active-subtracks/0/50"), timeout=5).json()
    assert {t["streamId"] for t in tracks} == {"p1", "p2"}
    assert all(t["mainTrackStreamId"] == "room" for t in tracks)
    assert ams.broadcasts["room"]["status"] == "broadcasting"

    stop = requests.post(
        rest(ams, "/broadcasts/room/stop"), params={"stopSubtracks": "true"}, timeout=5
    )
    assert stop.json()["success"] is True
    assert ams.participants("room") == []
    assert ams.broadcasts["room"]["status"] == "finished"  # a REST room stays after the call

    # joining a room that does not exist auto-creates a zombi, gone when the last leaves
    assert ams.join("ghost", token("ghost"), "p3")
    assert ams.broadcasts["ghost"]["zombi"] is True
    assert ams.leave("ghost", "p3")
    assert "ghost" not in ams.broadcasts

    missing = requests.get(rest(ams, "/broadcasts/nope/active-subtracks-count"), timeout=5)
    assert missing.status_code == 404 and missing.json()["success"] is False
    assert requests.post(rest(ams, "/broadcasts/nope/stop"), timeout=5).json()["success"] is False


def test_version_reports_the_configured_edition() -> None:
    with AmsDouble() as ee, AmsDouble(edition=COMMUNITY_EDITION) as ce:
        assert requests.get(rest(ee, "/version"), timeout=5).json()["versionType"] == (
            "Enterprise Edition"
        )
        v = requests.get(rest(ce, "/version"), timeout=5).json()
        assert v["versionType"] == COMMUNITY_EDITION and set(v) == {
            "versionName",
            "versionType",
            "buildNumber",
        }


def test_circle_page_answers_for_links(ams: AmsDouble, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meetbot.sim.ams")
    r = requests.get(f"{ams.url}/Conference/room-1", params={"token": "x.y.z"}, timeout=5)
    assert r.status_code == 200 and "room-1" in r.text and "x.y.z" not in r.text
    # Only the double's own records: an earlier in-process test may have turned
    # urllib3's DEBUG logging on, and the client side logs its own URL.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name == "meetbot.sim.ams")
    assert "/Conference/room-1?token=***" in ours and "x.y.z" not in ours
    assert requests.get(f"{ams.url}/OtherApp/room-1", timeout=5).status_code == 404


# --------------------------------------------------------------------------- REST filters


def assert_tomcat_403(r: requests.Response, message: str) -> None:
    """JWTFilter/IPFilter call sendError(403, msg): Tomcat's HTML page, not a Result."""
    assert r.status_code == 403
    assert r.headers["Content-Type"].startswith("text/html")
    assert "<h1>HTTP Status 403" in r.text and f"<b>Message</b> {message}</p>" in r.text
    with pytest.raises(ValueError):
        r.json()


def test_ip_filter_refuses_a_remote_bot_until_allowed(clock: ManualClock) -> None:
    with AmsDouble(ip_allowed=False, clock=clock) as ams:
        assert_tomcat_403(requests.get(rest(ams, "/version"), timeout=5), MSG_NOT_ALLOWED_IP)
        ams.update_settings(remoteAllowedCIDR=f"127.0.0.1,{REMOTE_BOT_IP}/32")
        assert requests.get(rest(ams, "/version"), timeout=5).status_code == 200
        ams.update_settings(remoteAllowedCIDR="127.0.0.1", ipFilterEnabled=False)
        assert requests.get(rest(ams, "/version"), timeout=5).status_code == 200


def test_rest_jwt_filter(clock: ManualClock) -> None:
    with AmsDouble(rest_jwt_secret=REST_SECRET, clock=clock) as ams:

        def call(header: str | None) -> requests.Response:
            headers = {"Authorization": header} if header is not None else {}
            return requests.get(rest(ams, "/version"), headers=headers, timeout=5)

        no_claims = jwt.encode({}, REST_SECRET, algorithm="HS256")
        assert call(f"Bearer {no_claims}").status_code == 200  # no claims required
        # JWTFilter strips a leading "Bearer" in any case, and takes a bare token too.
        assert call(f"bearer {no_claims}").status_code == 200
        assert call(no_claims).status_code == 200
        expired = jwt.encode({"exp": T0 - 1}, REST_SECRET, algorithm="HS256")
        for bad in (
            None,
            "Bearer ",
            f"Bearer {expired}",
            f"Bearer {jwt.encode({}, 'wrong-secret-0123456789-0123456789-x', algorithm='HS256')}",
        ):
            assert_tomcat_403(call(bad), MSG_INVALID_APP_JWT)


def test_jwt_filter_runs_before_the_ip_filter(clock: ManualClock) -> None:
    """StreamApp's web.xml maps RestJWTAuthenticationFilter before IPFilter."""
    with AmsDouble(rest_jwt_secret=REST_SECRET, ip_allowed=False, clock=clock) as ams:
        assert_tomcat_403(requests.get(rest(ams, "/version"), timeout=5), MSG_INVALID_APP_JWT)
        good = {"Authorization": f"Bearer {jwt.encode({}, REST_SECRET, algorithm='HS256')}"}
        r = requests.get(rest(ams, "/version"), headers=good, timeout=5)
        assert_tomcat_403(r, MSG_NOT_ALLOWED_IP)


# --------------------------------------------------------------------------- management


def login(ams: AmsDouble, password: str = DEFAULT_ADMIN_PASSWORD) -> requests.Response:
    return requests.post(
        f"{ams.url}/rest/v2/users/authenticate",
        json={"email": DEFAULT_ADMIN_EMAIL, "password": password},
        timeout=5,
    )


def test_login_lockout_after_three_failures(ams: AmsDouble, clock: ManualClock) -> None:
    for _ in range(3):
        assert login(ams, "wrong").json()["success"] is False
    assert ams.is_locked(DEFAULT_ADMIN_EMAIL)
    locked = login(ams)
    assert locked.json()["success"] is False and "JSESSIONID" not in locked.cookies
    clock.advance(299)
    assert login(ams).json()["success"] is False
    clock.advance(2)
    ok = login(ams)
    assert ok.json()["success"] is True and ok.cookies.get("JSESSIONID")


def test_settings_need_auth_and_reset_omitted_fields(ams: AmsDouble) -> None:
    url = f"{ams.url}/rest/v2/applications/settings/Conference"
    assert requests.get(url, timeout=5).status_code == 403
    s = requests.Session()
    assert s.post(
        f"{ams.url}/rest/v2/users/authenticate",
        json={"email": DEFAULT_ADMIN_EMAIL, "password": DEFAULT_ADMIN_PASSWORD},
        timeout=5,
    ).json()["success"]
    current = s.get(url, timeout=5).json()
    assert current["jwtStreamSecretKey"] == SECRET and current["publishJwtControlEnabled"]
    assert set(DEFAULT_APP_SETTINGS) <= set(current)

    partial = dict(current)
    del partial["publishJwtControlEnabled"], partial["hlsListSize"]
    assert s.post(url, json=partial, timeout=5).json()["success"] is True
    after = s.get(url, timeout=5).json()
    assert after["publishJwtControlEnabled"] is False  # reset to the AMS default
    assert after["hlsListSize"] == DEFAULT_APP_SETTINGS["hlsListSize"]
    assert after["jwtStreamSecretKey"] == SECRET

    two_schemes = dict(after, publishJwtControlEnabled=True, publishTokenControlEnabled=True)
    refused = s.post(url, json=two_schemes, timeout=5).json()
    assert refused["success"] is False
    assert s.get(url, timeout=5).json() == after  # nothing applied


def test_server_jwt_is_raw_proxy_authorization(clock: ManualClock) -> None:
    with AmsDouble(server_jwt_secret=SERVER_SECRET, clock=clock) as ams:
        url = f"{ams.url}/rest/v2/applications/settings/Conference"
        good = jwt.encode({"exp": T0 + 60}, SERVER_SECRET, algorithm="HS256")
        assert requests.get(url, headers={"ProxyAuthorization": good}, timeout=5).ok
        bearer = {"ProxyAuthorization": f"Bearer {good}"}
        assert requests.get(url, headers=bearer, timeout=5).status_code == 403


# --------------------------------------------------------------------------- join check


def test_join_check_is_java_jwt_strict(ams: AmsDouble, clock: ManualClock) -> None:
    ok = ams.check_join
    assert ok("room", token("room")) == (True, "ok")
    assert ok("room", token("room", exp=T0))[0]  # exp == now still valid
    assert not ok("room", token("room", exp=T0 - 1))[0]  # zero leeway
    assert ok("room", token("room", iat=T0))[0]
    assert not ok("room", token("room", iat=T0 + 1))[0]  # a bot clock 1 s ahead fails
    assert not ok("room", token("room", nbf=T0 + 1))[0]
    assert ok("room", token("room", exp=None))[0]  # exp only checked when present
    assert not ok("other", token("room"))[0]
    assert not ok("room", token("room", type="play"))[0]
    assert not ok("room", token("room", secret="another-secret-0123456789-0123456789"))[0]
    assert not ok("room", "")[0] and not ok("room", "garbage")[0]
    unsigned = jwt.encode({"streamId": "room", "type": "publish"}, None, algorithm="none")
    assert not ok("room", unsigned)[0]
    assert ok("room", token("room"), "play")[0]  # Circle plays with the publish token
    clock.advance(3601)
    assert not ok("room", token("room"))[0]


def test_secret_rotation_is_live(ams: AmsDouble) -> None:
    old = token("room")
    new_secret = "rotated-secret-0123456789-0123456789-abc"
    ams.set_stream_secret(new_secret)
    assert not ams.check_join("room", old)[0]
    assert ams.check_join("room", token("room", secret=new_secret))[0]


def test_community_edition_checks_nothing(clock: ManualClock) -> None:
    with AmsDouble(stream_secret=SECRET, edition=COMMUNITY_EDITION, clock=clock) as ams:
        assert ams.check_join("room", "garbage")[0]
        assert ams.join("room", None, "p1")


def test_accept_only_rooms_in_data_store(ams: AmsDouble) -> None:
    ams.update_settings(acceptOnlyRoomsInDataStore=True)
    assert not ams.join("ghost", token("ghost"), "p1")
    assert "ghost" not in ams.broadcasts
    create(ams, "real")
    assert ams.join("real", token("real"), "p1")


def test_a_bad_jwt_is_refused_before_the_webhook(ams: AmsDouble, receiver: Receiver) -> None:
    """Enterprise-only order (closed source): the stream JWT first, then the webhook."""
    ams.update_settings(webhookAuthenticateURL=receiver.url("/auth"))
    assert not ams.check_join("room", token("room", exp=T0 - 5))[0]
    assert not ams.check_join("room", token("other"))[0]
    assert receiver.calls == []
    assert ams.check_join("room", token("room"))[0]
    assert len(receiver.calls) == 1


def test_verify_hs256_reasons() -> None:
    claims, why = verify_hs256(token("r"), SECRET.encode(), T0)
    assert claims is not None and why == "ok"
    assert verify_hs256(token("r", iat=T0 + 1), SECRET.encode(), T0 + 0.999)[1] == (
        "iat is in the future"
    )  # java-jwt truncates now to whole seconds


# --------------------------------------------------------------------------- faults, inspection


def test_fault_injection_and_request_log(ams: AmsDouble) -> None:
    ams.fail_next(2, status=503, path_regex=r"/version$")
    assert requests.get(rest(ams, "/version"), timeout=5).status_code == 503
    assert requests.get(rest(ams, "/broadcasts/x"), timeout=5).status_code == 404  # not matched
    assert requests.get(rest(ams, "/version"), timeout=5).status_code == 503
    assert requests.get(rest(ams, "/version"), timeout=5).status_code == 200

    ams.reset_next(1)
    with pytest.raises(requests.ConnectionError):
        requests.get(rest(ams, "/version"), timeout=5)

    ams.hang_next(1, 1.0)
    with pytest.raises(requests.ReadTimeout):
        requests.get(rest(ams, "/version"), timeout=(1, 0.2))

    ams.reset_next(1, path_regex="create", after_processing=True)
    with pytest.raises(requests.ConnectionError):
        create(ams, "made-anyway")
    assert "made-anyway" in ams.broadcasts

    assert ams.count("GET", f"{ams.rest_base}/version") == 5
    assert ams.count(None, r"^/Conference/rest/v2/broadcasts/(x|create)$") == 2
    last = ams.requests[-1]
    assert last.method == "POST" and last.json["streamId"] == "made-anyway"
    assert last.header("Content-Type") == "application/json"


def test_latency_is_added_to_app_rest_calls(ams: AmsDouble) -> None:
    ams.latency = 0.2
    started = time.monotonic()
    requests.get(rest(ams, "/version"), timeout=5)
    assert time.monotonic() - started >= 0.2


def test_stop_frees_the_port_without_waiting_for_hung_requests() -> None:
    ams = AmsDouble().start()
    port = ams.port
    ams.hang_next(1, 30, path_regex="/version$")
    keep_alive = requests.Session()
    keep_alive.get(f"{ams.url}/Conference/x", timeout=5)  # an idle keep-alive connection
    hung = threading.Thread(
        target=lambda: pytest.raises(
            requests.RequestException, requests.get, rest(ams, "/version"), timeout=10
        ),
        daemon=True,
    )
    hung.start()
    wait_for(lambda: ams.count("GET", "/Conference/rest/v2/version"))  # it is hanging now
    started = time.monotonic()
    ams.stop()
    assert time.monotonic() - started < 2
    hung.join(5)
    assert not hung.is_alive()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # the port is free again
    keep_alive.close()


# --------------------------------------------------------------------------- Circle joins


def hooked(ams: AmsDouble, receiver: Receiver, *, play: bool = True, hook: bool = True) -> None:
    """Point AMS's publish check, play check and listener hook at the receiver."""
    changes = {"webhookAuthenticateURL": receiver.url("/auth")}
    if play:
        changes["webhookPlayAuthUrl"] = receiver.url("/play")
    if hook:
        changes["listenerHookURL"] = receiver.url("/hook")
    ams.update_settings(**changes)


def test_publish_check_names_the_participant_stream_not_the_room(
    ams: AmsDouble, receiver: Receiver
) -> None:
    hooked(ams, receiver)
    create(ams, "room-1")
    person = ams.circle_join(link(ams, "room-1"), name="Ada Lovelace-King")
    assert person.joined and person.publishing and person.playing, person.why

    (publish,) = receiver.to("/auth")
    sent = publish.json
    # AcceptOnlyStreamsWithWebhook: name == streamId == the published stream;
    # Circle's generated id is the name without non-word characters + _ + 10 random.
    assert re.fullmatch(r"AdaLovelaceKing_[A-Za-z0-9]{10}", sent["streamId"])
    assert sent["streamId"] == person.stream_id == sent["name"]
    assert sent["mode"] == "live" and sent["appName"] == "Conference"
    assert sent["token"] == token("room-1")
    assert json.loads(sent["metaData"]) == {
        "isMicMuted": False,
        "isCameraOn": True,
        "isScreenShared": False,
        "playOnly": False,
        "role": "default",
    }
    # null fields are left out; the room id is nowhere (no mainTrack field)
    assert set(sent) == {"appName", "name", "streamId", "mode", "token", "metaData"}
    assert "room-1" not in json.dumps({k: v for k, v in sent.items() if k != "token"})
    assert publish.headers["Content-Type"] == "application/json"

    (play,) = receiver.to("/play")
    assert play.json == {
        "streamId": "room-1",  # Circle plays the room
        "mode": "play",
        "appName": "Conference",
        "origin": ams.url,
        "token": token("room-1"),
        "metaData": "{}",
    }
    # publish check, then play check, then the started hook
    started = receiver.wait_for("/hook", 1)[0]
    assert receiver.calls.index(publish) < receiver.calls.index(play)
    assert receiver.calls.index(play) < receiver.calls.index(started)
    assert ams.connected("room-1") == [person.stream_id]
    assert ams.participants("room-1") == [person.stream_id]
    assert ams.watching("room-1") == [person.stream_id]


def test_link_stream_id_subscriber_and_screen_share(ams: AmsDouble, receiver: Receiver) -> None:
    hooked(ams, receiver, play=False)
    create(ams, "room-1")
    person = ams.circle_join(
        link(ams, "room-1", streamId="room-1_alice_0f", streamName="Alice%20A", subscriberId="s1")
    )
    assert person.stream_id == "room-1_alice_0f" and person.name == "Alice A"
    assert receiver.to("/auth")[0].json["streamId"] == "room-1_alice_0f"
    assert receiver.to("/auth")[0].json["subscriberId"] == "s1"

    assert ams.share_screen(person) and person.presenting
    shared = receiver.to("/auth")[1].json
    assert shared["streamId"] == "room-1_alice_0f_presentation" == person.presentation_id
    assert shared["token"] == token("room-1")  # the same token
    assert json.loads(shared["metaData"])["isScreenShared"] is True
    assert sorted(ams.connected("room-1")) == ["room-1_alice_0f", "room-1_alice_0f_presentation"]
    screen = ams.broadcasts["room-1_alice_0f_presentation"]
    assert screen["name"] == "Alice A - Screen Share" and screen["mainTrackStreamId"] == "room-1"

    assert ams.stop_screen(person) and not person.presenting and person.publishing
    assert ams.connected("room-1") == ["room-1_alice_0f"]


@pytest.mark.parametrize("status", [201, 204, 302, 401, 403, 500])
def test_only_http_200_lets_a_publish_through(
    ams: AmsDouble, receiver: Receiver, status: int
) -> None:
    hooked(ams, receiver)
    receiver.status["/auth"] = status
    create(ams, "room")
    person = ams.circle_join(link(ams, "room"), name="Bob")
    assert not person.publishing and str(status) in person.why
    assert ams.connected("room") == [] and ams.participants("room") == []
    assert receiver.to("/redirected") == []  # a POST's redirect is not followed
    # Publish and play are separate checks: refused at publish, still watching.
    assert person.playing and ams.watching("room") == [person.stream_id]
    assert ams.wait_hooks() and receiver.to("/hook") == []  # nothing went live


def test_an_unreachable_webhook_refuses(ams: AmsDouble) -> None:
    ams.update_settings(webhookAuthenticateURL="http://127.0.0.1:9/unreachable")
    ok, why = ams.check_join("room", token("room"))
    assert not ok and "unreachable" in why


def test_a_refused_play_means_no_watching(ams: AmsDouble, receiver: Receiver) -> None:
    hooked(ams, receiver)
    receiver.status["/play"] = 403
    person = ams.circle_join(link(ams, "room"), name="Eve")
    assert person.publishing and not person.playing and not person.joined
    assert ams.watching("room") == []
    assert ams.check_join("room", token("room"), "publish")[0]
    assert ams.check_join("room", token("room"), "play") == (
        False,
        "play webhook answered HTTP 403",
    )


def test_publish_checks_are_serialised_per_app_and_time_out_after_5_s(
    ams: AmsDouble, receiver: Receiver
) -> None:
    ams.update_settings(webhookAuthenticateURL=receiver.url("/auth"))
    receiver.hold["/auth"] = threading.Event()  # the first call never answers in time
    first: list[tuple[bool, str]] = []
    slow = threading.Thread(target=lambda: first.append(ams.check_join("r", token("r"))))
    slow.start()
    receiver.wait_for("/auth", 1)
    del receiver.hold["/auth"]  # later calls answer at once
    second: list[tuple[bool, str]] = []
    other = threading.Thread(target=lambda: second.append(ams.check_join("s", token("s"))))
    other.start()
    slow.join(10)
    other.join(10)
    assert first == [(False, "authorization webhook unreachable: ReadTimeout")]
    assert second == [(True, "ok")]
    calls = receiver.to("/auth")
    # The second was sent only once the first had timed out, 5 s after it was sent
    # (unserialised, it would arrive at once). Arrival times, not a marker set after
    # the first thread returned: the double may send the second before that.
    assert len(calls) == 2 and calls[1].at - calls[0].at >= 4.5


def test_reconnect_reruns_both_checks_with_the_same_token(
    ams: AmsDouble, receiver: Receiver
) -> None:
    hooked(ams, receiver)
    create(ams, "room")
    person = ams.circle_join(link(ams, "room"), name="Carol")
    other = ams.circle_join(link(ams, "room"), name="Dan")
    ams.share_screen(person)
    assert ams.reconnect(person) and person.publishing and person.presenting
    tokens = {c.json["token"] for c in receiver.to("/auth") + receiver.to("/play")}
    assert tokens == {token("room")}
    assert [c.json["streamId"] for c in receiver.to("/auth")].count(person.stream_id) == 2

    receiver.status["/auth"] = 403  # the bot now refuses this person
    assert not ams.reconnect(person)
    assert not person.publishing and not person.presenting
    assert ams.connected("room") == [other.stream_id]  # everyone else stays
    ams.wait_hooks()
    ended = [c.json["id"] for c in receiver.to("/hook") if c.json["action"] == "liveStreamEnded"]
    assert person.stream_id in ended and person.presentation_id in ended


def test_play_only_link_only_plays(ams: AmsDouble, receiver: Receiver) -> None:
    hooked(ams, receiver)
    person = ams.circle_join(link(ams, "room", playOnly="true"))
    assert person.play_only and person.joined and not person.publishing
    assert receiver.to("/auth") == [] and len(receiver.to("/play")) == 1
    assert ams.connected("room") == [] and ams.watching("room") == [person.stream_id]
    with pytest.raises(ValueError):
        ams.share_screen(person)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_circle_stream_ids_are_valid_ams_ids(name: str) -> None:
    stream_id = circle_stream_id(name)
    assert re.fullmatch(r"[A-Za-z0-9]*_[A-Za-z0-9]{10}", stream_id)
    assert stream_id[:-11] == "".join(c for c in name if c.isascii() and c.isalnum())


# --------------------------------------------------------------------------- listener hooks


def test_listener_hooks_on_join_and_leave(
    ams: AmsDouble, receiver: Receiver, clock: ManualClock
) -> None:
    ams.update_settings(listenerHookURL=receiver.url("/hook"))
    create(ams, "room")
    person = ams.circle_join(link(ams, "room", subscriberId="sub-1"), name="Fay")
    clock.advance(5)
    ams.hang_up(person)
    assert ams.wait_hooks()
    by_action = {c.json["action"]: c.json for c in receiver.wait_for("/hook", 3)}
    started, ended, empty = (
        by_action[a]  # the pool does not keep the order
        for a in ("liveStreamStarted", "liveStreamEnded", "noActiveSubtracksLeftInMainTrack")
    )
    base = {
        "id": person.stream_id,
        "streamName": "Fay",
        "mainTrackId": "room",
        "roomId": "room",
        "subscriberId": "sub-1",
        "app": "Conference",
        "metadata": {
            "isMicMuted": False,
            "isCameraOn": True,
            "isScreenShared": False,
            "playOnly": False,
            "role": "default",
        },
    }
    assert started == {**base, "action": "liveStreamStarted", "timestamp": str(T0 * 1000)}
    assert ended == {**base, "action": "liveStreamEnded", "timestamp": str((T0 + 5) * 1000)}
    # updateMainTrackWithRecentlyFinishedBroadcast: the last one out
    assert empty == {
        "id": "room",
        "action": "noActiveSubtracksLeftInMainTrack",
        "streamName": "topic",
        "app": "Conference",
        "timestamp": str((T0 + 5) * 1000),
    }
    hook = receiver.to("/hook")[0]
    assert hook.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert ams.broadcasts["room"]["status"] == "finished"


def test_listener_hooks_in_form_encoding(ams: AmsDouble, receiver: Receiver) -> None:
    ams.update_settings(
        listenerHookURL=receiver.url("/hook"),
        webhookContentType="application/x-www-form-urlencoded",
    )
    person = ams.circle_join(link(ams, "room"), name="Gus Ho")
    ams.wait_hooks()
    (hook,) = receiver.wait_for("/hook", 1)
    assert hook.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    form = hook.form
    assert form["id"] == person.stream_id and form["action"] == "liveStreamStarted"
    assert form["streamName"] == "Gus Ho" and form["mainTrackId"] == "room"
    assert json.loads(form["metadata"])["role"] == "default"


def test_hooks_can_be_delivered_out_of_order(
    ams: AmsDouble, receiver: Receiver, clock: ManualClock
) -> None:
    ams.update_settings(listenerHookURL=receiver.url("/hook"))
    create(ams, "room")
    ams.hold_hooks()
    person = ams.circle_join(link(ams, "room"), name="Hal")
    clock.advance(1)
    ams.hang_up(person)
    assert [h["action"] for h in ams.held_hooks()] == [
        "liveStreamStarted",
        "liveStreamEnded",
        "noActiveSubtracksLeftInMainTrack",
    ]
    assert receiver.calls == []  # held
    delivered = ams.release_hooks("reversed")
    assert [d.status for d in delivered] == [200, 200, 200]
    got = [c.json for c in receiver.to("/hook")]
    assert [h["action"] for h in got] == [
        "noActiveSubtracksLeftInMainTrack",
        "liveStreamEnded",
        "liveStreamStarted",
    ]
    # the timestamps still tell the order
    ordered = sorted(got[1:], key=lambda h: int(h["timestamp"]))
    assert [h["action"] for h in ordered] == ["liveStreamStarted", "liveStreamEnded"]


def test_hook_retries_follow_webhook_retry_count(ams: AmsDouble, receiver: Receiver) -> None:
    ams.update_settings(listenerHookURL=receiver.url("/hook"))
    receiver.status["/hook"] = 500
    ams.join("room", token("room"), "p1")
    ams.wait_hooks()
    assert len(receiver.to("/hook")) == 1  # webhookRetryCount defaults to 0
    ams.update_settings(webhookRetryCount=2, webhookRetryDelay=10)
    ams.join("room", token("room"), "p2")
    ams.wait_hooks()
    assert [c.json["id"] for c in receiver.to("/hook")] == ["p1", "p2", "p2", "p2"]


# --------------------------------------------------------------------------- subtracks, lists


def test_participants_are_subtracks_of_the_room(ams: AmsDouble) -> None:
    create(ams, "room")
    create(ams, "empty")
    for i in range(260):
        assert ams.join("room", token("room"), f"p{i:03d}")
    count = requests.get(rest(ams, "/broadcasts/room/active-subtracks-count"), timeout=5)
    assert count.json() == {"number": 260}
    # active-subtracks pages with skip/limit and no 250 cap
    page = requests.get(rest(ams, "/broadcasts/room/active-subtracks/0/300"), timeout=5).json()
    assert len(page) == 260 and {t["mainTrackStreamId"] for t in page} == {"room"}
    tail = requests.get(rest(ams, "/broadcasts/room/active-subtracks/255/10"), timeout=5).json()
    assert [t["streamId"] for t in tail] == [f"p{i}" for i in range(255, 260)]
    none = requests.get(rest(ams, "/broadcasts/empty/active-subtracks/0/0"), timeout=5)
    assert none.status_code == 200 and none.json() == []
    missing = requests.get(rest(ams, "/broadcasts/nope/active-subtracks/0/10"), timeout=5)
    assert missing.status_code == 404 and missing.json()["success"] is False
    # the plain list includes participant streams, 250 a page at most
    first = requests.get(rest(ams, "/broadcasts/list/0/250"), timeout=5).json()
    assert len(first) == 250 and sum(1 for b in first if b["mainTrackStreamId"]) == 248
    second = requests.get(rest(ams, "/broadcasts/list/250/250"), timeout=5).json()
    assert len(second) == 12


def test_list_offsets_shift_as_streams_come_and_go(ams: AmsDouble) -> None:
    create(ams, "r0")
    ams.join("r0", token("r0"), "alice")  # a participant stream between the rooms
    for room in ("r1", "r2", "r3"):
        create(ams, room)

    def page(offset: int) -> list[str]:
        got = requests.get(rest(ams, f"/broadcasts/list/{offset}/3"), timeout=5).json()
        return [b["streamId"] for b in got]

    assert page(0) == ["r0", "alice", "r1"]
    ams.leave("r0", "alice")  # gone between two page reads
    assert page(3) == ["r3"]  # "r2" moved to offset 2: no page shows it


def test_datastore_fault_answers_200_and_an_empty_list(ams: AmsDouble) -> None:
    create(ams, "room")
    ams.datastore_fault(1)
    r = requests.get(rest(ams, "/broadcasts/list/0/50"), timeout=5)
    assert r.status_code == 200 and r.json() == []
    assert [b["streamId"] for b in requests.get(rest(ams, "/broadcasts/list/0/50")).json()] == [
        "room"
    ]
    ams.datastore_fault(1, reads=("get",))  # MongoStore.get swallows it too: null → 404
    missing = requests.get(rest(ams, "/broadcasts/room"), timeout=5)
    assert missing.status_code == 404 and missing.content == b""
    assert requests.get(rest(ams, "/broadcasts/room"), timeout=5).status_code == 200


# --------------------------------------------------------------------------- stop semantics


def stop(ams: AmsDouble, stream_id: str, **params: str) -> dict[str, Any]:
    return requests.post(
        rest(ams, f"/broadcasts/{stream_id}/stop"), params=params, timeout=5
    ).json()


def test_enterprise_stop_stops_every_participant_by_default(
    ams: AmsDouble, receiver: Receiver
) -> None:
    ams.update_settings(listenerHookURL=receiver.url("/hook"))
    create(ams, "room")
    people = [ams.circle_join(link(ams, "room"), name=n) for n in ("A", "B")]
    assert stop(ams, "room", stopSubtracks="false")["success"] is True
    assert len(ams.connected("room")) == 2  # told not to, nobody is stopped
    late = ams.circle_join(link(ams, "room"), name="C")
    assert stop(ams, late.stream_id)["success"] is True  # one participant's own stream
    assert not late.publishing and len(ams.connected("room")) == 2
    assert stop(ams, "room")["success"] is True  # stopSubtracks defaults to true
    assert ams.connected("room") == [] and not any(p.publishing for p in people)
    count = requests.get(rest(ams, "/broadcasts/room/active-subtracks-count"), timeout=5)
    assert count.json() == {"number": 0}
    ams.wait_hooks()
    ended = {c.json["id"] for c in receiver.to("/hook") if c.json["action"] == "liveStreamEnded"}
    assert ended == {p.stream_id for p in [*people, late]}


def test_community_stop_ignores_stop_subtracks(clock: ManualClock, receiver: Receiver) -> None:
    with AmsDouble(stream_secret=SECRET, clock=clock, stop_semantics="community") as ams:
        ams.update_settings(listenerHookURL=receiver.url("/hook"))
        create(ams, "room")
        a, b = (ams.circle_join(link(ams, "room"), name=n) for n in ("A", "B"))
        result = stop(ams, "room", stopSubtracks="true")
        assert result["success"] is False  # the main track itself is never live
        assert sorted(ams.connected("room")) == sorted([a.stream_id, b.stream_id])
        # stopping a participant's own stream disconnects that participant only
        assert stop(ams, a.stream_id)["success"] is True
        assert not a.publishing and b.publishing and ams.connected("room") == [b.stream_id]
        ams.wait_hooks()
        actions = [(c.json["action"], c.json["id"]) for c in receiver.to("/hook")]
        assert ("liveStreamEnded", a.stream_id) in actions
        assert ("liveStreamEnded", b.stream_id) not in actions
        # DELETE: the records go, the person stays connected
        gone = requests.delete(rest(ams, "/broadcasts/room"), timeout=5).json()
        assert gone["success"] is True and "could not stopped" in gone["message"]
        assert ams.connected("room") == [b.stream_id] and b.publishing
        count = requests.get(rest(ams, "/broadcasts/room/active-subtracks-count"), timeout=5)
        assert count.status_code == 404


def test_community_edition_defaults_to_community_stop(clock: ManualClock) -> None:
    with AmsDouble(edition=COMMUNITY_EDITION, clock=clock) as ams:
        create(ams, "room")
        assert ams.join("room", None, "p1")
        assert stop(ams, "room")["success"] is False and ams.connected("room") == ["p1"]


def test_enterprise_delete_disconnects_and_says_so(ams: AmsDouble, receiver: Receiver) -> None:
    ams.update_settings(listenerHookURL=receiver.url("/hook"))
    create(ams, "room")
    person = ams.circle_join(link(ams, "room"), name="Ivy")
    gone = requests.delete(rest(ams, "/broadcasts/room"), timeout=5).json()
    assert gone == {
        "success": True,
        "message": "broadcast is deleted and stopped successfully",
        "dataId": None,
        "errorId": 0,
    }
    assert not person.publishing and ams.connected("room") == [] and ams.broadcasts == {}
    ams.wait_hooks()
    actions = sorted((c.json["action"], c.json["id"]) for c in receiver.to("/hook"))
    assert ("liveStreamEnded", person.stream_id) in actions
    assert ("liveStreamEnded", "room") in actions  # notifyLiveStreamEnded for the room
