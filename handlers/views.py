"""Modals: the "schedule a team room" form.

Opened by a bare ``/meet schedule`` and by the global shortcut
``meet_schedule_shortcut``. ``views.open`` is called right in the listener:
a ``trigger_id`` dies 3 s after Slack sent it, so it cannot wait in a queue.

On submission the form is checked while Slack waits for the ack (missing
fields, a one-off in the past, a length over the maximum, bots among the
people), so mistakes show up next to the field. Those checks need the
person's time zone and who the invitees are: ``users.info`` answers, looked up
in parallel within a fixed budget (opening the form warms the cache). What
cannot be known in time is checked again by ``Schedules.create`` after the
ack, and the creator gets the outcome by DM.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient
from slack_sdk.models.blocks import (
    CheckboxesElement,
    ConversationFilter,
    ConversationSelectElement,
    DatePickerElement,
    InputBlock,
    Option,
    PlainTextInputElement,
    StaticSelectElement,
    TimePickerElement,
    UserMultiSelectElement,
)
from slack_sdk.models.views import View

from bot.config import Settings
from bot.durations import format_duration
from bot.logs import ContextThreadPoolExecutor
from bot.schedules.rules import parse_when
from bot.schedules.service import MAX_NAME, ScheduleError
from bot.slack.gateway import SlackSendError, UnknownUser, UserInfo

if TYPE_CHECKING:
    from slack_bolt import Ack, App

    from bot.services import Services

log = logging.getLogger("meetbot.handlers")

CALLBACK_ID = "meet_schedule_modal"
SHORTCUT_ID = "meet_schedule_shortcut"
ACTION = "value"  # the action_id of every input: block_id says which field it is
B_NAME = "name"
B_CHANNEL = "channel"
B_TIME = "time"
B_REPEAT = "repeat"
B_DAYS = "days"
B_DATE = "date"
B_DURATION = "duration"
B_INVITEES = "invitees"

MAX_INVITEES = 50
#: views.open must finish inside the 3 s that the trigger_id lives.
VIEWS_TIMEOUT_S = 2
#: Time the submission checks may spend asking users.info, inside Slack's 3 s.
LOOKUP_BUDGET_S = 1.0

DURATION_CHOICES = (("15m", 900), ("30m", 1800), ("45m", 2700), ("1h", 3600), ("2h", 7200))
REPEAT_CHOICES = (
    ("once", "Once"),
    ("daily", "Every day"),
    ("weekdays", "Every weekday (Mon–Fri)"),
    ("days", "On the days ticked below"),
)
DAY_CHOICES = (
    ("mon", "Monday"),
    ("tue", "Tuesday"),
    ("wed", "Wednesday"),
    ("thu", "Thursday"),
    ("fri", "Friday"),
    ("sat", "Saturday"),
    ("sun", "Sunday"),
)

_lookups: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _lookups
    if _lookups is None:
        _lookups = ContextThreadPoolExecutor(max_workers=8, thread_name_prefix="modal")
    return _lookups


# -- the form ---------------------------------------------------------------------------


def _options(pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> list[Option]:
    return [Option(value=value, text=label) for value, label in pairs]


def schedule_modal(*, channel_id: str | None, settings: Settings) -> dict[str, Any]:
    """The form as a ``views.open`` payload. ``channel_id`` pre-selects the channel."""
    durations = [(format_duration(s), s) for _, s in DURATION_CHOICES if s <= settings.max_room_ttl]
    if not durations:
        durations = [(format_duration(settings.max_room_ttl), settings.max_room_ttl)]
    default_ttl = next((d for d in durations if d[1] == settings.room_ttl), durations[0])
    duration_options = _options([(str(s), label) for label, s in durations])
    repeat_options = _options(list(REPEAT_CHOICES))
    day_options = _options(list(DAY_CHOICES))
    channel_kwargs: dict[str, Any] = {}
    if channel_id and channel_id[:1] in ("C", "G"):
        channel_kwargs["initial_conversation"] = channel_id
    else:
        channel_kwargs["default_to_current_conversation"] = True
    blocks = [
        InputBlock(
            block_id=B_NAME,
            label="Name",
            element=PlainTextInputElement(
                action_id=ACTION, placeholder="e.g. Standup", max_length=MAX_NAME
            ),
        ),
        InputBlock(
            block_id=B_CHANNEL,
            label="Channel",
            hint="The room card is posted here; everyone gets their own link by DM.",
            element=ConversationSelectElement(
                action_id=ACTION,
                filter=ConversationFilter(include=["public", "private"], exclude_bot_users=True),
                **channel_kwargs,
            ),
        ),
        InputBlock(
            block_id=B_TIME,
            label="Time",
            hint="In your own time zone, as set in Slack.",
            element=TimePickerElement(action_id=ACTION, initial_time="09:30"),
        ),
        InputBlock(
            block_id=B_REPEAT,
            label="Repeat",
            element=StaticSelectElement(
                action_id=ACTION, options=repeat_options, initial_option=repeat_options[2]
            ),
        ),
        InputBlock(
            block_id=B_DAYS,
            label="Days",
            optional=True,
            hint='Only for "On the days ticked below".',
            element=CheckboxesElement(action_id=ACTION, options=day_options),
        ),
        InputBlock(
            block_id=B_DATE,
            label="Date",
            optional=True,
            hint='Only for "Once"; leave empty for the next time it is that time.',
            element=DatePickerElement(action_id=ACTION),
        ),
        InputBlock(
            block_id=B_DURATION,
            label="Length",
            element=StaticSelectElement(
                action_id=ACTION,
                options=duration_options,
                initial_option=duration_options[durations.index(default_ttl)],
            ),
        ),
        InputBlock(
            block_id=B_INVITEES,
            label="People",
            optional=True,
            hint="You are always in your own room.",
            element=UserMultiSelectElement(action_id=ACTION, max_selected_items=MAX_INVITEES),
        ),
    ]
    view = View(
        type="modal",
        callback_id=CALLBACK_ID,
        title="Schedule a team room",
        submit="Schedule",
        close="Cancel",
        private_metadata=json.dumps({"channel_id": channel_id or ""}),
        blocks=blocks,
    )
    return view.to_dict()


def open_schedule_modal(
    client: WebClient,
    trigger_id: str,
    *,
    user_id: str,
    channel_id: str | None,
    services: Services,
) -> bool:
    """``views.open`` at once (the trigger_id expires in 3 s); False when Slack refused."""
    if not trigger_id:
        return False
    # The listener's client has the workspace's token; this call gets a timeout
    # inside the trigger's 3 s and no retry (a trigger_id opens one view only).
    quick = WebClient(
        token=client.token, base_url=client.base_url, timeout=VIEWS_TIMEOUT_S, retry_handlers=[]
    )
    try:
        quick.views_open(
            trigger_id=trigger_id,
            view=schedule_modal(channel_id=channel_id, settings=services.settings),
        )
    except Exception as e:  # SlackApiError (expired trigger...) or the network
        log.warning("views.open for the schedule form failed: %s", e)
        return False
    services.submit(_warm, services, user_id)
    return True


def _warm(services: Services, user_id: str) -> None:
    """Fetch the person's users.info now, so the submission finds their zone cached."""
    try:
        services.slack.user_info(user_id)
    except Exception as e:  # only a cache warm-up
        log.debug("users.info warm-up failed: %s", e)


