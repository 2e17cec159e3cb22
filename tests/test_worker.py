"""`meetbot serve` as two processes: the front answers Slack, the worker does the work.

Calls cross by name (bot/worker.py); these check that they arrive as the other
process's objects, that the two processes live and die together, and that a
stop finishes what was handed over.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import signal
import threading
from pathlib import Path

import pytest
import requests

from bot.rooms import OpenRequest
from bot.worker import FRONT_QUIET_S, MAX_DEFER_S, FrontActivity, HandOverError, dumps, loads
from tests.conftest import ALICE, BOB, sender_for, wait_for
from tests.helpers import CREATE, db_rows, dm_links, rooms_on_ams


class Named:
    def __init__(self, label: str) -> None:
        self.label = label
        self.heard: list[str] = []

    def notice(self, team: str, user: str, text: str) -> None:
        self.heard.append(f"{self.label}:{team}:{user}:{text}")


def module_level(named: Named, value: int) -> str:
    return f"{named.label}:{value}"


def test_named_objects_arrive_as_the_other_process_s():
    front = {"services": Named("front"), "home_tab": Named("front-tab")}
    worker = {"services": Named("worker"), "home_tab": Named("worker-tab")}
    req = OpenRequest(
        team_id="T1",
        user_id=ALICE,
        channel_id=ALICE,
        topic="standup",
        invitees=(BOB,),
        notify=functools.partial(front["home_tab"].notice, "T1", ALICE),
    )
    message = ("call", module_level, (front["services"], 3), {"req": req})
    kind, fn, args, kwargs = loads(dumps(message, front), worker)
    assert kind == "call" and fn is module_level
    assert args[0] is worker["services"]
    assert fn(*args) == "worker:3"
    arrived = kwargs["req"]
    assert arrived == req  # the plain values, as they were
    arrived.notify("opened")
    assert worker["home_tab"].heard == [f"worker-tab:T1:{ALICE}:opened"]
    assert front["home_tab"].heard == []
    # A bound method of a named object is that object's method over there.
    method = loads(dumps(front["home_tab"].notice, front), worker)
    assert method.__self__ is worker["home_tab"]


def test_what_cannot_travel_by_name_is_refused_at_the_front():
    with pytest.raises(HandOverError):
        dumps(("call", lambda: None, (), {}), {})
    tab = Named("x")
    with pytest.raises(Exception, match="no object named 'tab'"):
        loads(dumps(tab.notice, {"tab": tab}), {})


def _worker_pid(bot) -> int:
    """The front names its worker in the log (multiprocessing has a helper process too)."""
    (pid,) = re.findall(r"worker process (\d+) ready", bot.log())
    assert bot.proc is not None and _alive(int(pid))
    return int(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _ignored(pid: int) -> set[signal.Signals]:
    """The signals ``pid`` ignores (SigIgn in /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(x for x in status.splitlines() if x.startswith("SigIgn:")).split()[1], 16)
    return {s for s in signal.Signals if mask & (1 << (s.value - 1))}


def test_the_work_after_the_ack_runs_in_the_worker_process(start_bot, slack, ams):
    bot = start_bot(MEETBOT_LOG_FORMAT="json")
    sender = sender_for(bot, slack)
    worker = _worker_pid(bot)
    r = sender.command(f"standup <@{BOB}>", user_id=ALICE)
    assert r.status_code == 200
    wait_for(lambda: dm_links(slack, ALICE) and dm_links(slack, BOB))
    (room_id,) = [b["streamId"] for b in rooms_on_ams(ams)]
    wait_for(lambda: f"room {room_id} opened" in bot.log())
    lines = [json.loads(x) for x in bot.log().splitlines() if x.startswith("{")]
    (opened,) = [x for x in lines if x["msg"].startswith(f"room {room_id} opened")]
    assert opened["pid"] == worker != bot.proc.pid
    # ... under the correlation id of the request the front acked.
    front_lines = [x for x in lines if x["pid"] == bot.proc.pid and x["cid"] == opened["cid"]]
    assert front_lines, "the front logged nothing under the /meet's correlation id"
    assert "cannot go to the worker process" not in bot.log()
    # /metrics, served by the front, counts what the worker did.
    # (The worker sends what it observed twice a second.)
    sent = 'meetbot_slack_sends_total{kind="dm_link",outcome="sent"} 2.0'
    metrics = wait_for(
        lambda: (t := requests.get(bot.url + "/metrics", timeout=5).text) and sent in t and t
    )
    assert 'meetbot_room_events_total{event="created"} 1.0' in metrics


