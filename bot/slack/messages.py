"""What people see: every Slack message and reply meetbot builds.

Built with slack_sdk's Block Kit models so Slack's limits (section text 3,000
characters, button text 75, 50 blocks) are checked here rather than by an
``invalid_blocks`` from Slack in production. Each builder returns
``(text, blocks)``: ``text`` is the notification fallback and never carries a
link with a token in it, because fallbacks surface in push notifications and
email digests.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    CallBlock,
    ContextBlock,
    MarkdownTextObject,
    SectionBlock,
)

Blocks = list[dict[str, Any]]

ACTION_GET_LINK = "meet_get_link"
ACTION_JOIN = "meet_join"  # URL button: Slack still sends block_actions for it
ACTION_EXTEND = "meet_extend"
ACTION_END = "meet_end"


def escape(text: str) -> str:
    """Make user text inert in mrkdwn (no mentions, no links, no @channel)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def when(ts: int) -> str:
    """A time every reader sees in their own zone, with a UTC fallback."""
    fallback = datetime.fromtimestamp(ts, UTC).strftime("%H:%M UTC")
    return f"<!date^{int(ts)}^{{time}}|{fallback}>"


def schedule_late(*, name: str, due: int, until: int, reason: str) -> str:
    """Said once in a schedule's channel when its room did not open on time.

    ``reason`` is the requester-facing text of the failure (no link, no secret).
    """
    parts = [
        f"The *{escape(topic_or_default(name))}* room due at {when(due)} did not open.",
        reason,
        f"I'll keep trying until {when(until)}: its card will appear here if it opens.",
    ]
    return " ".join(p for p in parts if p)


def topic_or_default(topic: str) -> str:
    return topic or "Meeting"


def _blocks(*blocks: Any) -> Blocks:
    return [b.to_dict() for b in blocks]


def room_card(
    *,
    room_id: str,
    topic: str,
    owner_id: str,
    expires_at: int,
    ended: bool = False,
    call_id: str | None = None,
) -> tuple[str, Blocks]:
    """The channel message: who opened which room until when. No link in it.

    ``call_id``: the room's Slack Call (bot/slack/calls.py); an open room's card then
    shows the Call, whose Join button signs the clicker in for their own link.
    """
    title = escape(topic_or_default(topic))
    if ended:
        text = f"The room “{title}” has ended."
        return text, _blocks(
            SectionBlock(text=MarkdownTextObject(text=f":white_circle: *{title}* has ended.")),
            ContextBlock(elements=[MarkdownTextObject(text=f"Opened by <@{owner_id}>")]),
        )
    text = f"<@{owner_id}> opened a room: {title}"
    return text, _blocks(
        SectionBlock(
            text=MarkdownTextObject(
                text=f":large_green_circle: <@{owner_id}> opened *{title}*, "
                f"open until {when(expires_at)}."
            )
        ),
        *([CallBlock(call_id=call_id)] if call_id else []),
        ActionsBlock(
            block_id=f"room:{room_id}",
            elements=[
                ButtonElement(
                    text="Get my link", action_id=ACTION_GET_LINK, value=room_id, style="primary"
                )
            ],
        ),
        ContextBlock(
            elements=[
                MarkdownTextObject(text="Each person gets their own link by DM. Don't share yours.")
            ]
        ),
    )


def invite_dm(
    *,
    room_id: str,
    topic: str,
    owner_id: str,
    expires_at: int,
    link: str,
    is_owner: bool,
) -> tuple[str, Blocks]:
    """The DM with a personal link, as a button so the long URL stays out of sight."""
    title = escape(topic_or_default(topic))
    who = "Your room" if is_owner else f"<@{owner_id}> invited you to"
    text = f"Your personal link to {title} is ready."
    buttons = [
        ButtonElement(text="Join the room", action_id=ACTION_JOIN, url=link, style="primary"),
    ]
    if is_owner:
        # The end the owner saw rides along: a double click extends once.
        buttons.append(
            ButtonElement(
                text="Extend 30 min", action_id=ACTION_EXTEND, value=f"{room_id}|{expires_at}"
            )
        )
    return text, _blocks(
        SectionBlock(
            text=MarkdownTextObject(
                text=f"{who} *{title}*, open until {when(expires_at)}.\n"
                "This link is yours alone: it carries your name and stops working "
                "when the room ends."
            )
        ),
        ActionsBlock(block_id=f"dm:{room_id}", elements=buttons),
        ContextBlock(elements=[MarkdownTextObject(text=f"Room `{room_id}`")]),
    )


