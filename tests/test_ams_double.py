"""The AMS double must behave like ams.md says, since every other test trusts it.

These tests talk to it with plain ``requests`` (not the bot's client) so a bug in
the client cannot hide a bug in the double.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


def test_ip_filter_refuses_a_remote_bot_until_allowed(clock: ManualClock) -> None:
    with AmsDouble(ip_allowed=False, clock=clock) as ams:
        r = requests.get(rest(ams, "/version"), timeout=5)
        assert r.status_code == 403 and r.json()["message"] == MSG_NOT_ALLOWED_IP
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
        expired = jwt.encode({"exp": T0 - 1}, REST_SECRET, algorithm="HS256")
        for bad in (
            None,
            no_claims,  # no "Bearer"
            f"Bearer {expired}",
            f"Bearer {jwt.encode({}, 'wrong-secret-0123456789-0123456789-x', algorithm='HS256')}",
        ):
            r = call(bad)
            assert r.status_code == 403 and r.json()["message"] == MSG_INVALID_APP_JWT


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


class _Hook(BaseHTTPRequestHandler):
    status = 200
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(json.loads(body))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"seen": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ams-auth", handler
    server.shutdown()
    server.server_close()


def test_webhook_is_consulted_after_the_jwt(
    ams: AmsDouble, webhook: tuple[str, type[_Hook]]
) -> None:
    url, hook = webhook
    ams.update_settings(webhookAuthenticateURL=url)
    create(ams, "room", metaData="m")
    assert ams.check_join("room", token("room"), participant_id="p1")[0]
    sent = hook.seen[-1]
    assert set(sent) == {
        "appName",
        "name",
        "streamId",
        "mode",
        "token",
        "subscriberId",
        "subscriberCode",
        "metaData",
        "queryParams",
    }
    assert (
        sent["streamId"] == "room" and sent["mode"] == "publish" and sent["appName"] == "Conference"
    )
    assert sent["subscriberId"] == "p1" and sent["token"] == token("room")

    hook.status = 403
    assert not ams.check_join("room", token("room"))[0]
    calls = len(hook.seen)
    assert not ams.check_join("room", token("room", exp=T0 - 5))[0]
    assert len(hook.seen) == calls  # a bad JWT is refused before the webhook

    ams.update_settings(webhookAuthenticateURL="http://127.0.0.1:9/unreachable")
    assert not ams.check_join("room", token("room"))[0]


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
