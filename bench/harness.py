"""Shared plumbing: the bot as a process, the doubles, databases, timing, output.

Everything runs on 127.0.0.1. Every wait has a deadline, every process and
database this module starts is registered and torn down by ``cleanup()`` (also
at exit and by the watchdog), so a run always stops by itself.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bot.sim.ams import AmsDouble
from bot.sim.env import serve_env
from bot.sim.priority import NiceThreads
from bot.sim.process import ServerFailed, ServerProcess
from bot.sim.slack import SlackDouble, SlackSender

SIGNING_SECRET = "bench-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-bench-token"
STREAM_SECRET = "bench-stream-secret-0123456789-0123456789-abcdef"
TEAM = "T0BENCH"
PG_ADMIN_URL = os.environ.get(
    "MEETBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPO = Path(__file__).resolve().parent.parent
#: Set by ``python -m bench --profile DIR``: bots then run under ``bench.profiled``.
PROFILE_DIR: Path | None = None
PROFILE_TAG = "bot"
#: The module run as ``python -m MODULE serve``; experiments may wrap ``bot.ops.cli``.
BOT_MODULE = "bot.ops.cli"


class BenchFailure(Exception):
    """A correctness failure: something was not delivered/revoked exactly once."""


# -- results -------------------------------------------------------------------
@dataclass
class Line:
    """One printed result: a measured figure, the limit it is compared with, their ratio."""

    name: str
    measured: float
    limit: float
    unit: str
    limit_label: str
    target: float | None = None  # ratio must be <= target; None: report only
    strict: bool = False  # "fewer than": the ratio must stay below the target
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.limit if self.limit else math.inf

    @property
    def met(self) -> bool:
        if self.target is None:
            return True
        return self.ratio < self.target if self.strict else self.ratio <= self.target

    def render(self, judged: bool = True) -> str:
        op = "<" if self.strict else "<="
        target = f"target {op} {self.target:.2f}" if self.target is not None else "no target"
        verdict = "" if self.target is None else ("ok" if self.met else "MISSED")
        if not judged and self.target is not None:
            verdict = "(speed not judged)"
        text = (
            f"{self.name:<30} {fmt(self.measured, self.unit):>14}  "
            f"limit {fmt(self.limit, self.unit):>14} ({self.limit_label})  "
            f"ratio {self.ratio:6.3f}  {target}  {verdict}"
        )
        if self.note:
            text += f"  [{self.note}]"
        return text.rstrip()


@dataclass
class Outcome:
    """What one benchmark module returns."""

    lines: list[Line] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # correctness, not speed

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
        return ok


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:g} {unit}".strip()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1): a value that was actually observed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


# -- what Slack's caps allow ---------------------------------------------------------
Posts = Iterable[tuple[str, float]]


def earliest_finish(posts: Posts, *, rate: float, cap: tuple[int, float] | None = None) -> float:
    """The earliest moment the last of ``posts`` can be counted by Slack: the fan-out limit.

    ``posts`` are ``(channel, earliest)`` pairs: ``earliest`` is when the post
    could first exist (its ``/meet``'s send time + the AMS create + the post's
    own round trip), on any clock. Slack (and the double) count posts to one
    channel at least ``1 / rate`` s apart, and with ``cap = (N, W)`` any N + 1
    consecutive posts of the workspace span at least W s (a sliding window:
    post k may be counted once post k - N is W old).

    Two best schedules are simulated, each exact: every channel on its own under
    its rate (its posts in order of availability, each as soon as both its
    availability and its channel's gap allow), and every post under the
    workspace cap alone (in order of availability, each as soon as it is
    available and the post N before it is W old). No schedule that honours both
    caps ends before either, so the later of the two is a true lower bound.
    The best schedule under both at once is a hard scheduling problem in general
    (``schedule_finish`` finds a good one); the benchmarks' workloads are built
    so that one of the two sets the end, and they log both so a gap shows.
    ``tests/test_bench_harness.py`` checks the bound against every possible order
    of small cases.
    """
    queues = _by_channel(posts)
    gap = 1.0 / rate
    finish = -math.inf
    for q in queues.values():  # each channel alone
        t = -math.inf
        for earliest in q:
            t = max(earliest, t + gap)
        finish = max(finish, t)
    if cap is not None:  # the workspace alone
        n, window = cap
        recent: deque[float] = deque(maxlen=n)  # the last N counted times
        t = -math.inf
        for earliest in sorted(e for q in queues.values() for e in q):
            t = max(earliest, t, recent[0] + window if len(recent) == n else -math.inf)
            recent.append(t)
        finish = max(finish, t)
    return finish


def schedule_finish(posts: Posts, *, rate: float, cap: tuple[int, float] | None = None) -> float:
    """When a good schedule under both caps at once ends (never before ``earliest_finish``).

    Greedy, one post at a time in the order they are counted: the next post goes
    at the earliest moment any channel's next post can go; when several can go
    then, the channel whose remaining posts would end last on their own goes
    first. Not always the best (a long channel can gain from waiting for a slot a
    short one would take), which is why the limit is ``earliest_finish``; equal to
    it, the limit is exactly the best schedule.
    """
    queues = _by_channel(posts)
    gap = 1.0 / rate
    nxt = dict.fromkeys(queues, 0)  # index of each channel's next post
    free = dict.fromkeys(queues, -math.inf)  # when each channel may be counted again
    recent: deque[float] = deque(maxlen=cap[0] if cap else 1)
    last = -math.inf
    left = sum(len(q) for q in queues.values())

    def alone(channel: str, start: float) -> float:
        t = start
        for r in queues[channel][nxt[channel] + 1 :]:
            t = max(r, t + gap)
        return t

    while left:
        budget = recent[0] + cap[1] if cap is not None and len(recent) == cap[0] else -math.inf
        starts = {c: max(q[nxt[c]], free[c]) for c, q in queues.items() if nxt[c] < len(q)}
        t = max(min(starts.values()), budget, last)
        ready = [c for c, s in starts.items() if s <= t]
        channel = max(ready, key=lambda c: (alone(c, t), len(queues[c]) - nxt[c], c))
        nxt[channel] += 1
        free[channel] = t + gap
        last = t
        left -= 1
        recent.append(t)
    return last


def _by_channel(posts: Posts) -> dict[str, list[float]]:
    queues: dict[str, list[float]] = defaultdict(list)
    for channel, earliest in posts:
        queues[channel].append(earliest)
    if not queues:
        raise ValueError("no posts")
    for q in queues.values():
        q.sort()
    return queues


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------
_children: list[subprocess.Popen[bytes]] = []
_cleanups: list[Callable[[], None]] = []
_registry_lock = threading.Lock()


def on_cleanup(fn: Callable[[], None]) -> Callable[[], None]:
    with _registry_lock:
        _cleanups.append(fn)
    return fn


def cleanup() -> None:
    """Stop every child process and run every registered teardown (idempotent)."""
    with _registry_lock:
        children, _children[:] = list(_children), []
        fns, _cleanups[:] = list(_cleanups), []
    for proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in children:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for fn in reversed(fns):
        try:
            fn()
        except Exception as e:  # a teardown must not hide the others
            print(f"bench: cleanup step failed: {e}", file=sys.stderr)


atexit.register(cleanup)


def start_watchdog(seconds: float) -> None:
    """Hard stop: past ``seconds`` the run is torn down and exits with code 3."""

    def fire() -> None:
        print(f"bench: still running after {seconds:.0f}s; stopping.", file=sys.stderr, flush=True)
        cleanup()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until truthy; raise BenchFailure past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchFailure(f"not within {timeout:.0f}s: {what or predicate}")
        time.sleep(interval)


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` and its child processes, in MiB."""
    total = 0.0
    for one in [pid, *_children_of(pid)]:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
                break
        else:
            raise BenchFailure(f"no VmRSS for pid {one}")
    return total


def _children_of(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        out += [int(c) for c in children]
    return out


class Server(ServerProcess):
    """A server the benchmark started: torn down by ``cleanup()`` whatever happens."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        super().__init__(argv, env, port, log_path, cwd=REPO)

    def start(self, timeout: float = 30.0) -> Server:
        try:
            super().start(timeout)
        except ServerFailed as e:
            raise BenchFailure(str(e)) from None
        return self

    def started(self) -> None:
        with _registry_lock:
            _children.append(self.proc)

    def stop(self, timeout: float = 20.0) -> int:
        code = self.terminate(timeout)
        with _registry_lock:
            if self.proc in _children:
                _children.remove(self.proc)
        return code

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bot_env(
    ams: AmsDouble, slack: SlackDouble, database_url: str, port: int, **extra: str
) -> dict[str, str]:
    """The environment of ``meetbot serve`` pointed at the doubles (production log level)."""
    settings = {
        "AMS_TIMEOUT": "10",
        "MEETBOT_LOG_LEVEL": "INFO",
        "MEETBOT_MAX_OPEN_ROOMS_PER_USER": "1000",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **extra,
    }
    return serve_env(
        ams,
        slack,
        database_url,
        port=port,
        bot_token=BOT_TOKEN,
        signing_secret=SIGNING_SECRET,
        stream_secret=STREAM_SECRET,
        **settings,
    )


def meetbot(
    workdir: Path, ams: AmsDouble, slack: SlackDouble, database_url: str, **extra: str
) -> Server:
    """``meetbot serve`` as an operator runs it, pointed at the doubles (not started)."""
    port = free_port()
    env = bot_env(ams, slack, database_url, port, **extra)
    module = BOT_MODULE
    if PROFILE_DIR is not None:  # --profile: CPU profile of every thread, per bot
        module = "bench.profiled"
        env["MEETBOT_BENCH_PROFILE"] = str(PROFILE_DIR / f"{PROFILE_TAG}-{port}")
    argv = [sys.executable, "-m", module, "serve", "--host", "127.0.0.1"]
    return Server(argv, env, port, workdir / f"meetbot-{port}.log")


def sender_for(server: Server, slack: SlackDouble | None = None) -> SlackSender:
    return SlackSender(
        server.url + "/slack/events", SIGNING_SECRET, team_id=TEAM, double=slack, timeout=10
    )


#: The doubles' handler threads' niceness: they stand in for other machines.
DOUBLES_NICENESS = 10


@contextmanager
def doubles(**slack_kw: Any) -> Iterator[tuple[AmsDouble, SlackDouble]]:
    """Started AMS and Slack doubles on loopback, stopped on leaving (or by ``cleanup()``).

    Their handler threads run at ``DOUBLES_NICENESS``: they stand in for AMS and
    Slack, whose CPU a deployment spends on other machines (bot/sim/priority.py).
    """
    NiceThreads.niceness = DOUBLES_NICENESS
    ams = AmsDouble(stream_secret=STREAM_SECRET).start()
    on_cleanup(ams.stop)
    slack = SlackDouble(bot_token=BOT_TOKEN, team_id=TEAM, **slack_kw).start()
    on_cleanup(slack.stop)
    try:
        yield ams, slack
    finally:
        slack.stop()
        ams.stop()


def user_ids(prefix: str, n: int) -> list[str]:
    """``n`` Slack-shaped user ids (``U`` + 10 upper-case alphanumerics)."""
    tag = (prefix.upper() + "XXXX")[:4]
    return [f"U{tag}{i:06d}" for i in range(n)]


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="meetbot-bench-") as d:
        yield Path(d)


# -- databases ---------------------------------------------------------------------
@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards."""
    name = f"meetbot_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as e:
        admin.dispose()
        raise BenchFailure(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {e}") from e

    def drop() -> None:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    on_cleanup(drop)
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with _registry_lock:
            if drop in _cleanups:
                _cleanups.remove(drop)
        drop()


def scalar(url: str, sql: str, **params: Any) -> Any:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(sa.text(sql), params).scalar()
    finally:
        engine.dispose()


def execute(url: str, sql: str, **params: Any) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(sa.text(sql), params)
    finally:
        engine.dispose()


def wait_reconciled(url: str, timeout: float = 60.0) -> None:
    """Wait for the bot's start-up AMS reconciliation pass to finish.

    Rows written behind the bot's back while it lists AMS could be taken for
    strays or vanished rooms; set-ups that write the database directly wait
    for this first. The pass records ``last_run_at`` on its job row.
    """

    def done() -> bool:
        try:
            return (
                scalar(url, "SELECT last_run_at FROM jobs WHERE name = 'reconcile_ams'") is not None
            )
        except sa.exc.DBAPIError:
            return False

    wait_until(done, timeout, interval=0.1, what="the start-up AMS reconciliation")
