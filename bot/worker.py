"""The worker process: where ``meetbot serve`` does everything that follows an ack.

Why a second process: Slack wants its ack at once, and CPython runs one thread
at a time per process. In one process the work that follows each ``/meet``
(users.info, the AMS create, the database, rendering and sending the DMs,
about 40 ms of CPU) took the interpreter from the request threads, and acks
waited for it: ack latency at concurrency 1 was about 4 times that of a bare
Bolt app (docs/benchmarks.md). So ``serve`` runs two processes:

- the *front* (the process ``meetbot serve`` started): HTTP or Socket Mode,
  signature checks, Bolt's dispatch and the listeners, which ack and hand over;
  health, readiness and metrics. It is a replica without background work.
- the *worker*, started by the front: the same ``Services`` and listeners,
  plus the outbox, the scheduler and every call handed over.

A call crosses as ``(function, args, kwargs)`` pickled by reference: the
``Services`` of one process and its parts (``rooms``, ``slack``, the App
Home's ``home_tab``...; see :meth:`bot.app.Services.portable_objects`) travel
as their names and arrive as the other process's objects of that name;
module-level functions travel as their qualified names; plain values
(``OpenRequest``) as themselves. The request's correlation id and workspace
go with it. The worker sends back the metrics it observes, so ``/metrics`` on
the front counts the whole bot.

Lifetimes: the worker dies with the front (``PR_SET_PDEATHSIG`` on Linux: a
front killed with SIGKILL is a crashed bot, and its worker must not go on as
a headless replica), and stops when the front closes the pipe. When the
worker dies, the front stops too, with exit code 1, so the supervisor
restarts the bot as a whole. A call handed over but not run when the worker
dies is lost exactly as it was when the bot was one process: after the ack,
before the database.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from bot.logs import correlation_id
from bot.notify import CURRENT_TEAM

if TYPE_CHECKING:
    from bot.app import Services
    from bot.config import Settings
    from bot.metrics import Metrics

log = logging.getLogger("meetbot.worker")

#: How long the front waits for the worker to finish the work in hand at stop.
STOP_TIMEOUT_S = 60.0
#: The worker's CPU priority below the front's (``nice``): when the machine is
#: short of CPU, Slack's acks (3 s, or Slack retries and the user sees an error)
#: come before DMs (which wait seconds for Slack's rate limits anyway). With
#: CPU to spare it changes nothing.
WORKER_NICENESS = 10
#: The Metrics hooks the worker forwards to the front.
METRIC_HOOKS = ("room_event", "outbox_result", "observe_ams", "call_held")
#: How often the worker sends the metrics it observed, in one message: one
#: message per AMS call or DM would wake the front's reader thread, which
#: shares the interpreter with the request threads, a dozen times per /meet.
METRICS_EVERY_S = 0.5


#: The worker starts a handed-over call once the front has been quiet (no Slack
#: request started or ended) this long...
FRONT_QUIET_S = 0.02
#: ...or once the call has waited this long, whichever comes first.
MAX_DEFER_S = 1.0


class FrontActivity:
    """When the front last started or finished a Slack request, seen by both processes.

    Why: nice 10 gives the worker less CPU, but on a small machine its work
    (and the AMS and Slack calls it makes) still lands on the core a request
    thread wakes on, and the kernel and the interpreter run it out before the
    ack: at concurrency 1 the 99th-percentile ack took twice a bare Bolt app's
    while the worker was busy, and as long as the floor's own when it was not
    (docs/benchmarks.md). The ack has a hard 3 s deadline; the room's DM can
    wait a moment. So in a burst of requests the worker holds new calls until
    the front is quiet for ``FRONT_QUIET_S``, and never longer than
    ``MAX_DEFER_S`` per call: under steady traffic it still keeps pace,
    ``MAX_DEFER_S`` behind.

    One double in shared memory, written by the front's request threads (one
    aligned store; the latest writer wins, which is all a timestamp needs) and
    read by the worker. ``time.monotonic`` is the same clock in both processes.
    """

    def __init__(
        self,
        ctx: Any,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._seen = ctx.RawValue(ctypes.c_double, 0.0)
        self._clock = clock
        self._sleep = sleep

    def touch(self) -> None:
        """The front: a Slack request started or ended now."""
        self._seen.value = self._clock()

    def wait_quiet(
        self, since: float, quiet: float = FRONT_QUIET_S, longest: float = MAX_DEFER_S
    ) -> float:
        """The worker: block until the front has been quiet ``quiet`` s, or until
        ``since + longest``; returns the seconds waited."""
        start = now = self._clock()
        deadline = since + longest
        while now - self._seen.value < quiet and now < deadline:
            idle = now - self._seen.value
            # At least 1 ms: a remainder below the clock's resolution would spin.
            self._sleep(max(0.001, min(quiet - idle, deadline - now)))
            now = self._clock()
        return now - start


class WorkerDied(Exception):
    """The worker process ended while the front was still serving."""


class HandOverError(Exception):
    """A call could not be sent to the worker (it does not pickle by reference)."""


# -- pickling by name --------------------------------------------------------------


#: The objects of this process that calls name, while :func:`loads` runs.
_receiving = threading.local()


def _named(name: str) -> Any:
    """Unpickling: this process's object called ``name``."""
    objects: Mapping[str, Any] = getattr(_receiving, "objects", {})
    try:
        return objects[name]
    except KeyError:
        raise pickle.UnpicklingError(f"the worker has no object named {name!r}") from None


