"""Shared plumbing: the bot as a process, the doubles, databases, timing, output.

Everything runs on 127.0.0.1. Every wait has a deadline, every process and
database this module starts is registered and torn down by ``cleanup()`` (also
at exit and by the watchdog), so a run always stops by itself.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import signal
import socket
import statistics
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
from urllib.parse import urlencode

import requests
import sqlalchemy as sa

from bot.sim.ams import AmsDouble
from bot.sim.env import serve_env
from bot.sim.priority import NiceThreads
from bot.sim.process import ServerFailed, ServerProcess
from bot.sim.slack import Call, SlackDouble, SlackSender

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
            f"{self.name:<38} {fmt(self.measured, self.unit):>11}  "
            f"limit {fmt(self.limit, self.unit):>11} ({self.limit_label})  "
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
    """Hard stop: past ``seconds`` the run is torn down and exits with code 3.

    A SIGTERM (``pkill``, a CI timeout) tears it down too: by default it would end
    this process without the ``atexit`` cleanup and leave its ``meetbot serve``
    children running, spending the CPU of whatever is measured next.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) ``pid`` has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def upgrade_database(server: Server) -> None:
    """``meetbot db upgrade`` with the server's environment, before it starts.

    Production migrates this way (docs/deploy.md, the Kubernetes Job) and
    ``serve`` then finds the schema current and loads no Alembic; replicas do
    not race to migrate.
    """
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bot.ops.cli", "db", "upgrade"],
        env=server.env,
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchFailure(f"meetbot db upgrade failed: {proc.stderr.decode(errors='replace')}")


def settled(url: str, timeout: float = 120.0) -> None:
    """Wait until the bot owes Slack nothing (no outbox row pending, leased or held).

    Then counting what Slack received is final: nothing more will be sent.
    """

    def owed() -> int:
        return int(scalar(url, "SELECT count(*) FROM outbox WHERE state = 'pending'") or 0)

    wait_until(lambda: owed() == 0, timeout, interval=0.1, what="the outbox to settle")


# -- the least a call takes ----------------------------------------------------------
@dataclass(frozen=True)
class CallFloor:
    """The doubles' round trips as a client sees them, measured in this run (medians)."""

    create_s: float  # AMS POST /broadcasts/create
    post_s: float  # Slack chat.postMessage

    @property
    def link_s(self) -> float:
        """The least time from a /meet to a DM: the AMS create, then the post."""
        return self.create_s + self.post_s

    def label(self) -> str:
        return f"AMS create {self.create_s * 1000:.0f} + post {self.post_s * 1000:.0f} ms"


def call_floor(ams: AmsDouble, slack: SlackDouble, samples: int = 7) -> CallFloor:
    """Time real AMS creates and ``chat.postMessage`` calls from here, one at a time.

    The calls that must follow one another before a DM can exist, at the
    doubles' latency as it is on this machine right now. Each client is warmed
    (one untimed call) so the figures are keep-alive round trips, as the bot's
    are. What this leaves behind is removed: the rooms, AMS's request log, and
    every call, message and rate window of the Slack double (``reset``), so call
    it before building any request for the bot.
    """
    rest = f"{ams.url}{ams.rest_base}/broadcasts"
    made: list[str] = []
    creates: list[float] = []
    with requests.Session() as http:
        for i in range(samples + 1):
            room = f"benchfloor{uuid.uuid4().hex[:12]}"
            body = {"streamId": room, "name": "floor", "type": "liveStream"}
            t = time.perf_counter()
            http.post(f"{rest}/create", json=body, timeout=30).raise_for_status()
            if i:
                creates.append(time.perf_counter() - t)
            made.append(room)
        latency, ams.latency = ams.latency, 0.0
        for room in made:
            http.delete(f"{rest}/{room}", timeout=30)
        ams.latency = latency
        ams.clear_requests()
        posts: list[float] = []
        url = f"{slack.api_url}chat.postMessage"
        headers = {"Authorization": f"Bearer {BOT_TOKEN}"}
        for i in range(samples + 1):
            channel = f"C0FLOOR{i:04d}"
            slack.add_channel(channel, f"floor-{i}")
            t = time.perf_counter()
            resp = http.post(
                url, data={"channel": channel, "text": "floor"}, headers=headers, timeout=30
            )
            if i:
                posts.append(time.perf_counter() - t)
            if not resp.json().get("ok"):
                raise BenchFailure(f"chat.postMessage on the Slack double failed: {resp.text}")
    slack.reset()
    return CallFloor(statistics.median(creates), statistics.median(posts))


# -- what Slack received -------------------------------------------------------------
def posted(slack: SlackDouble) -> list[Call]:
    """The ``chat.postMessage`` calls Slack accepted, in the order it counted them."""
    return [c for c in slack.calls_to("chat.postMessage") if c.ok]


def dm_user(call: Call) -> str | None:
    """The person a post went to by DM (the bot posts DMs to the user id), else None."""
    channel = str(call.args.get("channel") or "")
    if channel[:1] in ("U", "W"):
        return channel
    if channel.startswith("D"):
        return channel[1:]
    return None


TOPIC = re.compile(r"\b[a-z]+-\d{4}\b")


