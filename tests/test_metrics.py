"""Metrics, readiness and correlation ids: over a real `meetbot serve`, and unit-level."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import Metrics
from bot.store import Store
from bot.web.health import Readiness
from tests.conftest import ALICE, BOB, CAROL, SIGNING_SECRET, TEAM, wait_for
from tests.helpers import settled


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from ``GET /metrics``."""
    resp = requests.get(url + "/metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def dms_with_links(slack, user: str) -> bool:
    return any("token=" in json.dumps(m.get("blocks")) for m in slack.dms_to(user))


def meet_lines(log: str, before: int) -> list[dict]:
    """JSON log lines after line ``before``, minus the scheduler's own units of work
    (its start-up sweep lists AMS rooms), which run beside the /meet with their own ids."""
    lines = [json.loads(x) for x in log.splitlines()[before:] if x.startswith("{")]
    return [
        x
        for x in lines
        if not x["logger"].startswith(("apscheduler", "meetbot.scheduler", "meetbot.reconcile"))
        and "/broadcasts/list" not in x["msg"]
    ]


def test_meet_shows_up_in_metrics(bot, sender, slack):
    r = sender.command(f"standup <@{BOB}|bob> <@{CAROL}|carol>", user_id=ALICE)
    assert r.status_code == 200
    wait_for(lambda: all(dms_with_links(slack, u) for u in (ALICE, BOB, CAROL)))

    def sent_three():
        m = scrape(bot.url)
        return (
            m
            if value(m, "meetbot_slack_sends_total", kind="dm_link", outcome="sent") == 3
            else None
        )

    m = wait_for(sent_three)
    assert value(m, "meetbot_room_events_total", event="created") == 1
    assert value(m, "meetbot_room_events_total", event="revoked") == 0
    assert value(m, "meetbot_open_rooms", state="active") == 1
    assert value(m, "meetbot_ams_calls_total", op="create_room", outcome="ok") == 1
    assert value(m, "meetbot_ams_call_seconds_count", op="create_room") == 1
    assert value(m, "meetbot_slack_sends_total", kind="dm_link", outcome="failed") == 0
    assert value(m, "meetbot_database_up") == 1
    assert value(m, "meetbot_scheduler_lag_seconds") is not None


def test_readyz_follows_the_database_and_ams(bot, ams):
    ok = requests.get(bot.url + "/readyz", timeout=5)
    assert ok.status_code == 200 and ok.json() == {"ready": True}
    ams_url = ams.url
    ams.stop()
    # The last answer is reused for a second (READY_CACHE_S): wait for the next check.
    (down,) = wait_for(
        lambda: [r for r in [requests.get(bot.url + "/readyz", timeout=10)] if r.status_code == 503]
    )
    # It names the failing part, and nothing about it: no URL, host, port or exception.
    assert down.json() == {"ready": False, "reasons": {"ams": "error"}}
    port = ams_url.rsplit(":", 1)[1]
    for internal in (ams_url, "127.0.0.1", port, "Conference", "Connection", "refused"):
        assert internal not in down.text, internal
    assert "readyz: ams failed: unavailable" in bot.log()  # the operator's detail, in the log
    assert requests.get(bot.url + "/healthz", timeout=5).status_code == 200  # liveness unchanged


def test_readyz_cannot_be_used_to_hammer_ams(bot, ams):
    """Concurrent probes share one check, and its answer is reused for READY_CACHE_S:
    AMS sees at most one version call per window however many probes arrive."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from bot.web.health import READY_CACHE_S

    ams.latency = 0.3  # a check takes a while: bursts arrive during it
    ams.clear_requests()

    def version_calls() -> list[float]:
        return [r.at for r in ams.requests if r.method == "GET" and r.path.endswith("/version")]

    local = threading.local()  # one keep-alive connection per prober

    def probe(_: int) -> requests.Response:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session.get(bot.url + "/readyz", timeout=10)

    sent = []
    with ThreadPoolExecutor(16) as pool:
        while len(version_calls()) < 2:  # bursts until two windows have passed
            sent.extend(pool.map(probe, range(32)))
    assert {(a.status_code, a.text) for a in sent} == {(200, '{"ready": true}')}
    calls = version_calls()
    assert len(calls) <= 3 and len(sent) >= 64, (len(calls), len(sent))
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(gap >= READY_CACHE_S for gap in gaps), gaps


def test_every_line_of_one_meet_carries_its_cid(start_bot, slack, ams):
    """The request (Bolt), the work after the ack (users.info, AMS, the room) and the
    DMs the outbox sends for it all log under the request's correlation id."""
    from bot.sim.slack import SlackSender

    bot = start_bot(MEETBOT_LOG_FORMAT="json", MEETBOT_LOG_LEVEL="DEBUG")
    sender = SlackSender(bot.url + "/slack/events", SIGNING_SECRET, team_id=TEAM, double=slack)
    before = len(bot.log().splitlines())
    r = sender.command(f"retro <@{BOB}|bob>", user_id=ALICE)
    slack.wait_for_responses(r.response_key, 1)  # the fan-out report: the last step
    room_id = next(iter(ams.broadcasts))
    wait_for(lambda: f"room {room_id} opened" in bot.log())
    settled(bot)  # the DMs it owed are sent, and logged
    lines = meet_lines(bot.log(), before)
    # Other units of work (the scheduler's sweeps) run beside it under their own ids;
    # nothing runs under none, and everything recognisably part of the /meet is under one.
    assert [x for x in lines if x["cid"] is None] == []
    marks = (room_id, "users.info", "chat.postMessage", "/broadcasts/create", "/response/")
    ours = [
        x
        for x in lines
        if x["logger"].startswith(("slack_bolt", "meetbot.rooms", "meetbot.outbox"))
        or any(m in x["msg"] for m in marks)
    ]
    cids = {x["cid"] for x in ours}
    assert len(cids) == 1, [x for x in ours if x["cid"] != ours[0]["cid"]]
    assert re.fullmatch(r"[0-9a-f]{12}", ours[0]["cid"])
    loggers = {x["logger"] for x in ours}
    assert {
        "slack_bolt.App",
        "meetbot.rooms",
        "meetbot.ams",
        "slack_sdk.web.base_client",
    } <= loggers
    assert any("chat.postMessage" in x["msg"] for x in ours)  # the outbox's DMs
    assert any("users.info" in x["msg"] for x in ours)  # the look-ups after the ack


def test_context_pool_carries_the_cid():
    from concurrent.futures import ThreadPoolExecutor

    from bot.logs import ContextThreadPoolExecutor, correlation_id, with_correlation

    with ContextThreadPoolExecutor(2) as ours, ThreadPoolExecutor(2) as plain:
        with with_correlation("feedbeef0001"):
            assert list(ours.map(lambda _: correlation_id.get(), range(3))) == ["feedbeef0001"] * 3
            assert plain.submit(correlation_id.get).result() is None


def test_text_logs_carry_the_cid():
    import io
    import logging

    from bot.logs import CorrelationFilter, with_correlation

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(logging.Formatter("%(name)s [%(cid)s]: %(message)s"))
    log = logging.getLogger("meetbot.test.cid")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("outside")
        with with_correlation("abc123") as cid:
            assert cid == "abc123"
            log.warning("inside")
            with with_correlation() as inner:
                log.warning("nested")
            log.warning("back")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("[-]: outside")
    assert lines[1].endswith("[abc123]: inside")
    assert lines[2].endswith(f"[{inner}]: nested") and inner != "abc123"
    assert lines[3].endswith("[abc123]: back")


# -- unit level: the collector over a database --------------------------------


@pytest.fixture
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path / 'm.db'}")
    s.migrate()
    yield s
    s.dispose()