def test_a_killed_front_takes_its_worker_with_it(bot):
    worker = _worker_pid(bot)
    bot.kill()  # SIGKILL: a crash, no goodbye to the worker
    wait_for(lambda: not _alive(worker), timeout=10)


def test_a_dead_worker_stops_the_front_with_exit_code_1(bot):
    worker = _worker_pid(bot)
    os.kill(worker, signal.SIGKILL)
    assert bot.proc.wait(timeout=30) == 1
    assert "the worker process ended" in bot.log()


def test_sigterm_finishes_the_handed_over_work_then_both_stop(bot, sender, slack, ams, tmp_path):
    worker = _worker_pid(bot)
    ams.latency = 0.5  # the create is still running when the signal comes
    r = sender.command(f"standup <@{BOB}>", user_id=ALICE)
    assert r.status_code == 200
    wait_for(lambda: ams.count("POST", CREATE))  # the worker is at it
    assert bot.terminate(timeout=30) == 0
    assert not _alive(worker)
    # Done before the stop, not left behind: the room is open, both DMs went out.
    assert len(rooms_on_ams(ams)) == 1
    (room,) = db_rows(f"sqlite:///{tmp_path / 'meetbot.db'}", "rooms")
    assert room["state"] == "active"
    assert dm_links(slack, ALICE) and dm_links(slack, BOB)


def test_the_worker_leaves_stopping_to_the_front(bot, sender, slack):
    """systemd signals every process of the service, a terminal the whole group."""
    worker = _worker_pid(bot)
    # It ignores them (SIG_IGN: the kernel drops them, nothing is left to arrive).
    assert {signal.SIGTERM, signal.SIGINT} <= _ignored(worker)
    os.kill(worker, signal.SIGTERM)
    os.kill(worker, signal.SIGINT)
    assert _alive(worker) and bot.proc.poll() is None
    r = sender.command(f"standup <@{BOB}>", user_id=ALICE)
    assert r.status_code == 200
    wait_for(lambda: dm_links(slack, ALICE) and dm_links(slack, BOB))
    assert bot.terminate(timeout=30) == 0
    assert not _alive(worker)


def test_a_port_in_use_stops_both_processes_with_one_line(ams, slack, tmp_path):
    import socket
    import subprocess
    import sys

    from tests.conftest import bot_env

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = bot_env(ams, slack, f"sqlite:///{tmp_path}/x.db", PORT=str(taken.getsockname()[1]))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
        )
    finally:
        taken.close()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "cannot listen on 127.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr
    (pid,) = re.findall(r"worker process (\d+) started", proc.stderr)
    wait_for(lambda: not _alive(int(pid)), timeout=10)


def test_a_call_that_cannot_travel_runs_in_the_front_and_says_so(tmp_path, ams, slack, caplog):
    """A listener bug (a lambda handed over) costs the worker split, not the request."""
    from bot.app import Services
    from bot.config import load_settings

    settings = load_settings(
        {
            "SLACK_BOT_TOKEN": "xoxb-test-token",
            "SLACK_SIGNING_SECRET": "x" * 32,
            "SLACK_API_URL": slack.api_url,
            "AMS_URL": ams.url,
            "AMS_JWT_SECRET": "s" * 40,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}",
        }
    )

    class Link:  # the front's end of a worker that is up, with nothing behind it
        alive = True
        sent: list[bytes] = []

        def call(self, fn, args, kwargs, reply_to):
            from bot.worker import dumps

            self.sent.append(dumps(("call", fn, args, kwargs), services.portable_objects()))

    services = Services(settings)
    services.store.migrate()
    services.worker = Link()  # type: ignore[assignment]
    try:
        local = services.submit(lambda x: x * 2, 21)
        assert local.result(timeout=5) == 42  # ran here
        assert "cannot go to the worker process" in caplog.text
        handed = services.submit(services.rooms.close)
        assert handed.result(timeout=5) is None and len(Link.sent) == 1  # went to the link
    finally:
        services.stop()


