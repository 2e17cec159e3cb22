"""What the person who asked hears: refusals, confirmations, how the invitations went.

A reply goes through the request's ``response_url`` when there is one (slash
commands, buttons in messages). Clicks on the App Home have none: their
handler names a sink with :func:`replies_to` (the Home's notice), and an
``OpenRequest`` may carry its own ``notify`` (the New-room modal, a shortcut).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from bot.slack import messages
from bot.slack.gateway import SlackGateway
from bot.store import Outbox, OutboxState, Room, RoomState, Store

__all__ = ["DM_FAILURE_REASONS", "Replies", "replies_to"]

log = logging.getLogger("meetbot.rooms")

#: Where replies meant for the person go when their request has no response_url
#: (clicks on the App Home): set with ``replies_to`` around the call.
REPLY_SINK: ContextVar[Callable[[str], None] | None] = ContextVar("meetbot_reply", default=None)

# What a failed DM means for the person who opened the room.
DM_FAILURE_REASONS = {
    "cannot_dm_bot": "is a bot",
    "user_not_found": "was not found",
    "user_disabled": "is deactivated",
    "account_inactive": "is deactivated",
    "channel_not_found": "can't receive DMs from this app",
}


@contextmanager
def replies_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Send the replies made in this block (refusals, confirmations) to ``sink``."""
    reset = REPLY_SINK.set(sink)
    try:
        yield
    finally:
        REPLY_SINK.reset(reset)


class Replies:
    """Tells the person who asked, by whichever way their request allows."""

    def __init__(self, store: Store, slack: SlackGateway) -> None:
        self.store = store
        self.slack = slack

    def tell(self, response_url: str | None, text: str) -> None:
        sink = REPLY_SINK.get()
        if response_url:
            self.slack.respond(response_url, text)
        elif sink is not None:
            sink(text)
        else:
            log.info("no response_url for a reply to the user")

    def tell_requester(
        self, response_url: str | None, notify: Callable[[str], None] | None, text: str
    ) -> None:
        """Through the request's response_url, else its ``notify`` (Home, shortcuts)."""
        if response_url or notify is None:
            self.tell(response_url, text)
            return
        try:
            notify(text)
        except Exception:
            log.exception("could not tell the requester of a room")

    def fanout_done(
        self,
        room: Room,
        rows: list[Outbox],
        response_url: str | None,
        notify: Callable[[str], None] | None,
    ) -> None:
        """Once the room's DMs and card are out: tell the requester how it went.

        A card Slack refused (a private channel or DM the bot is not in) is
        posted through the response_url instead, which works there.
        """
        card = next((r for r in rows if r.kind == "room_card"), None)
        if card is not None and card.state == OutboxState.FAILED and response_url:
            current = self.store.room(room.id)
            if current is not None and current.state == RoomState.ACTIVE:
                text, blocks = messages.room_card(
                    room_id=room.id,
                    topic=room.topic,
                    owner_id=room.owner_id,
                    expires_at=room.expires_at,
                    call_id=current.slack_call_id,
                )
                self.slack.respond(response_url, text, blocks=blocks, in_channel=True)
        dms = [r for r in rows if r.kind == "dm_link"]
        sent = [r.channel for r in dms if r.state == OutboxState.DONE]
        failed = [r for r in dms if r.state == OutboxState.FAILED]
        title = messages.escape(messages.topic_or_default(room.topic))
        lines = [f"Your room *{title}* is open until {messages.when(room.expires_at)}."]
        if sent:
            lines.append("Personal links went by DM to " + messages.mention_list(sent) + ".")
        for r in failed:
            reason = DM_FAILURE_REASONS.get(r.error or "", f"could not be reached ({r.error})")
            lines.append(
                f":warning: I couldn't DM <@{r.channel}>: they {reason}. "
                "They can still press *Get my link* on the room's message."
            )
        self.tell_requester(response_url, notify, "\n".join(lines))
