"""The "Meet about this" message shortcut (``meet_about_message`` in manifest.yml).

Opens a room in the message's channel, named after the message, with the
message's author invited. The listener only acks and reads the payload; the
``users.info`` of the author and the room itself happen after the ack.

The clicker hears the outcome through the shortcut's ``response_url``, or,
when a payload has none, as an ephemeral message in the channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.rooms.service import OpenRequest
from bot.slack.gateway import UnknownUser
from handlers.topics import topic_from_message

if TYPE_CHECKING:
    from slack_bolt import Ack, App

    from bot.services import Services

log = logging.getLogger("meetbot.handlers")

CALLBACK_ID = "meet_about_message"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class AboutMessage:
    """What the shortcut needs from the payload, read once in the listener."""

    team_id: str
    enterprise_id: str | None
    user_id: str
    channel_id: str
    topic: str
    author_id: str | None
    response_url: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> AboutMessage | None:
        """None when the payload lacks who clicked, where, or on which message."""
        user = _dict(body.get("user"))
        message = _dict(body.get("message"))
        team = _text(_dict(body.get("team")).get("id")) or _text(user.get("team_id"))
        channel = _text(_dict(body.get("channel")).get("id"))
        clicker = _text(user.get("id"))
        if not (team and channel and clicker and message):
            return None
        author = _text(message.get("user"))
        # Bots (and apps posting as bots) cannot join a room; nor need you invite yourself.
        is_bot = bool(message.get("bot_id")) or message.get("subtype") == "bot_message"
        return cls(
            team_id=team,
            enterprise_id=_text(_dict(body.get("enterprise")).get("id")) or None,
            user_id=clicker,
            channel_id=channel,
            topic=topic_from_message(_text(message.get("text"))),
            author_id=author if author and author != clicker and not is_bot else None,
            response_url=_text(body.get("response_url")) or None,
        )


def _teller(services: Services, about: AboutMessage) -> Callable[[str], None]:
    """How the clicker hears things: response_url, else an ephemeral in the channel."""

    def tell(text: str) -> None:
        if about.response_url:
            services.slack.respond(about.response_url, text)
        else:
            services.slack.post_ephemeral(about.channel_id, about.user_id, text)

    return tell


def meet_about(services: Services, about: AboutMessage) -> None:
    """After the ack: check the author can be invited, then open the room."""
    tell = _teller(services, about)
    invitees: tuple[str, ...] = ()
    if about.author_id:
        note = None
        try:
            info = services.slack.user_info(about.author_id)
            if info.is_bot:
                note = "its author is a bot"
            elif info.deleted:
                note = "its author is deactivated"
            else:
                invitees = (about.author_id,)
        except UnknownUser:
            note = "I can't find its author in this workspace"
        except Exception as e:  # Slack unreachable: open the room anyway, say so
            log.warning("users.info for a message author failed: %s", type(e).__name__)
            note = "Slack didn't tell me who its author is"
        if note:
            tell(f"Opening a room about that message without inviting anyone: {note}.")
    services.rooms.open_room(
        OpenRequest(
            team_id=about.team_id,
            user_id=about.user_id,
            channel_id=about.channel_id,
            topic=about.topic,
            invitees=invitees,
            response_url=about.response_url,
            enterprise_id=about.enterprise_id,
            notify=None if about.response_url else tell,
        )
    )


def register(app: App, services: Services) -> None:
    """Wire the message shortcut."""

    @app.message_shortcut(CALLBACK_ID)
    def meet_about_clicked(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        about = AboutMessage.from_body(body)
        if about is None:
            log.warning("meet_about_message payload without user, channel or message")
            return
        services.submit(meet_about, services, about, reply_to=about.response_url)
