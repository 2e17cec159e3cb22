"""The App Home tab and the "New room" modal: pure builders, data in, view out.

Kept free of Slack calls and database reads so every shape the Home can take
(no rooms, hundreds of rooms, hostile topics) can be checked against Block
Kit's limits in unit tests; ``bot/home/tab.py`` gathers the data and publishes.

Slack refuses a Home view of more than 100 blocks with ``invalid_blocks``,
which would leave the person with a stale (or empty) tab. Long lists are
therefore shared out among the sections and cut with an "…and N more" line,
never sent whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    SectionBlock,
    StaticSelectElement,
    UserMultiSelectElement,
)
from slack_sdk.models.views import View

from bot.durations import format_duration
from bot.slack import messages

MAX_SURFACE_BLOCKS = 100  # Slack's limit for a modal or the Home tab
MAX_SECTION_TEXT = 3000
EXTEND_S = 30 * 60  # what "Extend 30 min" adds
MAX_TOPIC = 150  # the same bound /meet puts on a topic
MAX_INVITEES = 50

# Action ids of the Home's buttons. Home clicks carry no response_url, so they
# get their own listeners (handlers/events.py), which answer on the Home itself.
ACTION_NEW_ROOM = "home_new_room"
ACTION_SCHEDULE = "home_schedule"
ACTION_GET_LINK = "home_get_link"
ACTION_END = "home_end"
ACTION_EXTEND = "home_extend"
ACTION_CANCEL = "home_cancel_schedule"
HOME_ACTIONS = (
    ACTION_NEW_ROOM,
    ACTION_SCHEDULE,
    ACTION_GET_LINK,
    ACTION_END,
    ACTION_EXTEND,
    ACTION_CANCEL,
)

# The "New room" modal.
NEW_ROOM_CALLBACK = "home_new_room_modal"
INPUT_ACTION = "value"  # every input's action_id; the block_id says which field it is
B_TOPIC = "topic"
B_INVITEES = "invitees"
B_DURATION = "duration"
DURATION_CHOICES = (15 * 60, 30 * 60, 45 * 60, 60 * 60, 2 * 60 * 60)


class RoomLike(Protocol):
    """What the Home shows of a room (``bot.store.Room`` fits)."""

    id: str
    topic: str
    owner_id: str
    channel_id: str
    state: str
    created_at: int
    expires_at: int


@dataclass(frozen=True)
class ScheduleLine:
    """One of the person's team-room schedules, already described in mrkdwn."""

    id: int
    name: str
    line: str