@dataclass(frozen=True)
class Meet:
    """One ``/meet`` a benchmark sent: a unique topic, who, where, and when it was sent."""

    topic: str
    requester: str
    invitees: tuple[str, ...]
    channel: str
    sent: float = 0.0  # time.monotonic(), the Slack double's clock

    @property
    def text(self) -> str:
        return " ".join([self.topic, *(f"<@{u}|{u.lower()}>" for u in self.invitees)])

    @property
    def people(self) -> tuple[str, ...]:
        return (self.requester, *self.invitees)

    def posts(self, available: float) -> list[tuple[str, float]]:
        """Its DMs' and card's channels, each first possible ``available`` s after sending."""
        at = self.sent + available
        return [*(("D" + u, at) for u in self.people), (self.channel, at)]


def deliveries(slack: SlackDouble) -> dict[str, dict[str, list[float]]]:
    """topic -> recipient (a user id for a DM, else the channel) -> when each post landed.

    Every DM and card names its room's topic in its text (``bot.slack.messages``);
    the benchmarks give each ``/meet`` a topic of its own.
    """
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for call in posted(slack):
        found = TOPIC.search(str(call.args.get("text") or ""))
        if found is None:
            continue
        recipient = dm_user(call) or str(call.args.get("channel"))
        out[found.group(0)][recipient].append(call.at)
    return out


def check_delivered(out: Outcome, slack: SlackDouble, meets: Sequence[Meet], what: str) -> None:
    """Every person of every ``/meet`` got exactly one DM, its channel exactly one card,
    and Slack accepted no other post."""
    got = deliveries(slack)
    wrong: list[str] = []
    for m in meets:
        for recipient in (*m.people, m.channel):
            n = len(got.get(m.topic, {}).get(recipient, []))
            if n != 1:
                wrong.append(f"{m.topic} -> {recipient}: {n}")
    out.check(not wrong, f"{what}: {len(wrong)} posts not delivered exactly once, e.g. {wrong[:5]}")
    expected = sum(len(m.people) + 1 for m in meets)
    accepted = len(posted(slack))
    out.check(accepted == expected, f"{what}: Slack accepted {accepted} posts, expected {expected}")


def link_times(slack: SlackDouble, meets: Sequence[Meet]) -> tuple[list[float], list[float]]:
    """Seconds from each ``/meet`` to its requester's DM, and to its last invitee's DM."""
    got = deliveries(slack)
    requester: list[float] = []
    last: list[float] = []
    for m in meets:
        mine = got.get(m.topic, {})
        if mine.get(m.requester):
            requester.append(min(mine[m.requester]) - m.sent)
        if m.invitees and all(mine.get(u) for u in m.invitees):
            last.append(max(min(mine[u]) for u in m.invitees) - m.sent)
    return requester, last


def posts_429(slack: SlackDouble) -> tuple[int, int]:
    """(answered 429, all) ``chat.postMessage`` calls; each 429 is logged with its cause."""
    calls = slack.calls_to("chat.postMessage")
    refused = [c for c in calls if c.status == 429]
    counted = [c for c in calls if c.ok]
    for c in refused:  # which cap: the channel's last counted post, the workspace's window
        channel = c.args.get("channel")
        same = [o.at for o in counted if o.at < c.at and o.args.get("channel") == channel]
        window = sum(1 for o in counted if c.at - slack.workspace_window < o.at < c.at)
        last = f"{c.at - same[-1]:.3f} s after its last counted post" if same else "its first"
        log(f"429 on {channel}: {last}; {window} posts in the window before it")
    return len(refused), len(calls)


# -- requests as Slack sends them ------------------------------------------------------
def command_body(slack: SlackDouble, user: str, channel: str, text: str) -> str:
    """The form body Slack POSTs for ``/meet text`` (as ``SlackSender.command``)."""
    fields = [
        ("token", "verification-token"),
        ("team_id", TEAM),
        ("team_domain", slack.team_domain),
        ("channel_id", channel),
        ("channel_name", channel.lower()),
        ("user_id", user),
        ("user_name", user.lower()),
        ("command", "/meet"),
        ("text", text),
        ("api_app_id", "A0001"),
        ("is_enterprise_install", "false"),
        ("response_url", slack.make_response_url()),
        ("trigger_id", slack.issue_trigger_id(user)),
    ]
    return urlencode(fields)


@dataclass(frozen=True)
class Sent:
    """One request of ``fire``: when it was due (monotonic), its latency from then, its answer."""

    due: float
    started: float
    latency: float
    status: int
    text: str


def fire(
    url: str,
    bodies: Sequence[str],
    *,
    concurrency: int,
    warmup: Sequence[str] = (),
    offsets: Sequence[float] | None = None,
) -> list[Sent]:
    """Send ``bodies`` from ``bench.load`` in its own process; one ``Sent`` per body.

    Closed loop (``offsets`` None): ``concurrency`` clients send back to back.
    Open loop: body i is due ``offsets[i]`` s after the start, whatever the
    server is doing, on up to ``concurrency`` connections; latency counts from
    when it was due. ``time.monotonic`` is one clock for every process here.
    """
    spec = {
        "url": url,
        "concurrency": concurrency,
        "warmup": list(warmup),
        "bodies": list(bodies),
        "offsets": None if offsets is None else list(offsets),
    }
    return [Sent(*r) for r in in_own_process("bench.load", spec)["results"]]


def in_own_process(module: str, spec: dict[str, Any]) -> Any:
    """Run ``python -m module`` with ``spec`` as JSON on stdin; its JSON stdout.

    For clients that must not share a GIL with the doubles (the load generator,
    AMS's own pace).
    """
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", module],
        input=json.dumps(spec).encode(),
        capture_output=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchFailure(f"{module} failed: {proc.stderr.decode(errors='replace')}")
    return json.loads(proc.stdout)


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
