"""``meetbot demo``: the real bot, offline, driven from a terminal prompt.

Why it exists: a newcomer with neither a Slack workspace nor an Ant Media
Server should see the whole product work within a minute of cloning. So this
runs the *same* code as ``meetbot serve`` (``Services``, its Bolt app with
the listeners found through the ``meetbot.listeners`` entry point,
its WSGI app on a waitress server, the outbox worker and the scheduler, the
store on a temporary SQLite file) and points it at the loopback doubles of
Slack's Web API (``bot.sim.slack.SlackDouble``) and of AMS
(``bot.sim.ams.AmsDouble``). What the person types is turned into the signed
HTTP requests Slack would send (``SlackSender``), and after each line the demo
prints what each Slack user would now see (acks, ``response_url`` replies,
channel posts, DMs, edits) plus one short line per AMS call, each join link
with whether AMS would let its holder in right now.

Time. One :class:`DemoClock` is passed to ``Services`` (rooms, schedules,
metrics) and to the AMS double, so room ends, token expiry and join checks
agree. It runs ``--speed`` times faster than the wall clock, and ``wait <d>``
moves it on by ``d`` at once: it steps to each moment something is due (a room
end, a schedule's next run) and runs the scheduler's own ``tick()`` there, so
a ``wait 1d`` neither takes a day nor skips a run as "missed". Parts that only
use wall time, and so do not speed up: the scheduler's own ticking
(``MEETBOT_SWEEP_INTERVAL``, 1 s here), the outbox's retry delays and per
channel pacing, the Slack double's ``response_url`` lifetime (30 min) and the
bot's ``users.info`` cache (5 min), and Slack's request signatures (which must
carry the real time, or Bolt refuses them).

Secrets are made up for each run and thrown away with it, which is why the
demo may print whole join links: they only open rooms on the local double.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import click

if TYPE_CHECKING:
    import requests

    from bot.services import Services
    from bot.sim.ams import AmsDouble, RecordedRequest
    from bot.sim.slack import Call, SlackDouble, SlackSender

__all__ = ["DemoClock", "Demo", "Person", "PEOPLE", "demo_command", "run"]

TEAM_ID = "T0DEMO001"
CHANNEL_ID = "C0GENERAL"
CHANNEL_NAME = "general"
BOT_TOKEN = "xoxb-meetbot-demo"  # noqa: S105 - only the local Slack double accepts it
SWEEP_INTERVAL_S = 1
SETTLE_QUIET_S = 0.35  # no new Slack/AMS activity for this long: the line's work is done
SETTLE_TIMEOUT_S = 8.0  # outbox pacing can hold a channel message back up to ~2 s
LABEL_WIDTH = 22


@dataclass(frozen=True)
class Person:
    """A member of the demo workspace (a Slack user in the Slack double)."""

    id: str
    name: str
    tz: str
    admin: bool = False


#: The demo workspace. Time zones differ so that "each person sees their own time" shows.
PEOPLE: tuple[Person, ...] = (
    Person("UALICE01", "alice", "Europe/Berlin"),
    Person("UBOB0001", "bob", "America/New_York"),
    Person("UCAROL01", "carol", "Asia/Tokyo"),
    Person("UDAVE001", "dave", "America/Los_Angeles", admin=True),
)

HELP = """\
Type what you would type in Slack, as the person at the prompt (alice to start):
  /meet standup @bob for 15m       open a room now (@name becomes a Slack mention)
  /meet list                       your open rooms
  /meet end $room                  end a room ($room = the id of the room opened last)
  /meet extend $room for 30m       give it more time
  /meet schedule standup every weekday at 09:30 for 15m @bob
  /meet help                       the bot's own help
Demo commands:
  click <button text>   press a button on the newest message you can see,
                        e.g. `click Get my link`, `click Extend 30 min`, `click Join the room`
  as @bob [line]        be bob from now on (or only for that line)
  wait <duration>       let demo time pass (`wait 30s`, `wait 20m`, `wait 1d`): the
                        scheduler ends rooms and opens scheduled ones on the way
  people                who is in the demo workspace
  expect <text>         (scripts) fail unless the last output contains <text>
  help, quit            this help; stop everything (Ctrl-D does too)