def _clip(text: str, limit: int = MAX_SECTION_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(channel_id: str) -> str:
    """Where the room's card is: a channel link, or the DM for rooms opened from Home."""
    if channel_id[:1] in ("C", "G"):
        return f"card in <#{channel_id}>"
    return "card in your DMs with me"


def extend_value(room_id: str, expires_at: int) -> str:
    """The Extend button's value: the end it extends, so a double click extends once."""
    return f"{room_id}:{int(expires_at)}"


def parse_extend_value(value: str) -> tuple[str, int | None]:
    """``(room_id, expected end)``; the end is None when the value carries none."""
    room_id, sep, end = value.rpartition(":")
    if sep and room_id and end.isascii() and end.isdigit() and len(end) <= 12:
        return room_id, int(end)
    return value, None


def _own_room(room: RoomLike, *, max_ttl: int | None) -> list[Block]:
    title = messages.escape(messages.topic_or_default(room.topic))
    if room.state != "active":
        return [
            SectionBlock(
                block_id=f"home:own:{room.id}",
                text=MarkdownTextObject(text=_clip(f":hourglass: *{title}* is opening…")),
            )
        ]
    buttons = [
        ButtonElement(text="Get my link", action_id=ACTION_GET_LINK, value=room.id),
        ButtonElement(
            text="End",
            action_id=ACTION_END,
            value=room.id,
            style="danger",
            confirm=ConfirmObject(
                title="End this room?",
                text="Everyone's link stops working now. This can't be undone.",
                confirm="End it",
                deny="Keep it",
                style="danger",
            ),
        ),
    ]
    if max_ttl is None or room.expires_at + EXTEND_S - room.created_at <= max_ttl:
        buttons.append(
            ButtonElement(
                text="Extend 30 min",
                action_id=ACTION_EXTEND,
                value=extend_value(room.id, room.expires_at),
            )
        )
    return [
        SectionBlock(
            block_id=f"home:own:{room.id}",
            text=MarkdownTextObject(
                text=_clip(
                    f":large_green_circle: *{title}* `{room.id}`\n"
                    f"Open until {messages.when(room.expires_at)}, {_where(room.channel_id)}"
                )
            ),
        ),
        ActionsBlock(block_id=f"home:own-actions:{room.id}", elements=buttons),
    ]


def _invited_room(room: RoomLike) -> list[Block]:
    title = messages.escape(messages.topic_or_default(room.topic))
    return [
        SectionBlock(
            block_id=f"home:inv:{room.id}",
            text=MarkdownTextObject(
                text=_clip(
                    f"*{title}* from <@{room.owner_id}>, "
                    f"open until {messages.when(room.expires_at)}"
                )
            ),
            accessory=ButtonElement(text="Get my link", action_id=ACTION_GET_LINK, value=room.id),
        )
    ]


def _schedule(s: ScheduleLine) -> list[Block]:
    return [
        SectionBlock(
            block_id=f"home:sch:{s.id}",
            text=MarkdownTextObject(text=_clip(s.line)),
            accessory=ButtonElement(
                text="Stop",
                action_id=ACTION_CANCEL,
                value=str(s.id),
                confirm=ConfirmObject(
                    title="Stop this team room?",
                    text=_clip(f"No more rooms will open for {messages.escape(s.name)}.", 300),
                    confirm="Stop it",
                    deny="Keep it",
                    style="danger",
                ),
            ),
        )
    ]


def _share(sizes: Sequence[tuple[int, int]], budget: int) -> list[int]:
    """How many items of each section fit in ``budget`` blocks, shared round-robin.

    ``sizes``: (items, blocks per item) per section. Round-robin so that many
    invitations cannot push the person's own rooms off their Home.
    """
    shown = [0] * len(sizes)
    progress = True
    while progress:
        progress = False
        for i, (count, cost) in enumerate(sizes):
            if shown[i] < count and cost <= budget:
                shown[i] += 1
                budget -= cost
                progress = True
    return shown


def home_view(
    *,
    own: Sequence[RoomLike],
    invited: Sequence[RoomLike],
    schedules: Sequence[ScheduleLine],
    notice: str | None = None,
    max_ttl: int | None = None,
) -> dict[str, Any]:
    """The Home tab as a ``views.publish`` view: my rooms, my invitations, my team rooms.

    ``notice`` is the outcome of the person's last click or submission (Home
    interactions have no response_url to answer on). ``max_ttl`` hides
    "Extend 30 min" where the room cannot get 30 more minutes.
    """
    head: list[Block] = [
        HeaderBlock(text="meetbot"),
        SectionBlock(
            text=MarkdownTextObject(
                text="Private video rooms on your own server. Everyone gets their own link "
                "by DM; links stop working when the room ends."
            )
        ),
        ActionsBlock(
            block_id="home:top",
            elements=[
                ButtonElement(
                    text="New room", action_id=ACTION_NEW_ROOM, value="new", style="primary"
                ),
                ButtonElement(
                    text="Schedule a team room", action_id=ACTION_SCHEDULE, value="schedule"
                ),
            ],
        ),
    ]
    if notice:
        head.append(
            ContextBlock(block_id="home:notice", elements=[MarkdownTextObject(text=_clip(notice))])
        )
    sections: list[tuple[str, Sequence[Any], Callable[[Any], list[Block]], int, str, str]] = [
        (
            "Your open rooms",
            own,
            lambda r: _own_room(r, max_ttl=max_ttl),
            2,
            "You have no open rooms. Press *New room*, or type `/meet topic @someone`.",
            "`/meet list` shows them all.",
        ),
        (
            "Rooms you're invited to",
            invited,
            _invited_room,
            1,
            "No invitations right now.",
            "Your DMs with me have their links.",
        ),
        (
            "Your team rooms",
            schedules,
            _schedule,
            1,
            "You have no scheduled team rooms. Press *Schedule a team room* to add one.",
            "`/meet schedules` in a channel lists its team rooms.",
        ),
    ]
    # Fixed blocks: the head, a divider and a header per section, and one
    # line per section for "none" or "…and N more".
    budget = MAX_SURFACE_BLOCKS - len(head) - 3 * len(sections)
    shown = _share([(len(items), cost) for _, items, _, cost, _, _ in sections], budget)
    blocks = list(head)
    for (title, items, render, _, empty, more), n in zip(sections, shown, strict=True):
        blocks += [DividerBlock(), HeaderBlock(text=title)]
        for item in items[:n]:
            blocks += render(item)
        if not items:
            blocks.append(ContextBlock(elements=[MarkdownTextObject(text=empty)]))
        elif n < len(items):
            blocks.append(
                ContextBlock(
                    elements=[MarkdownTextObject(text=f"…and {len(items) - n} more. {more}")]
                )
            )
    return View(type="home", blocks=blocks).to_dict()


def duration_choices(room_ttl: int, max_ttl: int) -> list[int]:
    """The lengths the New-room modal offers: the usual ones that are allowed, and the default."""
    return sorted({d for d in DURATION_CHOICES if d <= max_ttl} | {min(room_ttl, max_ttl)})


def new_room_modal(*, durations: Sequence[int], default: int) -> dict[str, Any]:
    """The "New room" form: topic, people, length. The card goes to the requester's DM."""
    options = [Option(value=str(d), text=format_duration(d)) for d in durations]
    initial = next((o for o, d in zip(options, durations, strict=True) if d == default), None)
    duration_kwargs: dict[str, Any] = {"initial_option": initial} if initial else {}
    blocks: list[Block] = [
        InputBlock(
            block_id=B_TOPIC,
            label="Topic",
            optional=True,
            element=PlainTextInputElement(
                action_id=INPUT_ACTION, placeholder="e.g. Design review", max_length=MAX_TOPIC
            ),
        ),
        InputBlock(
            block_id=B_INVITEES,
            label="People",
            optional=True,
            hint="Each person gets their own link by DM. You are always in your own room.",
            element=UserMultiSelectElement(action_id=INPUT_ACTION, max_selected_items=MAX_INVITEES),
        ),
        InputBlock(
            block_id=B_DURATION,
            label="Length",
            element=StaticSelectElement(action_id=INPUT_ACTION, options=options, **duration_kwargs),
        ),
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text="The room's card, with its *Get my link* button, goes to your DMs with me."
                )
            ]
        ),
    ]
    return View(
        type="modal",
        callback_id=NEW_ROOM_CALLBACK,
        title="New room",
        submit="Open room",
        close="Cancel",
        blocks=blocks,
    ).to_dict()
