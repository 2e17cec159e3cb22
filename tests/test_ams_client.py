"""The bot's AMS client against the AMS double over real loopback HTTP.

Every typed error, the retry policy (counted on the double's request log), the
careful create, REST JWT, and the management login/settings rules.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from bot.ams.client import (
    AmsBadRestJwt,
    AmsClient,
    AmsError,
    AmsIdTaken,
    AmsInvalidId,
    AmsIpFiltered,
    AmsLoginFailed,
    AmsManagement,
    AmsNotFound,
    AmsRejected,
    AmsRestRefused,
    AmsTimeout,
    AmsUnavailable,
    is_enterprise,
)
from bot.sim.ams import (
    COMMUNITY_EDITION,
    DEFAULT_ADMIN_EMAIL,
    DEFAULT_ADMIN_PASSWORD,
    REMOTE_BOT_IP,
    AmsDouble,
    ManualClock,
)
from tests.conftest import wait_for

SECRET = "stream-secret-0123456789-0123456789-abcdef"
REST_SECRET = "rest-secret-0123456789-0123456789-abcdefgh"
SERVER_SECRET = "server-secret-0123456789-0123456789-abcdef"
APP = "Conference"
FAST = {"timeout": (0.5, 0.3), "backoff": 0.01}
START, END = 1_700_000_000, 1_700_003_600
META = '{"meetbot":1,"team":"T1"}'


@pytest.fixture
def ams() -> Iterator[AmsDouble]:
    with AmsDouble(stream_secret=SECRET) as double:
        yield double


@pytest.fixture
def client(ams: AmsDouble) -> Iterator[AmsClient]:
    with AmsClient(ams.url, APP, retries=2, **FAST) as c:
        yield c


def path(ams: AmsDouble, suffix: str) -> str:
    return f"{ams.rest_base}{suffix}"


def create(client: AmsClient, room: str = "room-1") -> dict[str, Any]:
    return client.create_room(room, "Standup", START, END, metadata=META)


def join_token(room: str) -> str:
    return jwt.encode({"streamId": room, "type": "publish"}, SECRET, algorithm="HS256")


# --------------------------------------------------------------------------- happy paths


def test_room_lifecycle(client: AmsClient, ams: AmsDouble) -> None:
    room = create(client)
    assert room["streamId"] == "room-1" and room["status"] == "created"
    assert ams.broadcasts["room-1"]["metaData"] == META
    assert client.get_room("room-1")["name"] == "Standup"
    assert client.participant_count("room-1") == 0

    assert ams.join("room-1", join_token("room-1"), "alice")
    assert ams.join("room-1", join_token("room-1"), "bob")
    assert client.participant_count("room-1") == 2
    assert client.stop_room("room-1") is True
    assert client.participant_count("room-1") == 0
    assert client.delete_room("room-1") is True
    assert client.delete_room("room-1") is False  # AMS: 200 + success false
    assert client.stop_room("room-1") is False
    body = ams.requests[0].json
    assert body == {
        "streamId": "room-1",
        "name": "Standup",
        "plannedStartDate": START,
        "plannedEndDate": END,
        "metaData": META,
    }
    stop = [r for r in ams.requests if r.path.endswith("/stop")][0]
    assert stop.query == {"stopSubtracks": ["true"]}


def test_mapping_metadata_is_sent_as_a_json_string(client: AmsClient, ams: AmsDouble) -> None:
    client.create_room("r", "t", START, END, metadata={"b": 2, "a": 1})
    assert ams.broadcasts["r"]["metaData"] == '{"a":1,"b":2}'


def test_list_and_iter_rooms_page_and_skip_participants(ams: AmsDouble) -> None:
    with AmsClient(ams.url, APP, **FAST) as client:
        for i in range(255):
            client.create_room(f"r{i:03d}", "t", START, END)
        assert ams.join("r000", join_token("r000"), "participant-track")
        assert len(client.list_rooms()) == 250
        assert len(client.list_rooms(offset=250, size=1000)) == 6  # includes the subtrack
        ids = [b["streamId"] for b in client.iter_rooms()]
    assert ids == [f"r{i:03d}" for i in range(255)]
    assert ams.count("GET", path(ams, "/broadcasts/list/0/250")) == 2
    assert ams.count("GET", path(ams, "/broadcasts/list/250/250")) == 2


def test_version_and_edition(ams: AmsDouble, client: AmsClient) -> None:
    assert is_enterprise(client.version())
    with AmsDouble(edition=COMMUNITY_EDITION) as ce, AmsClient(ce.url, APP, **FAST) as c:
        assert not is_enterprise(c.version())


# --------------------------------------------------------------------------- typed errors


def test_not_found_is_typed_and_not_retried(client: AmsClient, ams: AmsDouble) -> None:
    with pytest.raises(AmsNotFound) as info:
        client.get_room("missing")
    assert info.value.user_message and info.value.user_message != str(info.value)
    assert ams.count("GET", path(ams, "/broadcasts/missing")) == 1
    with pytest.raises(AmsNotFound):
        client.participant_count("missing")


def test_id_taken_and_invalid_id(client: AmsClient, ams: AmsDouble) -> None:
    create(client, "dup")
    with pytest.raises(AmsIdTaken):
        create(client, "dup")
    with pytest.raises(AmsInvalidId):
        create(client, "not valid!")
    assert ams.count("POST", path(ams, "/broadcasts/create")) == 3  # 4xx: no retry, no probe
    assert ams.count("GET", path(ams, "/broadcasts/")) == 0
    with pytest.raises(AmsInvalidId):
        client.get_room("../version")  # never sent: it would change the URL path
    assert len(ams.requests) == 3


def test_ip_filter_error_tells_the_operator_what_to_do() -> None:
    with AmsDouble(ip_allowed=False) as ams, AmsClient(ams.url, APP, **FAST) as client:
        with pytest.raises(AmsIpFiltered) as info:
            client.version()
        assert "remoteAllowedCIDR" in str(info.value) and "JWT" in str(info.value)
        assert "remoteAllowedCIDR" not in info.value.user_message
        assert ams.count("GET", path(ams, "/version")) == 1
        ams.update_settings(remoteAllowedCIDR=f"127.0.0.1,{REMOTE_BOT_IP}")
        assert client.version()["versionName"]


def test_rest_jwt_is_sent_and_checked() -> None:
    with AmsDouble(rest_jwt_secret=REST_SECRET) as ams:
        with AmsClient(ams.url, APP, **FAST) as anonymous, pytest.raises(AmsBadRestJwt) as info:
            anonymous.version()
        assert "AMS_REST_JWT_SECRET" in str(info.value)
        wrong = AmsClient(ams.url, APP, rest_jwt_secret="x" * 40, **FAST)
        with wrong, pytest.raises(AmsBadRestJwt):
            wrong.get_room("r")
        with AmsClient(ams.url, APP, rest_jwt_secret=REST_SECRET, **FAST) as client:
            create(client)
            assert client.get_room("room-1")["streamId"] == "room-1"
        header = ams.requests[-1].header("Authorization")
        assert header is not None and header.startswith("Bearer ")
        claims = jwt.decode(header.removeprefix("Bearer "), REST_SECRET, algorithms=["HS256"])
        assert set(claims) == {"exp"}  # short-lived, and no iat for AMS's zero leeway
        assert 0 < claims["exp"] - time.time() <= 300


def test_403_html_pages_name_the_filter_that_refused() -> None:
    """AMS's REST filters answer with Tomcat's HTML page; the message is after the
    page's title and style sheet, and the JWT filter runs before the IP filter."""
    with AmsDouble(rest_jwt_secret=REST_SECRET, ip_allowed=False) as ams:
        # The JWT is right, the address is not: only the IP filter refused.
        with AmsClient(ams.url, APP, rest_jwt_secret=REST_SECRET, **FAST) as client:
            with pytest.raises(AmsIpFiltered) as info:
                client.list_rooms()
            text = str(info.value)
            assert "(Not allowed IP)" in text and "remoteAllowedCIDR" in text
            assert "REST JWT was accepted" in text and "<" not in text
        # Both would refuse: the JWT filter answers first, and says the IP filter is next.
        with AmsClient(ams.url, APP, rest_jwt_secret="x" * 40, **FAST) as client:
            with pytest.raises(AmsBadRestJwt) as jwt_info:
                client.list_rooms()
            text = str(jwt_info.value)
            assert "(Invalid App JWT Token)" in text and "AMS_REST_JWT_SECRET" in text
            assert "IP filter (it runs second)" in text and "<" not in text