def ended_dm(*, room_id: str, topic: str, reason: str | None = None) -> tuple[str, Blocks]:
    """What a DM turns into once its link no longer works."""
    title = escape(topic_or_default(topic))
    why = f" ({escape(reason)})" if reason else ""
    text = f"{title} has ended; its link no longer works."
    return text, _blocks(
        SectionBlock(
            text=MarkdownTextObject(
                text=f":white_circle: *{title}* has ended{why}. This link no longer works."
            )
        ),
        ContextBlock(elements=[MarkdownTextObject(text=f"Room `{room_id}`")]),
    )


def kicked_dm(*, room_id: str, topic: str, owner_id: str) -> tuple[str, Blocks]:
    """What a DM turns into when the room's owner removed its reader (`/meet kick`).

    The join button goes: the link is withdrawn, and the text says so plainly
    so the person knows it was deliberate, not a fault.
    """
    title = escape(topic_or_default(topic))
    text = f"You were removed from {title}; your link no longer works."
    return text, _blocks(
        SectionBlock(
            text=MarkdownTextObject(
                text=f":no_entry: <@{owner_id}> removed you from *{title}*. "
                "Your personal link to it was withdrawn and no longer lets you in."
            )
        ),
        ContextBlock(elements=[MarkdownTextObject(text=f"Room `{room_id}`")]),
    )


def room_list(rooms: Sequence[Any]) -> str:
    """`/meet list`: the requester's open rooms, one line each."""
    if not rooms:
        return "You have no open rooms. Start one with `/meet topic @someone`."
    lines = ["*Your open rooms:*"]
    for r in rooms:
        lines.append(
            f"• *{escape(topic_or_default(r.topic))}* `{r.id}` until {when(r.expires_at)}"
            f" in <#{r.channel_id}>"
        )
    lines.append("End one with `/meet end &lt;room-id&gt;`.")
    return "\n".join(lines)


def mention_list(user_ids: Sequence[str]) -> str:
    return ", ".join(f"<@{u}>" for u in user_ids)


def kick_reply(
    target_id: str,
    *,
    topic: str,
    room_id: str,
    had_link: bool,
    webhook: bool,
    token_exp: int,
    stopped: int = 0,
    not_stopped: int = 0,
    publish_checked: bool = False,
    play_checked: bool = False,
) -> str:
    """What the owner is told after a kick: what happened on AMS, and what AMS will
    still accept, no more.

    ``stopped``/``not_stopped``: their streams AMS stopped / did not answer about.
    ``publish_checked``/``play_checked``: AMS has lately asked this bot before a
    publish / a play (its webhooks reach us), so it will refuse their token there.
    """
    title = escape(topic_or_default(topic))
    if not had_link:
        return f"<@{target_id}> had no link to *{title}*; now they can't get one."
    parts = [f"Removed <@{target_id}> from *{title}* and withdrew the link I sent them."]
    if stopped:
        streams = "stream" if stopped == 1 else f"{stopped} streams"
        parts.append(f"I stopped their {streams} on the video server, which disconnected them.")
    if not_stopped:
        parts.append(
            f":warning: The video server didn't answer when I tried to stop {not_stopped} of "
            "their streams: they may still be connected until their next reconnect."
        )
    until = when(token_exp)
    if not webhook:
        parts.append(
            ":warning: `MEETBOT_WEBHOOK_SECRET` is not set, so the video server doesn't ask me "
            f"before anyone joins: the link they already have keeps working until it expires "
            f"({until}). To shut them out now, end the room with `/meet end {room_id}` and "
            "open a new one."
        )
    elif publish_checked and play_checked:
        parts.append(
            "The video server asks me before every join, reconnect and viewing: it will "
            "refuse their next join or reconnect, to speak and to watch. Everyone else stays "
            "in the room."
        )
    elif publish_checked:
        parts.append(
            "The video server will refuse their next join or reconnect (camera and "
            "microphone); everyone else stays in the room.\n:warning: It doesn't ask me "
            "before someone watches (`webhookPlayAuthUrl` is not set), so with the link they "
            f"have they can still watch and listen until {until}."
        )
    else:
        parts.append(
            ":warning: The video server hasn't asked me about any join lately. Unless its "
            "`webhookAuthenticateURL` and `webhookPlayAuthUrl` point at me (`meetbot doctor` "
            f"checks them), the link they have keeps working until it expires ({until})."
        )
    return " ".join(parts[:-1]) + "\n" + parts[-1]  # what happened; then what AMS will do