# -- the submission ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleForm:
    """What the person filled in, read from ``view.state.values``."""

    name: str
    channel_id: str | None
    time: str | None
    repeat: str
    days: tuple[str, ...]
    date: str | None
    duration: int | None
    invitees: tuple[str, ...]

    def when_text(self) -> str:
        """The same ``<when>`` the /meet grammar takes, so one parser decides."""
        at = f"at {self.time}"
        if self.repeat == "daily":
            return f"every day {at}"
        if self.repeat == "weekdays":
            return f"every weekday {at}"
        if self.repeat == "days":
            return f"every {','.join(self.days)} {at}"
        return f"at {self.date} {self.time}" if self.date else at


def _value(values: dict[str, Any], block: str) -> dict[str, Any]:
    entry = (values.get(block) or {}).get(ACTION)
    return entry if isinstance(entry, dict) else {}


def read_form(values: dict[str, Any], *, fallback_channel: str | None = None) -> ScheduleForm:
    """Turn Slack's ``state.values`` into a :class:`ScheduleForm` (missing fields → None)."""
    name = " ".join(str(_value(values, B_NAME).get("value") or "").split())
    channel = _value(values, B_CHANNEL).get("selected_conversation") or fallback_channel or None
    repeat_opt = _value(values, B_REPEAT).get("selected_option") or {}
    days_opts = _value(values, B_DAYS).get("selected_options") or []
    known_days = {d for d, _ in DAY_CHOICES}
    days = tuple(d for d, _ in DAY_CHOICES if d in {o.get("value") for o in days_opts})
    duration_opt = _value(values, B_DURATION).get("selected_option") or {}
    try:
        duration = int(duration_opt.get("value")) if duration_opt.get("value") else None
    except (TypeError, ValueError):
        duration = None
    users = _value(values, B_INVITEES).get("selected_users") or []
    return ScheduleForm(
        name=name,
        channel_id=str(channel) if channel else None,
        time=_value(values, B_TIME).get("selected_time") or None,
        repeat=str(repeat_opt.get("value") or "once"),
        days=tuple(d for d in days if d in known_days),
        date=_value(values, B_DATE).get("selected_date") or None,
        duration=duration,
        invitees=tuple(dict.fromkeys(str(u) for u in users)),
    )