class Names:
    """How one process's named objects pickle: as ``_named(name)``.

    By type, in the pickler's ``dispatch_table``: the C pickler looks a type up
    there without calling Python for every string and tuple, which a
    ``persistent_id`` hook would (it cost a tenth of the ack path's CPU).
    """

    def __init__(self, objects: Mapping[str, Any]) -> None:
        self.source = objects
        self.objects = dict(objects)
        self._names = {id(obj): name for name, obj in self.objects.items()}
        self.table = {type(obj): self._reduce for obj in self.objects.values()}

    def _reduce(self, obj: Any) -> tuple[Callable[[str], Any], tuple[str]]:
        name = self._names.get(id(obj))
        if name is None:
            raise pickle.PicklingError(f"{type(obj).__name__} object without a name")
        return _named, (name,)


def dumps(message: Any, names: Names | Mapping[str, Any]) -> bytes:
    """Pickle ``message``, each of the named objects as its name."""
    if not isinstance(names, Names):
        names = Names(names)
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = names.table
    try:
        pickler.dump(message)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise HandOverError(str(e)) from None
    return buf.getvalue()


def loads(data: bytes, objects: Mapping[str, Any]) -> Any:
    """The inverse of :func:`dumps`, with this process's ``objects``."""
    _receiving.objects = objects
    try:
        return pickle.loads(data)  # noqa: S301 - from our own front, over a private pipe
    finally:
        _receiving.objects = {}


# -- the front's side -----------------------------------------------------------------


class WorkerLink:
    """The front's end of the worker: hand calls over, receive its metrics."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        # Sent by a thread of its own: a request thread only queues (when the
        # worker is busy the pipe fills, and the ack must not wait for it).
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._names_cache: Names | None = None
        self._stopping = threading.Event()
        self.died = threading.Event()
        self.ready = threading.Event()
        self.on_death: Callable[[], None] | None = None
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self.activity = FrontActivity(ctx)
        self.process = ctx.Process(
            target=worker_main,
            args=(settings, child, self.activity),
            name="meetbot-worker",
            daemon=False,
        )
        self.process.start()
        child.close()
        self._reader = threading.Thread(target=self._read, name="worker-link", daemon=True)
        self._reader.start()
        self._sender = threading.Thread(target=self._send_all, name="worker-send", daemon=True)
        self._sender.start()
        log.info("worker process %s started", self.process.pid)

    # Handing over ------------------------------------------------------------------
    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        reply_to: str | None,
    ) -> None:
        """Send one call; raises HandOverError if it cannot travel by name."""
        message = ("call", fn, args, kwargs, reply_to, correlation_id.get(), CURRENT_TEAM.get())
        self._send(dumps(message, self._names()))

    def _names(self) -> Names:
        # Rebuilt only when Services made a new dict (a listener shared an object).
        objects = self.services.portable_objects()
        cached = self._names_cache
        if cached is None or cached.source is not objects:
            cached = self._names_cache = Names(objects)
        return cached

    def kick(self) -> None:
        """``OutboxWorker.kick`` for the front: new outbox rows are waiting."""
        self._send(dumps(("kick",), {}))

    def _send(self, data: bytes) -> None:
        self._outgoing.put(data)

    def _send_all(self) -> None:
        while (data := self._outgoing.get()) is not None:
            try:
                self._conn.send_bytes(data)
            except (OSError, ValueError):
                return  # the worker is gone: _read reports it

    # From the worker ----------------------------------------------------------------
    def _read(self) -> None:
        metrics = self.services.metrics
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "metrics":
                for name, args in message[1]:
                    try:
                        if name in METRIC_HOOKS:
                            getattr(metrics, name)(*args)
                    except Exception:  # a bad label: keep reading, or the pipe fills
                        log.exception("metrics from the worker: %s%r", name, args)
            elif kind == "ready":
                self.ready.set()
                log.info("worker process %s ready", self.process.pid)
        if self._stopping.is_set():
            return
        self.process.join(5)
        log.error(
            "the worker process ended (exit code %s): stopping, so that meetbot restarts whole",
            self.process.exitcode,
        )
        self.died.set()
        if self.on_death is not None:
            self.on_death()

    @property
    def alive(self) -> bool:
        """Taking calls: not dead, not stopping (then the front runs them itself)."""
        return not (self.died.is_set() or self._stopping.is_set())

    def problem(self) -> str | None:
        """For ``/readyz``: why the worker cannot take work now, or None."""
        if self.died.is_set() or self._stopping.is_set():
            return f"stopped (exit code {self.process.exitcode})"
        if not self.ready.is_set():
            return "starting"
        return None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask the worker to finish the work in hand and stop; wait for it."""
        self._stopping.set()
        self._send(dumps(("stop",), {}))
        self._outgoing.put(None)
        self._sender.join(timeout)
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("the worker process did not stop within %.0f s: killing it", timeout)
            self.process.kill()
            self.process.join(5)
        self._conn.close()


