"""``/meet schedule``, ``/meet schedules``, ``/meet unschedule``: team rooms of a channel.

Each acks at once; ``users.info`` lookups and database work run after the ack
on ``services.submit`` and answer through the command's ``response_url``
(which also works in private channels the bot is not in). The one exception
is the bare ``/meet schedule``: its ``views.open`` runs in the listener, since
the ``trigger_id`` expires 3 s after Slack sent it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot.schedules.service import ScheduleError
from handlers import grammar, views

if TYPE_CHECKING:
    from slack_bolt import Ack
    from slack_sdk import WebClient

    from bot.services import Services

log = logging.getLogger("meetbot.handlers")

FORM_FAILED = (
    "I couldn't open the scheduling form (Slack may have taken too long). Try again, or type "
    "it: `/meet schedule standup every weekday at 09:30 for 15m @someone`."
)


def handle(
    cmd: grammar.Command,
    ack: Ack,
    command: dict[str, Any],
    services: Services,
    client: WebClient,
) -> None:
    """Answer one schedule sub-command of ``/meet`` (already parsed into ``cmd``).

    ``client`` is the listener's (Bolt's): it carries the token of the workspace
    the command came from, the only one that may open a form there (with
    multi-workspace installs there is no ``SLACK_BOT_TOKEN`` to fall back on).
    """
    user = str(command.get("user_id") or "")
    team = str(command.get("team_id") or "")
    channel = str(command.get("channel_id") or user)
    response_url = command.get("response_url")
    enterprise = command.get("enterprise_id") or None
    match cmd:
        case grammar.ScheduleModal():
            ack()
            opened = views.open_schedule_modal(
                client,
                str(command.get("trigger_id") or ""),
                user_id=user,
                channel_id=channel,
                services=services,
            )
            if not opened and response_url:
                services.submit(services.slack.respond, response_url, FORM_FAILED)
        case grammar.Schedule(name=name, when=when, duration=duration, invitees=invitees):
            ack(text="Scheduling…")
            services.submit(
                create,
                services,
                team,
                channel,
                user,
                name,
                when,
                duration,
                invitees,
                enterprise,
                response_url,
            )
        case grammar.Schedules():
            ack()
            services.submit(list_channel, services, team, channel, response_url)
        case grammar.Unschedule(schedule_id=schedule_id):
            ack(text=f"Stopping schedule `{schedule_id}`…")
            services.submit(cancel, services, team, schedule_id, user, response_url)
        case _:
            ack(text="That part of `/meet` is not available yet. Try `/meet help`.")


def _answer(services: Services, response_url: str | None, text: str) -> None:
    if response_url:
        services.slack.respond(response_url, text)
    else:
        log.info("no response_url for a schedule reply")


def create(
    services: Services,
    team_id: str,
    channel_id: str,
    user_id: str,
    name: str,
    when: str,
    duration: int | None,
    invitees: tuple[str, ...],
    enterprise_id: str | None,
    response_url: str | None,
) -> None:
    """After the ack: store the schedule and tell the requester what was stored."""
    try:
        schedule = services.schedules.create(
            team_id,
            channel_id,
            user_id,
            name,
            when,
            duration,
            invitees,
            enterprise_id=enterprise_id,
        )
    except ScheduleError as e:
        _answer(services, response_url, e.user_message)
        return
    _answer(services, response_url, services.schedules.confirmation(schedule))


def list_channel(
    services: Services, team_id: str, channel_id: str, response_url: str | None
) -> None:
    _answer(services, response_url, services.schedules.channel_text(team_id, channel_id))


def cancel(
    services: Services, team_id: str, schedule_id: str, user_id: str, response_url: str | None
) -> None:
    _answer(services, response_url, services.schedules.cancel(team_id, schedule_id, user_id))