def _lookup(services: Services, user_ids: list[str]) -> dict[str, UserInfo | Exception]:
    """users.info for each id, in parallel; ids not answered within the budget are left out."""
    futures: dict[str, Future[UserInfo]] = {
        u: _pool().submit(services.slack.user_info, u) for u in user_ids
    }
    wait(list(futures.values()), timeout=LOOKUP_BUDGET_S)
    out: dict[str, UserInfo | Exception] = {}
    for user, fut in futures.items():
        if fut.done():
            exc = fut.exception()
            out[user] = exc if isinstance(exc, Exception) else fut.result()
    return out


def validate(
    form: ScheduleForm, *, user_id: str, services: Services, now: datetime | None = None
) -> dict[str, str]:
    """Errors by block_id, in words for the person; empty when the form may be stored."""
    settings = services.settings
    errors: dict[str, str] = {}
    if not form.name:
        errors[B_NAME] = "Give the team room a name."
    elif len(form.name) > MAX_NAME:
        errors[B_NAME] = f"Keep the name to {MAX_NAME} characters."
    if not form.channel_id:
        errors[B_CHANNEL] = "Pick the channel that gets the room card."
    if not form.time:
        errors[B_TIME] = "Pick a time."
    if form.repeat == "days" and not form.days:
        errors[B_DAYS] = "Tick at least one day."
    if form.duration is None or form.duration <= 0:
        errors[B_DURATION] = "Pick how long the room stays open."
    elif form.duration > settings.max_room_ttl:
        errors[B_DURATION] = f"A room can last at most {format_duration(settings.max_room_ttl)}."
    invitees = [u for u in form.invitees if u != user_id]
    if len(invitees) > MAX_INVITEES:
        errors[B_INVITEES] = f"At most {MAX_INVITEES} people per room."
    found = _lookup(services, [user_id, *invitees[:MAX_INVITEES]])
    me = found.get(user_id)
    if isinstance(me, UserInfo) and form.time and B_TIME not in errors and B_DAYS not in errors:
        try:
            parse_when(form.when_text(), now_utc=now or datetime.now(UTC), tz=me.tz or "UTC")
        except ValueError as e:
            errors[B_DATE if form.repeat == "once" and form.date else B_TIME] = str(e)
    refused = []
    for user in invitees:
        info = found.get(user)
        if isinstance(info, UnknownUser):
            refused.append(f"{user} is not in this workspace")
        elif isinstance(info, UserInfo) and info.is_bot:
            refused.append(f"{info.display_name or info.name} is a bot")
        elif isinstance(info, UserInfo) and info.deleted:
            refused.append(f"{info.display_name or info.name} is deactivated")
    if refused and B_INVITEES not in errors:
        errors[B_INVITEES] = "Only people can join: " + "; ".join(refused) + "."
    return errors


def handle_submission(ack: Ack, body: dict[str, Any], services: Services) -> None:
    """Validate while Slack waits, then store the schedule after the ack and DM the creator."""
    view = body.get("view") or {}
    user = str((body.get("user") or {}).get("id") or "")
    team = str((body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or "")
    enterprise = (body.get("enterprise") or {}).get("id") or None
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except (TypeError, ValueError):  # not a string, or not JSON: no context, not a crash
        meta = {}
    fallback = meta.get("channel_id") if isinstance(meta, dict) else None
    form = read_form((view.get("state") or {}).get("values") or {}, fallback_channel=fallback)
    if not user or not team:
        ack(response_action="errors", errors={B_NAME: "Slack didn't say who you are; try again."})
        return
    errors = validate(form, user_id=user, services=services)
    if errors:
        ack(response_action="errors", errors=errors)
        return
    ack()
    services.submit(create_from_form, services, team, user, form, enterprise)


def create_from_form(
    services: Services, team_id: str, user_id: str, form: ScheduleForm, enterprise_id: str | None
) -> None:
    """After the ack: store the schedule and tell the creator how it went, by DM."""
    try:
        schedule = services.schedules.create(
            team_id,
            form.channel_id or user_id,
            user_id,
            form.name,
            form.when_text(),
            form.duration,
            [u for u in form.invitees if u != user_id],
            enterprise_id=enterprise_id,
        )
        text = services.schedules.confirmation(schedule)
    except ScheduleError as e:
        text = e.user_message
    try:
        services.slack.post(user_id, text)
    except SlackSendError as e:
        log.warning("could not DM the schedule confirmation: %s", e.error)


def register(app: App, services: Services) -> None:
    """Wire the schedule form: the global shortcut and the submission."""

    @app.shortcut(SHORTCUT_ID)
    def schedule_shortcut(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        user = str((body.get("user") or {}).get("id") or "")
        open_schedule_modal(
            client,
            str(body.get("trigger_id") or ""),
            user_id=user,
            channel_id=None,
            services=services,
        )

    @app.view(CALLBACK_ID)
    def schedule_submitted(ack: Ack, body: dict[str, Any]) -> None:
        handle_submission(ack, body, services)