def insert(store: Store, sql: str, **params) -> None:
    with store.engine.begin() as c:
        c.execute(sa.text(sql), params)


def room(store: Store, room_id: str, state: str, expires_at: int, next_attempt_at: int = 0):
    insert(
        store,
        "INSERT INTO rooms (id, team_id, owner_id, channel_id, topic, state, created_at,"
        " expires_at, attempts, next_attempt_at) VALUES (:id, 'T', 'U', 'C', 't', :state,"
        " 0, :exp, 0, :nxt)",
        id=room_id,
        state=state,
        exp=expires_at,
        nxt=next_attempt_at,
    )


def outbox(store: Store, created_at: int, not_before: int = 0, state: str = "pending"):
    insert(
        store,
        "INSERT INTO outbox (team_id, kind, channel, payload, state, attempts, not_before,"
        " created_at) VALUES ('T', 'dm_link', 'U', '{}', :state, 0, :nb, :ca)",
        state=state,
        nb=not_before,
        ca=created_at,
    )


def samples(metrics: Metrics) -> dict:
    text = metrics.render()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_scheduler_lag_is_the_oldest_due_work(store):
    now = 1_000_000
    m = Metrics(store, clock=lambda: now)
    assert value(samples(m), "meetbot_scheduler_lag_seconds") == 0
    assert value(samples(m), "meetbot_outbox_oldest_age_seconds") == 0
    room(store, "future", "active", now + 600)
    room(store, "done", "revoked", now - 5000)
    outbox(store, created_at=now - 3, not_before=0)  # queued "for now" 3 s ago
    outbox(store, created_at=now - 100, not_before=now + 50)  # a retry, not due yet
    outbox(store, created_at=now - 9000, state="done")
    assert value(samples(m), "meetbot_scheduler_lag_seconds") == 3
    assert value(samples(m), "meetbot_outbox_oldest_age_seconds") == 3
    room(store, "overdue", "active", now - 40)
    room(store, "backing-off", "active", now - 4000, next_attempt_at=now + 30)
    s = samples(m)
    assert value(s, "meetbot_scheduler_lag_seconds") == 40
    # The outbox's own age: an overdue room is not an owed message.
    assert value(s, "meetbot_outbox_oldest_age_seconds") == 3
    assert value(s, "meetbot_open_rooms", state="active") == 3
    assert value(s, "meetbot_outbox_pending") == 2


