"""The composition root: every part of the bot, built once, each given what it uses.

``meetbot serve`` (``bot.server``), the operator commands (``bot.ops``) and
``meetbot demo`` all build the bot here, so there is one place that says which
part talks to which. Parts get their collaborators through their constructors;
nothing is plugged in afterwards. Slack listeners live in ``handlers/`` and are
found through the ``meetbot.listeners`` entry-point group, so that ``bot/``
never imports ``handlers/`` while ``serve`` still wires them.

What is built, bottom up: the database (``Store``) and metrics; AMS (client,
stream secret); Slack (gateway, workspaces, outbox, Calls); the App Home;
rooms (links, the room service, the sweep); schedules; the scheduler's ticker;
and on demand the Bolt app and the WSGI app with every HTTP route.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import entry_points
from typing import Any

from slack_bolt import App

from bot.ams import reconcile as ams_reconcile
from bot.ams.client import AmsClient, AmsManagement
from bot.ams.stream_secret import (
    RotatingSecret,
    SecretSource,
    StaticSecret,
    bootstrap,
    build_management,
    rotate,
    settle,
)
from bot.config import Settings
from bot.home.tab import HomeTab
from bot.metrics import Metrics
from bot.rooms.access import Access
from bot.rooms.links import JOIN_PREFIX, Links
from bot.rooms.service import Rooms
from bot.rooms.streams import Streams
from bot.rooms.sweep import Sweep
from bot.schedules.service import Schedules, list_schedules
from bot.schedules.ticker import Scheduler
from bot.slack.calls import CALL_JOIN_PREFIX, SlackCalls
from bot.slack.gateway import SlackGateway
from bot.slack.outbox import OutboxWorker, worker_id
from bot.slack.pacing import Pacer
from bot.slack.workspaces import Workspaces
from bot.store import Store
from bot.vault import Vault
from bot.web.ams_auth import WEBHOOK_PREFIX, AmsAuth
from bot.web.ams_hook import HOOK_PREFIX, AmsHook
from bot.web.app import Route, wsgi_app
from bot.web.call_join import CallSignIn
from bot.web.health import Readiness
from bot.web.join import JoinLinks
from bot.web.slack import SlackRoute, build_bolt_app

__all__ = ["Listener", "Services", "load_listeners"]

log = logging.getLogger("meetbot.services")

UNEXPECTED_FAILURE = (
    ":warning: Something went wrong on my side and that did not happen. "
    "Please try again in a minute; if it keeps failing, tell your Slack admin."
)

Listener = Callable[[App, "Services"], None]
#: Threads for the work after acks (``Services.submit``).
BACKGROUND_THREADS = 64


def load_listeners() -> list[Listener]:
    """The ``register(app, services)`` functions that installed packages offer."""
    return [ep.load() for ep in entry_points(group="meetbot.listeners")]


class Services:
    """Everything a listener may use, built once per process.

    Building starts no thread and opens no connection: the operator commands
    build it to end a room or send an edit, and only ``serve`` calls
    :meth:`start`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        """``owner`` names this process in leases (host and a random part by default)."""
        s = self.settings = settings
        self.clock = clock
        self.owner = owner or worker_id()
        # Post-ack work: never Bolt's own small pool, never the request thread. A
        # /meet holds a thread while AMS creates its room (up to a second on a busy
        # AMS), so a morning burst needs dozens at once.
        self._background = ThreadPoolExecutor(
            max_workers=BACKGROUND_THREADS, thread_name_prefix="work"
        )

        self.store = Store(s.database_url)
        self.metrics = Metrics(self.store, clock=clock)

        # AMS, and the stream secret: from the environment, or stored and rotated.
        self.ams = AmsClient(
            s.ams_url,
            s.ams_app,
            rest_jwt_secret=s.ams_rest_jwt_secret,
            timeout=(3.05, s.ams_timeout),
            observer=self.metrics.observe_ams,
        )
        self.vault = Vault(s.secret_key) if s.secret_key else None
        self.mgmt: AmsManagement | None = build_management(s) if self.vault else None
        self.rotating = RotatingSecret(self.store, self.vault) if self.vault else None
        self.secrets: SecretSource = self.rotating or StaticSecret(s.ams_jwt_secret or "")

        # Slack.
        self.workspaces = Workspaces(s, self.store.engine)
        self.slack = SlackGateway(
            s.slack_bot_token,
            s.slack_api_url,
            token_for=self.workspaces.token_for if s.oauth_enabled else None,
        )
        self.links = Links(s, self.store, self.secrets)
        self.pacer = Pacer(self.store, cap=s.slack_post_cap)
        self.outbox = OutboxWorker(
            self.store,
            self.slack,
            self.links,
            self.pacer,
            workers=s.fanout_workers,
            owner=self.owner,
            lease=s.outbox_lease,
            on_result=self.metrics.outbox_result,
        )
        self.streams = Streams(self.store)
        self.calls = SlackCalls.when_enabled(
            s, self.store, self.slack, clock=clock, is_live=self.streams.is_live
        )
        self.home = HomeTab(
            self.store,
            self.slack,
            self.submit,
            functools.partial(list_schedules, self.store),
            max_ttl=s.max_room_ttl,
        )

        # Rooms and schedules.
        self.rooms = Rooms(
            s,
            self.store,
            self.ams,
            self.slack,
            self.secrets,
            self.links,
            self.outbox,
            owner=self.owner,
            clock=clock,
            streams=self.streams,
            calls=self.calls,
            on_change=self.home.changed,
            on_event=self.metrics.room_event,
        )
        self.sweep = Sweep(self.rooms)
        self.access = Access(self.store, self.secrets, self.streams, clock=clock)
        self.schedules = Schedules(s, self.store, self.rooms, self.slack, clock=clock)
        self.scheduler: Scheduler | None = None
        self._readiness: Readiness | None = None

    # -- HTTP ---------------------------------------------------------------------
    def bolt_app(self, listeners: list[Listener] | None = None) -> App:
        """Bolt's App with the listeners of ``handlers/`` (or ``listeners``) registered."""
        chosen = listeners if listeners is not None else load_listeners()

        def register(app: App) -> None:
            for listener in chosen:
                listener(app, self)

        return build_bolt_app(self.settings, self.workspaces, register)

    def wsgi_app(self, bolt_app: App | None) -> Route:
        """The one HTTP endpoint; ``bolt_app`` None in Socket Mode (no ``/slack/`` routes)."""
        s = self.settings
        routes: list[tuple[str, Route]] = []
        if self.calls is not None:  # before /join/: a Call's join URL is /join/room/<id>
            signin = CallSignIn(s, self.store, self.rooms, self.links, self.slack, clock=self.clock)
            routes.append((CALL_JOIN_PREFIX, signin))
        routes += [
            (HOOK_PREFIX, AmsHook(s, self.streams, self.calls)),
            (JOIN_PREFIX, JoinLinks(s, self.store, self.links, clock=self.clock)),
            (WEBHOOK_PREFIX, AmsAuth(s, self.access, observe=self.metrics.observe_webhook)),
        ]
        if self._readiness is None:
            self._readiness = Readiness.for_settings(
                self.store, s, observer=self.metrics.observe_ams
            )
        slack = SlackRoute(bolt_app, s.slack_signing_secret or "") if bolt_app else None
        return wsgi_app(metrics=self.metrics, readiness=self._readiness, slack=slack, routes=routes)

    # -- the stream secret --------------------------------------------------------------
    def prepare_secret(self) -> None:
        """At start: seed and settle the stored stream secret (no-op when static)."""
        if self.vault is None or self.rotating is None:
            return
        bootstrap(self.settings, self.store, self.vault, self.mgmt)
        if self.mgmt is not None:
            log.info(
                "stream secret: %s",
                settle(self.settings, self.store, self.vault, self.mgmt, owner=self.owner),
            )
        self.rotating.invalidate()

    def rotate_if_due(self) -> str | None:
        """The sweep's rotation step: at most one replica rotates, when the secret aged out."""
        result = rotate(
            self.settings,
            self.store,
            self.vault,
            self.mgmt,
            owner=self.owner,
            now=int(self.clock()),
            on_rotated=self._rotated,
        )
        return result.reason if result.rotated else None

    def _rotated(self, version: int) -> None:
        assert self.rotating is not None
        self.rotating.invalidate()
        self.reissue_links()

    def reissue_links(self) -> int:
        """Edit DMs once per new secret version (click-time links need no edit)."""
        if self.rotating is None or self.settings.public_url:
            return 0
        version, _ = self.rotating.current()
        return self.rooms.reissue_links(version)

    # -- work after the ack ------------------------------------------------------------
    def submit(
        self, fn: Callable[..., Any], *args: Any, reply_to: str | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Run ``fn`` after the ack, on the bot's own pool; exceptions are logged, never lost.

        ``reply_to``: the request's ``response_url``. If the work fails in a way
        nobody planned for (a database locked past its busy timeout, a bug),
        the person who asked still hears that it did not happen.
        """

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception:
                log.exception("background task %s failed", getattr(fn, "__name__", fn))
                if reply_to:
                    self.slack.respond(reply_to, UNEXPECTED_FAILURE)
                raise

        # Copy the caller's context so its correlation id and workspace follow the work.
        return self._background.submit(contextvars.copy_context().run, run)

    def uninstall(self, team_id: str | None, enterprise_id: str | None, why: str) -> None:
        """``app_uninstalled`` / ``tokens_revoked``: end the workspace's rooms and
        schedules, then forget its installation."""
        log.warning("workspace %s: %s; ending its rooms and schedules", team_id, why)
        if team_id:
            ended = self.rooms.end_workspace(team_id, reason=f"the app was {why}")
            stopped = self.schedules.stop_workspace(team_id)
            log.info("workspace %s: %d rooms ended, %d schedules stopped", team_id, ended, stopped)
        self.workspaces.forget(team_id, enterprise_id)

    # -- the scheduler -----------------------------------------------------------------
    def sweep_tasks(self) -> dict[str, Callable[[], object]]:
        """The units of due work every replica looks for on each tick."""
        tasks: dict[str, Callable[[], object]] = {
            "expire": self.sweep.expired_rooms,
            "cleanup": self.sweep.failed_opens,
            "reconcile": self.reconcile_if_due,
            "schedules": lambda: self.schedules.fire_due(self.owner),
        }
        if self.settings.rotation_enabled and self.mgmt is not None:
            tasks["rotate"] = self.rotate_if_due
        if self.vault is not None:
            # A rotation by another replica or by `meetbot rotate-secret`.
            tasks["reissue"] = self.reissue_links
        if self.calls is not None:
            tasks["calls"] = self.calls.sweep
        return tasks

    def reconcile_if_due(self) -> object:
        return ams_reconcile.run_if_due(
            self.store,
            self.ams,
            self.rooms.mark_vanished,
            owner=self.owner,
            now=int(self.clock()),
            interval=self.settings.reconcile_interval,
            remove=self.rooms.end_on_ams,
        )

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Send the outbox and run the scheduler (``serve`` and ``demo`` only)."""
        self.outbox.start()
        self.scheduler = Scheduler(self.settings.sweep_interval, self.sweep_tasks())
        self.scheduler.start()

    def stop(self) -> None:
        """Finish work in hand, hand back leases, close connections."""
        self.home.close()  # unpublished Homes can be dropped: the next opening draws them
        if self.scheduler is not None:
            self.scheduler.stop()
        self._background.shutdown(wait=True, cancel_futures=False)
        self.schedules.close()
        if self.calls is not None:
            self.calls.close()
        self.outbox.stop()
        self.sweep.close()
        self.rooms.close()
        self.store.release_rooms(self.owner)
        if self._readiness is not None:
            self._readiness.close()
        self.ams.close()
        self.store.dispose()