# -- the worker's side ----------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the front dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    # The front may have died before prctl took effect.
    if os.getppid() == 1:
        os._exit(1)


class _Forwarder:
    """Sends messages to the front from any worker thread; metrics in batches."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._observed: list[tuple[str, tuple[Any, ...]]] = []
        self._observed_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name="metrics", daemon=True)
        self._thread.start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._conn.send(message)

    def observe(self, name: str, args: tuple[Any, ...]) -> None:
        with self._observed_lock:
            self._observed.append((name, args))

    def flush(self) -> None:
        with self._observed_lock:
            batch, self._observed = self._observed, []
        if batch:
            self.send(("metrics", batch))

    def _flush_loop(self) -> None:
        while not self._stop.wait(METRICS_EVERY_S):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.flush()


def forwarding_metrics(metrics: Metrics, forward: _Forwarder) -> None:
    """Make the worker's Metrics hooks report to the front, where ``/metrics`` is."""

    def hook(name: str) -> Callable[..., None]:
        def observe(*args: Any) -> None:
            forward.observe(name, args)

        return observe

    for name in METRIC_HOOKS:
        setattr(metrics, name, hook(name))


def worker_main(settings: Settings, conn: Connection, front: FrontActivity | None = None) -> None:
    """The worker process: build the services, run what the front hands over.

    ``front``: the front's request activity; calls wait for a quiet moment
    (:class:`FrontActivity`). None: run each call as it comes.
    """
    _die_with_parent()
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no os.nice
        os.nice(WORKER_NICENESS)
    # The front decides when to stop, and tells us after its last request. Ctrl-C
    # reaches the whole process group, and systemd's default stop sends SIGTERM
    # to every process of the service: stopping on our own would leave the front
    # serving without a worker, and exiting 1 for a clean stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from bot.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format, settings.secrets())
    # Read the pipe from the start, so the front never blocks on a full one
    # while the services are being built.
    inbox: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()

    def read() -> None:
        while True:
            try:
                inbox.put((time.monotonic(), conn.recv_bytes()))
            except (EOFError, OSError):
                inbox.put(None)
                return

    threading.Thread(target=read, name="worker-inbox", daemon=True).start()

    from bot.app import Services, build_bolt_app

    forward = _Forwarder(conn)
    services = Services(settings, metrics_hook=lambda m: forwarding_metrics(m, forward))
    build_bolt_app(services)  # the listeners' registrations: the App Home, its hook...
    services.start()
    forward.send(("ready",))
    objects = services.portable_objects()
    try:
        while True:
            item = inbox.get()
            if item is None:
                break
            received, data = item
            if front is not None and (held := front.wait_quiet(received)) > 0:
                services.metrics.call_held(held)
            try:
                message = loads(data, objects)
            except Exception:
                log.exception("could not read a call from the front")
                continue
            if message[0] == "stop":
                break
            if message[0] == "kick":
                services.outbox.kick()
            elif message[0] == "call":
                _run(services, *message[1:])
    finally:
        services.stop()
        forward.close()
        conn.close()


def _run(
    services: Services,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reply_to: str | None,
    cid: str | None,
    team: tuple[str | None, str | None] | None,
) -> None:
    """Submit one handed-over call under the request's correlation id and workspace."""
    cid_token = correlation_id.set(cid)
    team_token = CURRENT_TEAM.set(team)
    try:
        services.submit_here(fn, *args, reply_to=reply_to, **kwargs)
    finally:
        CURRENT_TEAM.reset(team_token)
        correlation_id.reset(cid_token)