Links are printed whole: they are signed with a secret made up for this run and
only open rooms on the local AMS stand-in."""

_ANGLE = re.compile(r"<([^<>\n]+)>")
# Slack's rule: *bold* needs non-space next to both stars ("* * 1-5" in a cron is not bold).
_BOLD = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])")
_MENTION = re.compile(r"(?<![\w<@])@([A-Za-z0-9._-]+)")
_CHANNEL_REF = re.compile(r"(?<![\w<#&])#([a-z0-9_-]+)")
_ROOM_VAR = re.compile(r"\$room\b")
_SPECIAL_MENTIONS = {"here": "<!here>", "channel": "<!channel>", "everyone": "<!everyone>"}
_EMOJI = {
    ":large_green_circle:": "●",
    ":white_circle:": "○",
    ":warning:": "⚠",
    ":calendar:": "▦",
    ":spiral_calendar_pad:": "▦",
    ":x:": "✗",
    ":white_check_mark:": "✓",
}
_WRITE_METHODS_PREFIXES = ("chat.", "views.", "calls.", "conversations.")
#: Reads the bot makes that change nothing anyone sees: shown only when they fail.
_QUIET_METHODS = frozenset({"auth.test", "users.info", "team.info", "conversations.info"})


class _Quit(Exception):
    """``quit``: leave the prompt or the script, stopping everything."""


class _Signal(Exception):
    """SIGTERM/SIGHUP in the main thread: stop cleanly, then exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class DemoClock:
    """Demo time: starts at the wall clock, runs ``speed`` times faster, can be moved on.

    One instance is shared by the bot (``Services(clock=...)``) and the AMS
    double, so token ``exp``, room ends and AMS's join checks agree.
    """

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = time.time() if start is None else float(start)
        self._mono0 = time.monotonic()
        self._skipped = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._origin + (time.monotonic() - self._mono0) * self.speed + self._skipped

    def advance_to(self, t: float) -> float:
        """Jump forward to ``t`` (never back: the bot assumes time does not reverse)."""
        with self._lock:
            now = self._origin + (time.monotonic() - self._mono0) * self.speed + self._skipped
            if t > now:
                self._skipped += t - now
                now = t
            return now

    def advance(self, seconds: float) -> float:
        """Jump forward by ``seconds``; returns the new time."""
        return self.advance_to(self() + seconds)


@dataclass
class Outcome:
    """What one line did: ``problems`` make a script fail; ``output`` is what was printed."""

    problems: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Event:
    at: float
    seq: int
    kind: str
    data: Any