class _Clock:
    """A monotonic clock that moves only when slept on; ``on_sleep`` plays the front."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.on_sleep = lambda: None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.slept.append(seconds)
        self.now += seconds
        self.on_sleep()


def _activity(clock: _Clock) -> FrontActivity:
    return FrontActivity(multiprocessing.get_context("spawn"), clock=clock, sleep=clock.sleep)


def test_a_call_starts_at_once_when_the_front_is_quiet():
    clock = _Clock()
    front = _activity(clock)
    front.touch()
    clock.now += 2 * FRONT_QUIET_S
    assert front.wait_quiet(since=clock.now) == 0
    assert clock.slept == []


def test_a_call_waits_for_the_front_to_finish_its_requests():
    clock = _Clock()
    front = _activity(clock)
    answered = [0]

    def three_more_requests() -> None:  # the front answers three more, then goes quiet
        if answered[0] < 3:
            answered[0] += 1
            front.touch()

    clock.on_sleep = three_more_requests
    front.touch()
    since = clock.now
    waited = front.wait_quiet(since)
    assert answered[0] == 3
    # Started one quiet interval after the front's last request, not before.
    assert waited == pytest.approx(4 * FRONT_QUIET_S, abs=0.002)
    assert clock.now == pytest.approx(since + 4 * FRONT_QUIET_S, abs=0.002)


def test_a_front_that_never_goes_quiet_holds_a_call_at_most_max_defer():
    clock = _Clock()
    front = _activity(clock)
    clock.on_sleep = front.touch  # a request every time the worker looks
    front.touch()
    since = clock.now - 0.25  # the call arrived a while ago
    waited = front.wait_quiet(since)
    assert waited == pytest.approx(MAX_DEFER_S - 0.25, abs=0.002)
    assert clock.now == pytest.approx(since + MAX_DEFER_S, abs=0.002)


def test_a_busy_front_holds_work_back_and_never_starves_it(start_bot, slack, ams):
    """Acks first: while Slack requests keep coming the worker holds calls back,
    and still opens the room (each call waits at most MAX_DEFER_S)."""
    bot = start_bot()
    stop = threading.Event()
    answered: list[int] = []

    def keep_the_front_busy() -> None:
        helper = sender_for(bot, slack)
        while not stop.is_set():
            answered.append(helper.command("help", user_id=BOB).status_code)

    busy = [threading.Thread(target=keep_the_front_busy) for _ in range(2)]
    for t in busy:
        t.start()
    try:
        wait_for(lambda: len(answered) >= 10)
        r = sender_for(bot, slack).command("standup", user_id=ALICE)
        assert r.status_code == 200
        wait_for(lambda: dm_links(slack, ALICE), timeout=30)
        during = len(answered)
        wait_for(lambda: len(answered) > during)  # the front was still being kept busy
    finally:
        stop.set()
        for t in busy:
            t.join(30)
    assert set(answered) == {200}
    assert len(rooms_on_ams(ams)) == 1
    metrics = wait_for(
        lambda: (
            (t := requests.get(bot.url + "/metrics", timeout=5).text)
            and "meetbot_worker_held_calls_total 0.0" not in t
            and t
        ),
        timeout=10,
    )
    # The /meet was the one call handed over (help is answered in the ack), and it waited.
    assert "meetbot_worker_held_calls_total 1.0" in metrics
    held = re.search(r"^meetbot_worker_held_seconds_total (\S+)$", metrics, re.M)
    assert held and float(held.group(1)) >= 0.001
