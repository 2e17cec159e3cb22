"""``/meet`` and its sub-commands.

Every branch acks within a few milliseconds: bad input is answered in the ack
itself, cheap reads (help, list) too, and anything that touches AMS or sends
DMs is handed to ``services.submit`` after the ack.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot.rooms.service import OpenRequest
from handlers import grammar, schedule_commands

if TYPE_CHECKING:
    from slack_bolt import Ack, App
    from slack_sdk import WebClient

    from bot.services import Services

log = logging.getLogger("meetbot.handlers")


def register(app: App, services: Services) -> None:
    @app.command("/meet")
    def meet(ack: Ack, command: dict[str, Any], client: WebClient) -> None:
        handle_meet(ack, command, services, client)


def handle_meet(ack: Ack, command: dict[str, Any], services: Services, client: WebClient) -> None:
    """``client`` is Bolt's, with the token of the workspace the command came from
    (in multi-workspace mode no other client has it): the schedule form needs it."""
    settings = services.settings
    user = str(command.get("user_id") or "")
    team = str(command.get("team_id") or "")
    if not user or not team:
        ack(text="That request was missing who sent it; please try again.")
        return
    try:
        cmd = grammar.parse_meet(
            str(command.get("text") or ""), requester=user, max_ttl=settings.max_room_ttl
        )
    except grammar.UsageError as e:
        ack(text=str(e))
        return
    response_url = command.get("response_url")
    rooms = services.rooms
    match cmd:
        case grammar.Help():
            ack(text=grammar.HELP_TEXT)
        case grammar.ListRooms():
            ack(text=rooms.list_text(team, user))
        case grammar.Open(topic=topic, invitees=invitees, duration=duration):
            ack(text="Creating your room…")
            services.submit(
                rooms.open_room,
                OpenRequest(
                    team_id=team,
                    user_id=user,
                    channel_id=str(command.get("channel_id") or user),
                    topic=topic,
                    invitees=invitees,
                    duration=duration,
                    response_url=response_url,
                    enterprise_id=command.get("enterprise_id") or None,
                ),
                reply_to=response_url,
            )
        case grammar.End(room_id=room_id):
            ack(text=f"Ending room `{room_id}`…")
            services.submit(
                rooms.end_room, team, room_id, user, response_url, reply_to=response_url
            )
        case grammar.Extend(room_id=room_id, duration=duration):
            ack(text=f"Extending room `{room_id}`…")
            services.submit(
                rooms.extend, team, room_id, user, duration, response_url, reply_to=response_url
            )
        case grammar.Schedule() | grammar.ScheduleModal():
            schedule_commands.handle(cmd, ack, command, services, client)
        case grammar.Schedules() | grammar.Unschedule():
            schedule_commands.handle(cmd, ack, command, services, client)
        case grammar.Kick(room_id=room_id, user_id=target):
            ack(text=f"Removing <@{target}> from room `{room_id}`…")
            services.submit(
                rooms.kick, team, room_id, user, target, response_url, reply_to=response_url
            )
        case _:
            ack(text="That part of `/meet` is not available yet. Try `/meet help`.")