class _LogCapture(logging.Handler):
    """Keeps the bot's warnings and errors to show them in line with what they explain."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__(logging.WARNING)
        from bot.logs import RedactingFilter

        self.addFilter(RedactingFilter(secrets))
        self.records: deque[tuple[float, int, str, str]] = deque()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_text:
            message += " (" + record.exc_text.strip().splitlines()[-1] + ")"
        self.records.append((time.monotonic(), record.levelno, record.name, message))


class _LoopbackServer:
    """The bot's WSGI app on waitress, on 127.0.0.1 and a free port, stoppable from any thread.

    ``serve`` blocks in ``server.run()`` until a signal; the demo needs its
    prompt in the main thread, so the same waitress server is driven here in
    a thread whose loop can be told to stop and then closes every socket.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], max_body: int) -> None:
        import waitress

        self.server: Any = waitress.create_server(
            app,
            host="127.0.0.1",
            port=0,
            threads=8,
            max_request_body_size=max_body,
            ident="meetbot",
        )
        self.port = int(self.server.effective_port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from waitress import wasyncore

        socket_map = self.server._map
        use_poll = self.server.adj.asyncore_use_poll
        try:
            while not self._stop.is_set() and socket_map:
                wasyncore.loop(timeout=0.05, use_poll=use_poll, map=socket_map, count=1)
        finally:
            # Listening socket, trigger and keep-alive connections, closed in the
            # thread that owns them.
            wasyncore.close_all(socket_map, ignore_all=True)

    def stop(self) -> None:
        """Close every socket (also when never started) and wait for requests in hand."""
        from waitress import wasyncore

        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        else:
            wasyncore.close_all(self.server._map, ignore_all=True)
        self.server.task_dispatcher.shutdown(timeout=5)


class Demo:
    """The bot, its two doubles and the terminal in front of them.

    ``start()`` brings everything up; ``run_line()`` executes one line as the
    current person and prints what happened; ``stop()`` shuts everything down.
    """

    def __init__(
        self, *, speed: float = 1.0, color: bool = False, out: TextIO | None = None
    ) -> None:
        self.clock = DemoClock(speed)
        self.color = color
        self.out = out or sys.stdout
        self.people = {p.id: p for p in PEOPLE}
        self.by_name = {p.name: p for p in PEOPLE}
        self.actor = PEOPLE[0]
        self.rooms: list[str] = []
        self.last_output: str | None = None
        self._captured: list[str] | None = None
        self._events: list[_Event] = []
        self._seq = 0
        self._ams_seen = 0
        self._calls_seen = 0
        self._replies_seen: dict[str, int] = {}
        self._reply_to: dict[str, Person] = {}
        self._problems: list[str] = []
        self._started: list[Callable[[], None]] = []  # stop actions, newest last
        self._tmp: Path | None = None
        self.services: Services | None = None
        self.slack: SlackDouble | None = None
        self.ams: AmsDouble | None = None
        self.sender: SlackSender | None = None
        self.server: _LoopbackServer | None = None
        self._logs: _LogCapture | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self) -> Demo:
        """Doubles, store, bot, HTTP server, outbox and scheduler: as ``serve`` wires them."""
        import secrets as rand

        from bot.config import Settings
        from bot.services import Services
        from bot.sim.ams import AmsDouble
        from bot.sim.slack import SlackDouble, SlackSender
        from bot.web.app import MAX_BODY_BYTES

        try:
            signing_secret = rand.token_hex(16)
            stream_secret = rand.token_urlsafe(32)
            self._tmp = Path(tempfile.mkdtemp(prefix="meetbot-demo-"))
            self._started.append(self._remove_tmp)

            self._logs = _LogCapture([signing_secret, stream_secret, BOT_TOKEN])
            root = logging.getLogger()
            root.addHandler(self._logs)
            root.setLevel(logging.WARNING)
            for noisy in ("apscheduler", "waitress"):
                logging.getLogger(noisy).setLevel(logging.ERROR)
            self._started.append(lambda: root.removeHandler(self._logs))  # type: ignore[arg-type]

            self.ams = AmsDouble(
                stream_secret=stream_secret,
                settings={"acceptOnlyRoomsInDataStore": True},  # as the README asks operators
                clock=self.clock,
            ).start()
            self._started.append(self.ams.stop)
            self.slack = SlackDouble(bot_token=BOT_TOKEN, team_id=TEAM_ID, seed=False).start()
            self._started.append(self.slack.stop)
            self.slack.team_name = "meetbot demo"
            # Everyone is in the demo's channel, so "Get my link" on its card works for all.
            self.slack.add_channel(CHANNEL_ID, CHANNEL_NAME, members=[p.id for p in PEOPLE])
            for p in PEOPLE:
                self.slack.add_user(p.id, p.name, tz=p.tz, is_admin=p.admin)

            settings = Settings(
                ams_url=self.ams.url,
                slack_bot_token=BOT_TOKEN,
                slack_signing_secret=signing_secret,
                slack_api_url=self.slack.api_url,
                ams_jwt_secret=stream_secret,
                database_url=f"sqlite:///{self._tmp / 'meetbot.db'}",
                port=0,
                sweep_interval=SWEEP_INTERVAL_S,
                ams_timeout=3.0,
                fanout_workers=4,
                ams_concurrency=4,
                log_level="WARNING",
            )
            services = Services(settings, clock=self.clock)
            self.services = services
            self._started.append(services.store.dispose)
            services.store.migrate()
            bolt_app = services.bolt_app()
            services.start()
            self._started.append(services.stop)
            # Stopped before the services, as `serve` does: no new requests first.
            self.server = _LoopbackServer(services.wsgi_app(bolt_app), MAX_BODY_BYTES)
            self._started.append(self.server.stop)
            self.server.start()
            self.sender = SlackSender(
                f"http://127.0.0.1:{self.server.port}/slack/events",
                signing_secret,
                team_id=TEAM_ID,
                double=self.slack,
            )
            self._started.append(self.sender.close)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop in reverse order of start: sender, bot, server, doubles, files. Idempotent."""
        while self._started:
            action = self._started.pop()
            try:
                action()
            except Exception as e:  # keep stopping the rest
                print(f"meetbot demo: while stopping: {type(e).__name__}: {e}", file=sys.stderr)

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Demo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- output -----------------------------------------------------------
    def _c(self, text: str, **style: Any) -> str:
        return click.style(text, **style) if self.color else text

    def say(self, text: str = "") -> None:
        """Print one line (colour only on a terminal) and keep it for ``expect``."""
        click.echo(text, file=self.out, color=self.color)
        if self._captured is not None:
            self._captured.append(click.unstyle(text))

    def _block(self, label: str, lines: list[str], **label_style: Any) -> None:
        lines = lines or [""]
        pad = " " * (LABEL_WIDTH + 2)
        if len(label) >= LABEL_WIDTH:
            self.say("  " + self._c(label, **label_style))
            first, rest = None, lines
        else:
            first, rest = lines[0], lines[1:]
        if first is not None:
            self.say("  " + self._c(label.ljust(LABEL_WIDTH), **label_style) + first)
        for line in rest:
            self.say(pad + line)

    def banner(self) -> None:
        assert self.ams is not None and self.slack is not None and self.server is not None
        people = " ".join(f"@{p.name} ({p.tz}{', admin' if p.admin else ''})" for p in PEOPLE)
        self.say(
            self._c("meetbot demo", bold=True) + ": the real bot, offline. Slack and Ant Media"
        )
        self.say("Server are played by local stand-ins; nothing leaves this machine.")
        self.say(
            f"  bot    http://127.0.0.1:{self.server.port}/slack/events (signed, like Slack's)"
        )
        self.say(f"  Slack  {self.slack.base_url} (Web API stand-in)")
        self.say(f"  AMS    {self.ams.url}/Conference (Enterprise, JWT on)")
        self.say(f"  people {people}, all in #{CHANNEL_NAME}")
        speed = f"{self.clock.speed:g}x" if self.clock.speed != 1 else "real time"
        self.say(f"  clock  demo time runs at {speed}; `wait 20m` moves it on")
        self.say(
            "Type what you would type in Slack, e.g. "
            + self._c("/meet standup @bob for 15m", bold=True)
            + "; `help` for more, `quit` to stop."
        )
        self._collect()  # anything the bot said while starting (warnings, errors)
        self._flush()

    def prompt(self) -> str:
        """``10:02 alice> ``: demo time in the current person's zone, and who is typing."""
        return f"{self._hhmm(self.clock(), self.actor.tz)} {self.actor.name}> "

    @staticmethod
    def _hhmm(ts: float, tz: str) -> str:
        return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%H:%M")

    @staticmethod
    def _day_hhmm(ts: float, tz: str) -> str:
        return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%a %H:%M %Z")

    # -- running lines ----------------------------------------------------
    def run_line(self, line: str) -> Outcome:
        """Execute one line as the current person; print what each Slack user now sees."""
        self._captured = []
        self._problems = []
        line = line.strip()
        try:
            self._dispatch(line)
        finally:
            for problem in self._problems:
                self.say(self._c("✗ " + problem, fg="red", bold=True))
            output = "\n".join(self._captured)
            self._captured = None
        if line and not line.startswith(("#", "expect")):
            self.last_output = output
        return Outcome(list(self._problems), output)

    def _dispatch(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if not line or line.startswith("#"):
            self._catch_up()
        elif word in ("quit", "exit"):
            raise _Quit
        elif word == "help":
            for text in HELP.splitlines():
                self.say(text)
        elif word == "people":
            self._people()
        elif word == "expect":
            self._expect(rest)
        elif word == "as":
            self._as(rest)
        elif word == "click":
            self._click(rest)
        elif word == "wait":
            self._wait(rest)
        elif word.startswith("/"):
            self._slash(word, rest)
        else:
            self._problems.append(f"unknown command {word!r}; type `help` for what works here")

    def _people(self) -> None:
        for p in PEOPLE:
            now = self._hhmm(self.clock(), p.tz)
            role = ", workspace admin" if p.admin else ""
            self.say(f"  @{p.name:<6} {p.id}  {p.tz} (it is {now} there){role}")
        self.say(f"  #{CHANNEL_NAME} {CHANNEL_ID}: everyone, and the bot")

    def _expect(self, text: str) -> None:
        if not text:
            self._problems.append("expect needs the text to look for")
        elif self.last_output is None:
            self._problems.append(f"expected {text!r}, but nothing ran yet")
        elif text not in self.last_output:
            self._problems.append(f"expected {text!r} in the output above, and it is not there")
        else:
            self.say(self._c(f"  ✓ found {text!r} above", fg="green"))

    def _as(self, rest: str) -> None:
        name, _, line = rest.partition(" ")
        person = self.by_name.get(name.lstrip("@"))
        if person is None:
            known = ", ".join("@" + n for n in self.by_name)
            self._problems.append(f"no one called {name or '…'!r} here; try one of {known}")
            return
        if not line.strip():
            self.actor = person
            self.say(self._c(f"  you are now @{person.name} ({person.tz})", dim=True))
            return
        before, self.actor = self.actor, person
        try:
            self._dispatch(line.strip())
        finally:
            self.actor = before

    def _slash(self, command: str, rest: str) -> None:
        if command != "/meet":
            self._problems.append(
                f"Slack would say: {command} is not a valid command (this workspace has /meet)"
            )
            return
        text = self._with_room(rest)
        if text is None:
            return
        text = self.to_slack(text)
        self._send(
            f"{command} {text}".rstrip(),
            lambda: self._sender().command(text, user_id=self.actor.id, channel_id=CHANNEL_ID),
        )

    def _send(self, what: str, request: Callable[[], requests.Response]) -> None:
        """Send one signed request, show Slack's side of it, then what it caused."""
        import requests as http

        self._catch_up()
        t0 = time.monotonic()
        try:
            resp = request()
        except http.RequestException as e:
            self._problems.append(f"the bot did not answer: {type(e).__name__}: {e}")
            return
        ms = (time.monotonic() - t0) * 1000
        self.say(
            self._c(
                f"  Slack → bot        {what}  (signed; HTTP {resp.status_code} in {ms:.0f} ms)",
                dim=True,
            )
        )
        if resp.status_code != 200:
            self._problems.append(f"the bot answered HTTP {resp.status_code}: {resp.text[:200]}")
        key = getattr(resp, "response_key", None)
        if key:
            self._reply_to[key] = self.actor
        body: dict[str, Any] = {}
        if resp.content:
            try:
                parsed = json.loads(resp.content)
                body = parsed if isinstance(parsed, dict) else {"text": str(parsed)}
            except ValueError:
                body = {"text": resp.text}
        if body.get("text") or body.get("blocks"):
            self._add(t0, "reply", (self.actor, body, "ack"))
        self._settle()
        self._flush()

    def _click(self, label: str) -> None:
        if not label:
            self._problems.append("click needs the button's text, e.g. `click Get my link`")
            return
        found = self._find_button(label)
        if found is None:
            seen = sorted(self._visible_buttons())
            hint = (
                "buttons you can see: " + ", ".join(seen)
                if seen
                else "no message you can see has buttons"
            )
            self._problems.append(
                f"@{self.actor.name} sees no button {label!r} ({hint}); "
                "`as @name` to be someone else"
            )
            return
        channel, message, element = found
        text = element["text"]["text"]
        self._send(
            f"@{self.actor.name} clicked [{text}] in {self._where(channel)}",
            lambda: self._sender().block_action(
                element["action_id"],
                element.get("value"),
                user_id=self.actor.id,
                channel_id=channel,
                message_ts=message["ts"],
            ),
        )
        if element.get("url"):
            self._block(
                f"{self.actor.name}'s browser",
                ["opens the link: " + self._join_status(element["url"])],
                fg="yellow",
            )

    def _wait(self, arg: str) -> None:
        from bot.durations import format_duration, parse_duration

        try:
            seconds = parse_duration(arg) if arg else 0
        except ValueError as e:
            self._problems.append(f"wait: {e}")
            return
        self._catch_up()
        start = self.clock()
        target = start + seconds
        tz = self.actor.tz
        self.say(
            self._c(
                f"  ⏩ demo time {self._day_hhmm(start, tz)} → {self._day_hhmm(target, tz)} "
                f"({format_duration(seconds) if seconds else 'one scheduler sweep'})",
                fg="blue",
            )
        )
        first = self._next_due()
        if first is not None and first <= start:
            self._tick()  # already due: what a sweep would do right now
        moment = int(start)
        for _ in range(500):  # each step is a moment something falls due, in order
            due = self._next_due(after=moment)
            if due is None or due > target:
                break
            self.clock.advance_to(due)
            self.say(self._c(f"  ⏰ {self._day_hhmm(due, tz)}", fg="blue"))
            self._tick()
            moment = due
        self.clock.advance_to(target)
        self._tick()

    def _tick(self) -> None:
        """Run one scheduler sweep now (the scheduler's own ``tick``) and show its effects."""
        assert self.services is not None
        if self.services.scheduler is not None:
            self.services.scheduler.tick()
        self._settle()
        self._flush()

    def _next_due(self, after: int | None = None) -> int | None:
        """The earliest moment (later than ``after``) the scheduler has work.

        That is a room to end or a schedule to fire; stepping the clock to each
        in turn lets the sweep see them as they fall due, not all at once late.
        """
        from sqlalchemy import func, select

        from bot.store import Room, RoomState, Schedule

        assert self.services is not None
        floor = -1 if after is None else after
        with self.services.store.read() as s:
            room_end = s.scalar(
                select(func.min(Room.expires_at)).where(
                    Room.state == RoomState.ACTIVE, Room.expires_at > floor
                )
            )
            next_run = s.scalar(
                select(func.min(Schedule.next_run_at)).where(
                    Schedule.active.is_(True), Schedule.next_run_at > floor
                )
            )
        dues = [int(t) for t in (room_end, next_run) if t is not None]
        return min(dues) if dues else None

    def _catch_up(self) -> None:
        """Show what happened since the last line (a fast clock ends rooms meanwhile)."""
        self._collect()
        if self._events:
            self.say(self._c("  (meanwhile)", dim=True))
            self._flush()

    # -- Slack text ------------------------------------------------------------
    def to_slack(self, text: str) -> str:
        """What Slack sends for typed text with ``should_escape``: ``@bob`` → ``<@U…|bob>``."""
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        def mention(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in _SPECIAL_MENTIONS:
                return _SPECIAL_MENTIONS[name]
            person = self.by_name.get(name)
            return f"<@{person.id}|{person.name}>" if person else m.group(0)

        def channel(m: re.Match[str]) -> str:
            return f"<#{CHANNEL_ID}|{CHANNEL_NAME}>" if m.group(1) == CHANNEL_NAME else m.group(0)

        return _CHANNEL_REF.sub(channel, _MENTION.sub(mention, text))

    def _with_room(self, text: str) -> str | None:
        if not _ROOM_VAR.search(text):
            return text
        self._collect()
        if not self.rooms:
            self._problems.append("$room stands for the room opened last, and none was opened yet")
            return None
        return _ROOM_VAR.sub(self.rooms[-1], text)

    def _sender(self) -> SlackSender:
        assert self.sender is not None
        return self.sender

    # -- watching the doubles ------------------------------------------------------
    def _add(self, at: float, kind: str, data: Any) -> None:
        self._seq += 1
        self._events.append(_Event(at, self._seq, kind, data))

    def _collect(self) -> int:
        """Turn new AMS requests, Slack calls and replies, and bot log lines into events."""
        assert self.ams is not None and self.slack is not None and self._logs is not None
        found = 0
        requests_ = self.ams.requests
        for req in requests_[self._ams_seen :]:
            self._add(req.at, "ams", req)
            if req.method == "POST" and req.path.endswith("/broadcasts/create"):
                room_id = (req.json or {}).get("streamId") if isinstance(req.json, dict) else None
                if room_id:
                    self.rooms.append(str(room_id))
            found += 1
        self._ams_seen = len(requests_)
        calls = list(self.slack.calls)
        for call in calls[self._calls_seen :]:
            if call.status == 0:  # still being answered: take it next time
                break
            self._calls_seen += 1
            found += 1
            if call.method not in _QUIET_METHODS or not call.ok:
                self._add(call.at, "slack", call)
        for key, person in list(self._reply_to.items()):
            replies = list(self.slack.responses.get(key, ()))
            for body in replies[self._replies_seen.get(key, 0) :]:
                self._add(time.monotonic(), "reply", (person, body, "response_url"))
                found += 1
            self._replies_seen[key] = len(replies)
        while self._logs.records:
            at, level, name, message = self._logs.records.popleft()
            self._add(at, "log", (level, name, message))
            found += 1
        return found

    def _settle(self, timeout: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until the post-ack work is done: nothing new for a moment and no DM owed."""
        assert self.services is not None
        start = last_change = time.monotonic()
        time.sleep(0.05)
        while True:
            activity = self._collect()
            pending = self.services.store.pending_outbox_count()
            now = time.monotonic()
            if activity:
                last_change = now
            elif not pending and now - last_change >= SETTLE_QUIET_S:
                return
            if now - start > timeout:
                self._add(now, "note", "(still working in the background: press Enter to see more)")
                return
            time.sleep(0.05)

    def _flush(self) -> None:
        events, self._events = sorted(self._events, key=lambda e: (e.at, e.seq)), []
        for event in events:
            getattr(self, "_show_" + event.kind)(event.data)

    # -- showing events ------------------------------------------------------------
    def _show_note(self, text: str) -> None:
        self.say(self._c("  " + text, dim=True))

    def _show_log(self, data: tuple[int, str, str]) -> None:
        level, name, message = data
        bad = level >= logging.ERROR
        self.say(
            self._c(
                f"  bot log            {logging.getLevelName(level)} {name}: {message}",
                fg="red" if bad else "yellow",
            )
        )
        if bad:
            self._problems.append(f"the bot logged an error: {name}: {message}")

    def _show_ams(self, req: RecordedRequest) -> None:
        query = "&".join(
            f"{k}={v[0] if v else ''}" for k, v in sorted(req.query.items()) if k != "token"
        )
        line = f"AMS   {req.method} {req.path}{'?' + query if query else ''}"
        if isinstance(req.json, dict) and req.path.endswith("/broadcasts/create"):
            end = req.json.get("plannedEndDate")
            until = f" until {self._hhmm(end, self.actor.tz)}" if isinstance(end, int) else ""
            line += f"  (new room {req.json.get('name')!r}{until})"
        elif req.path.endswith("/stop"):
            line += "  (hang up on everyone in it)"
        elif req.method == "DELETE":
            line += "  (delete the room)"
        elif "/broadcasts/list/" in req.path:
            line += "  (reconcile: look for rooms the bot forgot)"
        self.say(self._c("  " + line, fg="blue"))

    def _show_reply(self, data: tuple[Person, dict[str, Any], str]) -> None:
        person, body, how = data
        if body.get("response_type") == "in_channel":
            label = f"#{CHANNEL_NAME}"
            style: dict[str, Any] = {"fg": "cyan", "bold": True}
        else:
            label = f"{person.name} (only you)"
            style = {"fg": "yellow", "bold": True}
        if body.get("replace_original"):
            label += " (replaces)"
        self._block(
            label, self._message_lines(body.get("text"), body.get("blocks"), person.tz), **style
        )

    def _show_slack(self, call: Call) -> None:
        args = call.args
        channel = str(args.get("channel") or args.get("user") or "")
        where = self._where(channel)
        if not call.ok:
            reason = call.error or f"HTTP {call.status}"
            self.say(self._c(f"  ✗ Slack refused {call.method} ({where}): {reason}", fg="red"))
            if call.method.startswith(_WRITE_METHODS_PREFIXES):
                self._problems.append(f"Slack refused the bot's {call.method} to {where}: {reason}")
            return
        tz = self._viewer_tz(channel)
        style: dict[str, Any] = {
            "fg": "magenta" if where.startswith("DM") else "cyan",
            "bold": True,
        }
        if call.method == "chat.postMessage":
            self._block(
                where, self._message_lines(args.get("text"), args.get("blocks"), tz), **style
            )
        elif call.method == "chat.update":
            lines = self._message_lines(args.get("text"), args.get("blocks") or None, tz)
            self._block(where + " (edited)", lines, **style)
        elif call.method == "chat.postEphemeral":
            person = self.people.get(str(args.get("user")))
            label = f"{person.name if person else args.get('user')} (only you)"
            self._block(label, self._message_lines(args.get("text"), args.get("blocks"), tz))
        elif call.method in ("views.open", "views.push", "views.update"):
            view = args.get("view") or {}
            title = ((view.get("title") or {}).get("text")) or "a form"
            self._block(
                f"{self.actor.name} (a form)",
                [f"“{title}” opens; forms can't be filled in here, type the whole command instead"],
                fg="yellow",
            )
        else:
            self.say(self._c(f"  Slack API          {call.method} ok", dim=True))

    def _where(self, channel: str) -> str:
        assert self.slack is not None
        if channel[:1] in ("U", "W") and channel in self.people:
            return f"DM to {self.people[channel].name}"
        if channel.startswith("D") and channel[1:] in self.people:
            return f"DM to {self.people[channel[1:]].name}"
        record = self.slack.channels.get(channel)
        if record is not None and not record.get("is_im"):
            return "#" + str(record["name"])
        return channel or "?"

    def _viewer_tz(self, channel: str) -> str:
        """DMs are read by their recipient; channel posts are shown in the typer's zone."""
        for candidate in (channel, channel[1:]):
            if candidate in self.people:
                return self.people[candidate].tz
        return self.actor.tz

    # -- rendering Slack messages ----------------------------------------------------
    def _message_lines(self, text: Any, blocks: Any, tz: str) -> list[str]:
        if not blocks:
            return self._md(str(text or ""), tz).splitlines() or [""]
        lines: list[str] = []
        for block in blocks if isinstance(blocks, list) else []:
            kind = block.get("type")
            if kind == "section":
                if block.get("text"):
                    lines += self._text(block["text"], tz).splitlines()
                for f in block.get("fields") or []:
                    lines += self._text(f, tz).splitlines()
                if isinstance(block.get("accessory"), dict):
                    lines += self._elements([block["accessory"]])
            elif kind == "context":
                parts = [self._text(e, tz) for e in block.get("elements") or [] if "text" in e]
                lines.append(self._c("  ".join(parts), dim=True))
            elif kind == "actions":
                lines += self._elements(block.get("elements") or [])
            elif kind == "header":
                lines.append(self._c(self._text(block.get("text") or {}, tz), bold=True))
            elif kind == "divider":
                lines.append("─" * 30)
            elif kind == "input":
                lines.append("▢ " + self._text(block.get("label") or {}, tz))
        return lines or [""]

    def _text(self, obj: dict[str, Any], tz: str) -> str:
        if obj.get("type") == "mrkdwn":
            return self._md(str(obj.get("text") or ""), tz)
        return str(obj.get("text") or "")

    def _elements(self, elements: list[dict[str, Any]]) -> list[str]:
        """Buttons in their order; a link button gets its link and AMS's verdict on it."""
        lines: list[str] = []
        row: list[str] = []
        for el in elements:
            label = str((el.get("text") or {}).get("text") or el.get("type") or "?")
            if el.get("type") == "button" and el.get("url"):
                if row:
                    lines.append(" ".join(row))
                    row = []
                lines.append(self._c(f"[{label}]", bold=True) + " " + str(el["url"]))
                lines.append("  " + self._join_status(str(el["url"])))
            elif el.get("type") == "button":
                row.append(self._c(f"[{label}]", bold=True))
            else:
                row.append(f"[{el.get('type')}]")
        return lines + ([" ".join(row)] if row else [])

    def _join_status(self, url: str) -> str:
        """Would AMS let the holder of this link in right now? Asks the AMS double."""
        assert self.ams is not None
        parts = urlsplit(url)
        token = (parse_qs(parts.query).get("token") or [None])[0]
        segments = [s for s in parts.path.split("/") if s]
        if not url.startswith(self.ams.url) or len(segments) < 2:
            return self._c("(not a link to this demo's AMS)", dim=True)
        allowed, reason = self.ams.check_join(segments[-1], token)
        note = self._c("  · demo link, signed with this run's throwaway secret", dim=True)
        if allowed:
            return self._c("✓ joins now", fg="green", bold=True) + note
        return self._c(f"✗ would be refused: {reason}", fg="red", bold=True) + note

    def _md(self, text: str, tz: str) -> str:
        """Slack mrkdwn → terminal text: names for ids, times in the reader's zone."""

        def angle(m: re.Match[str]) -> str:
            head, _, label = m.group(1).partition("|")
            if head.startswith("@"):
                person = self.people.get(head[1:])
                return "@" + (person.name if person else label or head[1:])
            if head.startswith("#"):
                record = self.slack.channels.get(head[1:]) if self.slack else None
                return "#" + (str(record["name"]) if record else label or head[1:])
            if head.startswith("!date^"):
                return self._date(head, label, tz)
            if head.startswith("!"):
                return "@" + (label or head[1:].split("^")[0])
            return f"{label} ({head})" if label else head

        out = _ANGLE.sub(angle, text)
        for code, symbol in _EMOJI.items():
            out = out.replace(code, symbol)
        out = out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        return _BOLD.sub(lambda m: self._c(m.group(1), bold=True), out)

    def _date(self, head: str, fallback: str, tz: str) -> str:
        parts = head.split("^")
        try:
            when = datetime.fromtimestamp(int(parts[1]), ZoneInfo(tz))
        except (IndexError, ValueError, OverflowError):
            return fallback
        fmt = parts[2] if len(parts) > 2 else "{time}"
        today = datetime.fromtimestamp(self.clock(), ZoneInfo(tz)).date()
        if "{time" not in fmt:
            return when.strftime("%a %d %b %Y")
        shown = when.strftime("%H:%M %Z")
        if when.date() != today or "{date" in fmt:
            shown = when.strftime("%a %d %b ") + shown
        return shown

    # -- buttons ---------------------------------------------------------------------
    def _visible_messages(self) -> list[tuple[str, dict[str, Any]]]:
        """Messages the current person can see: public channels and their DM with the bot."""
        assert self.slack is not None
        channels = [
            cid
            for cid, record in list(self.slack.channels.items())
            if not record.get("is_im") and not record.get("is_private")
        ]
        channels.append("D" + self.actor.id)
        return [(cid, msg) for cid in channels for msg in self.slack.messages(cid)]

    @staticmethod
    def _buttons_of(message: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for block in message.get("blocks") or []:
            for el in [*(block.get("elements") or []), block.get("accessory")]:
                if isinstance(el, dict) and el.get("type") == "button":
                    out.append(el)
        return out

    def _visible_buttons(self) -> set[str]:
        return {
            str(el["text"]["text"])
            for _, msg in self._visible_messages()
            for el in self._buttons_of(msg)
        }

    def _find_button(self, label: str) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        """The newest visible message with a button whose text is ``label`` (any case)."""
        want = label.strip().strip("[]").casefold()
        best: tuple[float, str, dict[str, Any], dict[str, Any]] | None = None
        for channel, msg in self._visible_messages():
            for el in self._buttons_of(msg):
                if str(el["text"]["text"]).casefold() != want:
                    continue
                ts = float(msg.get("ts") or 0)
                if best is None or ts > best[0]:
                    best = (ts, channel, msg, el)
        return None if best is None else (best[1], best[2], best[3])

    # -- front ends --------------------------------------------------------------------
    def run_script(self, lines: Iterable[str], name: str = "script") -> int:
        """Replay lines, echoing each; stop at the first line that fails (exit code 1)."""
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip("\r\n")
            if line.lstrip().startswith("#") or not line.strip():
                self.say(self._c(line, dim=True))
                continue
            if line.lstrip().startswith("expect "):  # a check, not something anyone types
                self.say(self._c("  " + line.strip(), dim=True))
            else:
                self.say(self._c(self.prompt(), bold=True) + line)
            try:
                outcome = self.run_line(line)
            except _Quit:
                return 0
            if not outcome.ok:
                self.say(self._c(f"{name}:{number}: this line failed; stopping.", fg="red"))
                return 1
        return 0

    def interact(self, read: Callable[[str], str] = input) -> int:
        """The prompt: one line at a time until ``quit`` or end of input (Ctrl-D)."""
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:  # pragma: no cover - not on every platform
            pass
        while True:
            try:
                line = read(self.prompt())
            except EOFError:
                self.say()
                return 0
            try:
                self.run_line(line)
            except _Quit:
                return 0


def run(*, script: str | None = None, speed: float = 1.0, color: bool | None = None) -> int:
    """``meetbot demo``: start everything, run the prompt or a script, stop everything."""
    if color is None:
        color = sys.stdout.isatty()
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")  # a C-locale terminal still gets "?" for "✓"
    lines: list[str] | None = None
    if script is not None:
        with click.open_file(script, encoding="utf-8") as f:
            lines = list(f)

    def on_signal(signum: int, _frame: Any) -> None:
        raise _Signal(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, on_signal)

    demo = Demo(speed=speed, color=color)
    code = 0
    try:
        try:
            demo.start()
        except Exception as e:  # say why in one line; everything started is stopped
            click.echo(f"meetbot demo: could not start: {type(e).__name__}: {e}", err=True)
            return 1
        demo.banner()
        if lines is not None:
            code = demo.run_script(lines, name=script or "script")
        else:
            code = demo.interact()
    except KeyboardInterrupt:
        demo.say()
        code = 130
    except _Signal as s:
        code = 128 + s.signum
    finally:
        try:
            demo.stop()
        except (KeyboardInterrupt, _Signal):
            demo.stop()
    if demo.services is not None:
        demo.say(demo._c("stopped: bot, scheduler, outbox, AMS and Slack stand-ins", dim=True))
    return code


@click.command("demo")
@click.option(
    "--script",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="Replay the lines of FILE ('-' for stdin) instead of prompting; exit 1 if one fails.",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Run the demo clock this many times faster than real time.",
)
@click.option(
    "--color/--no-color",
    default=None,
    help="Colour the output (default: only when stdout is a terminal).",
)
def demo_command(script: str | None, speed: float, color: bool | None) -> None:
    """Try meetbot with no Slack workspace and no AMS: the real bot against local stand-ins.

    \f
    Type what you would type in Slack (``/meet standup @bob for 15m``), then
    ``click Get my link``, ``as @bob``, ``wait 20m``; ``help`` lists it all.
    """
    sys.exit(run(script=script, speed=speed, color=color))