def test_last_rotation_time(store):
    m = Metrics(store)
    assert value(samples(m), "meetbot_stream_secret_last_rotation_timestamp_seconds") is None
    for version, activated in ((1, 1_700_000_000), (2, 1_700_086_400)):
        insert(
            store,
            "INSERT INTO stream_secrets (version, ciphertext, state, created_at, activated_at)"
            " VALUES (:v, 'x', 'current', 0, :a)",
            v=version,
            a=activated,
        )
    s = samples(m)
    assert value(s, "meetbot_stream_secret_last_rotation_timestamp_seconds") == 1_700_086_400


def test_database_trouble_does_not_break_the_scrape(tmp_path):
    unmigrated = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    m = Metrics(unmigrated)
    m.room_event("created")
    m.outbox_result("dm_link", "ratelimited")
    s = samples(m)
    assert value(s, "meetbot_database_up") == 0
    assert value(s, "meetbot_room_events_total", event="created") == 1
    assert value(s, "meetbot_slack_sends_total", kind="dm_link", outcome="ratelimited") == 1
    unmigrated.dispose()


def test_two_services_in_one_process_do_not_collide(store):
    Metrics(store)
    Metrics(store)  # own registries: no "Duplicated timeseries" error


def test_readiness_deadline(store):
    def slow_ams() -> None:
        time.sleep(3)

    ready = Readiness(store, slow_ams, timeout=0.2)
    started = time.monotonic()
    ok, body = ready.check()
    assert time.monotonic() - started < 1
    assert not ok and body == {"ready": False, "reasons": {"ams": "timeout"}}
    ready.close()


def test_socket_mode_requests_get_a_cid_too(tmp_path, ams, slack):
    """Socket Mode has no WSGI request to wrap: Bolt's middleware gives each its id."""
    from slack_bolt.request import BoltRequest

    from bot.config import load_settings
    from bot.logs import correlation_id
    from bot.services import Services

    settings = load_settings(
        {
            "SLACK_BOT_TOKEN": "xoxb-test-token",
            "SLACK_APP_TOKEN": "xapp-1-test",
            "SLACK_API_URL": slack.api_url,
            "AMS_URL": ams.url,
            "AMS_JWT_SECRET": "s" * 40,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}",
        }
    )
    seen: list[str | None] = []

    def register(app, services):
        @app.command("/meet")
        def meet(ack):
            seen.append(correlation_id.get())
            ack()

    services = Services(settings)
    services.store.migrate()
    try:
        app = services.bolt_app(listeners=[register])
        body = {"command": "/meet", "text": "", "team_id": TEAM, "user_id": ALICE}
        for _ in range(2):
            resp = app.dispatch(BoltRequest(body=dict(body), mode="socket_mode"))
            assert resp.status == 200
    finally:
        services.stop()
    assert len(seen) == 2 and all(seen) and seen[0] != seen[1]
    assert correlation_id.get() is None  # nothing leaks out of the request


def test_a_room_that_fails_to_open_is_counted(bot, sender, ams):
    ams.fail_next(1, status=500, path_regex=r"/broadcasts/create$")
    r = sender.command("doomed", user_id=ALICE)
    assert r.status_code == 200

    def failed_once():
        m = scrape(bot.url)
        return m if value(m, "meetbot_room_events_total", event="failed") == 1 else None

    m = wait_for(failed_once)
    assert value(m, "meetbot_room_events_total", event="created") == 0
    assert value(m, "meetbot_open_rooms", state="creating") == 0