def test_a_403_that_names_no_filter_names_both_in_order() -> None:
    with AmsDouble() as ams, AmsClient(ams.url, APP, retries=0, **FAST) as client:
        ams.fail_next(1, status=403)  # Tomcat's page without a Message (e.g. a proxy)
        with pytest.raises(AmsRestRefused) as info:
            client.get_room("r")
        assert type(info.value) is AmsRestRefused
        text = str(info.value)
        assert text.index("REST JWT") < text.index("IP filter") and "<" not in text


def test_stop_stream_and_active_subtracks(client: AmsClient, ams: AmsDouble) -> None:
    create(client, "room-1")
    token = jwt.encode(
        {"streamId": "room-1", "type": "publish", "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
    )
    assert ams.join("room-1", token, "alice_0123456789")
    assert ams.join("room-1", token, "bob_0123456789")
    live = client.active_subtracks("room-1", 0, 1000)  # AMS does not cap this page at 250
    assert sorted(b["streamId"] for b in live) == ["alice_0123456789", "bob_0123456789"]
    assert ams.count("GET", path(ams, "/broadcasts/room-1/active-subtracks/0/1000")) == 1
    assert client.stop_stream("alice_0123456789") is True
    (stop,) = [r for r in ams.requests if r.path.endswith("/alice_0123456789/stop")]
    assert stop.query == {"stopSubtracks": ["false"]}  # never everybody in a room
    assert ams.connected("room-1") == ["bob_0123456789"]
    assert client.participant_count("room-1") == 1
    assert [b["streamId"] for b in client.active_subtracks("room-1")] == ["bob_0123456789"]
    assert client.stop_stream("nobody-here") is False
    with pytest.raises(AmsNotFound):
        client.active_subtracks("no-such-room")


def test_timeout_with_a_short_read_timeout(ams: AmsDouble) -> None:
    ams.hang_next(1, 2.0, path_regex="/broadcasts/slow$")
    with AmsClient(ams.url, APP, retries=0, **FAST) as client:
        started = time.monotonic()
        with pytest.raises(AmsTimeout) as info:
            client.get_room("slow")
    assert time.monotonic() - started < 1.0
    assert "timeout" in str(info.value) and "not answering" in info.value.user_message
    assert info.value.retryable


def test_5xx_is_retried_then_reported(client: AmsClient, ams: AmsDouble) -> None:
    ams.fail_next(10, status=503)
    with pytest.raises(AmsUnavailable) as info:
        client.get_room("r")
    assert info.value.status == 503
    assert ams.count("GET", path(ams, "/broadcasts/r")) == 3  # 1 + retries=2


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        with AmsClient(f"http://127.0.0.1:{port}", APP, retries=1, **FAST) as client:
            with pytest.raises(AmsUnavailable):
                client.version()
            with pytest.raises(AmsUnavailable):  # nothing was sent: create may retry
                create(client)


@pytest.mark.parametrize(
    ("fault", "method", "call", "expected"),
    [
        ("fail", "GET", lambda c: c.get_room("room-1")["streamId"], "room-1"),
        ("reset", "GET", lambda c: c.participant_count("room-1"), 0),
        ("hang", "GET", lambda c: c.get_room("room-1")["status"], "created"),
        ("fail", "DELETE", lambda c: c.delete_room("room-1"), True),
        ("reset", "POST", lambda c: c.stop_room("room-1"), True),
    ],
)
def test_idempotent_calls_retry_and_succeed(
    client: AmsClient, ams: AmsDouble, fault: str, method: str, call: Any, expected: Any
) -> None:
    create(client)
    regex = r"/broadcasts/room-1"
    if fault == "fail":
        ams.fail_next(2, status=502, path_regex=regex)
    elif fault == "reset":
        ams.reset_next(2, path_regex=regex)
    else:
        ams.hang_next(2, 0.5, path_regex=regex)
    assert call(client) == expected
    assert ams.count(method, path(ams, "/broadcasts/room-1")) == 3


def test_delete_whose_answer_was_lost_reports_already_gone(
    client: AmsClient, ams: AmsDouble
) -> None:
    """AMS deleted on the first try but the answer was lost: the retry finds nothing."""
    create(client)
    ams.hang_next(1, 1.0, path_regex="/broadcasts/room-1$", after_processing=True)
    assert client.delete_room("room-1") is False
    assert "room-1" not in ams.broadcasts
    assert ams.count("DELETE", path(ams, "/broadcasts/room-1")) == 2


def test_reset_exhausts_retries(client: AmsClient, ams: AmsDouble) -> None:
    ams.reset_next(5)
    with pytest.raises(AmsUnavailable) as info:
        client.delete_room("room-1")
    assert "unavailable" in info.value.user_message
    assert ams.count("DELETE", path(ams, "/broadcasts/room-1")) == 3


# --------------------------------------------------------------------------- careful create


def test_create_answer_lost_but_room_made_is_found_by_a_probe(
    client: AmsClient, ams: AmsDouble
) -> None:
    ams.hang_next(1, 1.0, path_regex="/create$", after_processing=True)
    room = create(client)
    assert room["streamId"] == "room-1" and room["metaData"] == META
    assert ams.count("POST", path(ams, "/broadcasts/create")) == 1  # never re-POSTed
    assert ams.count("GET", path(ams, "/broadcasts/room-1")) == 1


def test_create_reset_after_processing_is_found_by_a_probe(
    client: AmsClient, ams: AmsDouble
) -> None:
    ams.reset_next(1, path_regex="/create$", after_processing=True)
    assert create(client)["streamId"] == "room-1"
    assert ams.count("POST", path(ams, "/broadcasts/create")) == 1


def test_create_timeout_without_room_raises_and_never_reposts(
    client: AmsClient, ams: AmsDouble
) -> None:
    ams.hang_next(1, 0.6, path_regex="/create$")  # slow AMS: creates after we gave up
    with pytest.raises(AmsTimeout):
        create(client)
    assert ams.count("POST", path(ams, "/broadcasts/create")) == 1
    assert ams.count("GET", path(ams, "/broadcasts/room-1")) == 1
    # The late create lands anyway: the caller must clean up (bot/rooms/service.py deletes it).
    wait_for(lambda: "room-1" in ams.broadcasts, timeout=3)


def test_create_5xx_probes_then_reports(client: AmsClient, ams: AmsDouble) -> None:
    ams.fail_next(1, status=500, path_regex="/create$")
    with pytest.raises(AmsUnavailable):
        create(client)
    assert ams.count("POST", path(ams, "/broadcasts/create")) == 1
    assert ams.count("GET", path(ams, "/broadcasts/room-1")) == 1


def test_create_probe_ignores_a_room_that_is_not_ours(client: AmsClient, ams: AmsDouble) -> None:
    assert ams.join("room-1", join_token("room-1"), "early-bird")  # a zombi room
    ams.hang_next(1, 0.5, path_regex="/create$")
    with pytest.raises(AmsTimeout):
        create(client)
    assert ams.broadcasts["room-1"]["zombi"] is True


# --------------------------------------------------------------------------- observer, logs


def test_observer_sees_every_call(ams: AmsDouble) -> None:
    seen: list[tuple[str, str, float]] = []
    with AmsClient(ams.url, APP, observer=lambda *a: seen.append(a), **FAST) as client:
        create(client)
        with pytest.raises(AmsNotFound):
            client.get_room("nope")
    assert [(op, outcome) for op, outcome, _ in seen] == [
        ("create_room", "ok"),
        ("get_room", "not_found"),
    ]
    assert all(seconds >= 0 for *_, seconds in seen)


def test_logs_never_carry_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with AmsDouble(stream_secret=SECRET, rest_jwt_secret=REST_SECRET) as ams:
        with AmsClient(ams.url, APP, rest_jwt_secret=REST_SECRET, **FAST) as client:
            create(client)
            ams.fail_next(1)
            client.get_room("room-1")
        with AmsManagement(
            ams.url, email=DEFAULT_ADMIN_EMAIL, password=DEFAULT_ADMIN_PASSWORD, **FAST
        ) as mgmt:
            mgmt.patch_app_settings(APP, {"hlsListSize": "5"})
        bearer = ams.requests[1].header("Authorization") or ""
    text = caplog.text
    assert "GET /broadcasts/room-1" in text
    for secret in (SECRET, REST_SECRET, DEFAULT_ADMIN_PASSWORD, bearer.split()[-1], "Bearer"):
        assert secret not in text


# --------------------------------------------------------------------------- management


@pytest.fixture
def mgmt(ams: AmsDouble) -> Iterator[AmsManagement]:
    with AmsManagement(
        ams.url, email=DEFAULT_ADMIN_EMAIL, password=DEFAULT_ADMIN_PASSWORD, **FAST
    ) as m:
        yield m


def test_settings_round_trip_keeps_every_other_field(mgmt: AmsManagement, ams: AmsDouble) -> None:
    before = mgmt.get_app_settings(APP)
    assert before["jwtStreamSecretKey"] == SECRET
    rotated = "rotated-secret-0123456789-0123456789-xyz"
    old_token = join_token("room")
    mgmt.patch_app_settings(APP, {"jwtStreamSecretKey": rotated})
    after = mgmt.get_app_settings(APP)
    assert after == dict(before, jwtStreamSecretKey=rotated)
    # live: the old token is dead, a new one works
    assert not ams.check_join("room", old_token)[0]
    new_token = jwt.encode({"streamId": "room", "type": "publish"}, rotated, algorithm="HS256")
    assert ams.check_join("room", new_token)[0]
    assert ams.count("POST", "/rest/v2/users/authenticate") == 1  # one login per session


def test_partial_settings_are_refused_locally_and_reset_on_ams(
    mgmt: AmsManagement, ams: AmsDouble
) -> None:
    current = mgmt.get_app_settings(APP)
    partial = {k: v for k, v in current.items() if k != "publishJwtControlEnabled"}
    with pytest.raises(ValueError, match="publishJwtControlEnabled"):
        mgmt.update_app_settings(APP, partial)
    assert ams.count("POST", "/rest/v2/applications/settings/") == 0
    # what AMS does with a partial object: the omitted field goes back to its default
    mgmt.update_app_settings(APP, partial, allow_partial=True)
    after = mgmt.get_app_settings(APP)
    assert after["publishJwtControlEnabled"] is False
    assert after == dict(current, publishJwtControlEnabled=False)


def test_two_token_schemes_are_rejected(mgmt: AmsManagement, ams: AmsDouble) -> None:
    current = mgmt.get_app_settings(APP)
    with pytest.raises(AmsRejected) as info:
        mgmt.update_app_settings(APP, dict(current, publishTokenControlEnabled=True))
    assert "publish" in str(info.value)
    assert mgmt.get_app_settings(APP) == current


def test_failed_login_is_never_retried(ams: AmsDouble) -> None:
    with AmsManagement(ams.url, email=DEFAULT_ADMIN_EMAIL, password="wrong", **FAST) as bad:
        with pytest.raises(AmsLoginFailed) as info:
            bad.get_app_settings(APP)
        assert "300 s" in str(info.value) and "wrong" not in str(info.value)
        for _ in range(3):  # e.g. a scheduler trying again and again
            with pytest.raises(AmsLoginFailed):
                bad.get_app_settings(APP)
    assert ams.count("POST", "/rest/v2/users/authenticate") == 1
    assert not ams.is_locked(DEFAULT_ADMIN_EMAIL)


def test_lockout_after_three_failures_blocks_the_right_password_too() -> None:
    clock = ManualClock()
    with AmsDouble(stream_secret=SECRET, clock=clock) as ams:
        for _ in range(3):
            with AmsManagement(ams.url, email=DEFAULT_ADMIN_EMAIL, password="nope", **FAST) as m:
                with pytest.raises(AmsLoginFailed):
                    m.login()
        good = AmsManagement(
            ams.url, email=DEFAULT_ADMIN_EMAIL, password=DEFAULT_ADMIN_PASSWORD, **FAST
        )
        with pytest.raises(AmsLoginFailed) as info:
            good.get_app_settings(APP)
        assert "blocked" in str(info.value)
        clock.advance(301)
        good.reset_login()
        assert good.get_app_settings(APP)["jwtStreamSecretKey"] == SECRET
        good.close()


def test_expired_session_triggers_one_relogin(mgmt: AmsManagement, ams: AmsDouble) -> None:
    mgmt.get_app_settings(APP)
    ams.expire_sessions()
    assert mgmt.get_app_settings(APP)["jwtStreamSecretKey"] == SECRET
    assert ams.count("POST", "/rest/v2/users/authenticate") == 2
    assert ams.count("GET", "/rest/v2/applications/settings/") == 3


def test_server_jwt_uses_raw_proxy_authorization() -> None:
    with AmsDouble(stream_secret=SECRET, server_jwt_secret=SERVER_SECRET) as ams:
        with AmsManagement(ams.url, server_jwt_secret=SERVER_SECRET, **FAST) as m:
            assert m.get_app_settings(APP)["jwtStreamSecretKey"] == SECRET
        header = ams.requests[-1].header("ProxyAuthorization") or ""
        assert not header.startswith("Bearer")
        jwt.decode(header, SERVER_SECRET, algorithms=["HS256"])
        with AmsManagement(ams.url, server_jwt_secret="w" * 40, **FAST) as wrong:
            with pytest.raises(AmsLoginFailed):
                wrong.get_app_settings(APP)
        assert ams.count("POST", "/rest/v2/users/authenticate") == 0


def test_management_errors_are_ams_errors(mgmt: AmsManagement, ams: AmsDouble) -> None:
    with pytest.raises(AmsNotFound):
        mgmt.get_app_settings("NoSuchApp")
    ams.fail_next(10, status=500, path_regex="/applications/")
    with pytest.raises(AmsUnavailable):
        mgmt.get_app_settings(APP)
    with pytest.raises(ValueError):
        AmsManagement(ams.url)
    assert issubclass(AmsLoginFailed, AmsError) and issubclass(AmsRejected, AmsError)
