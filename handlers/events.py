"""The App Home tab: ``app_home_opened``, its buttons, and the "New room" modal.

Every listener acks at once (events are acked by Bolt when the listener
returns) and hands anything that reads the database, calls AMS or publishes
a view to ``services.submit``. The two exceptions open a modal: ``views.open``
must use the ``trigger_id`` within 3 s, so it runs in the listener.

Clicks on the Home carry no ``response_url``. Their outcome (a refusal, a
confirmation) goes onto the person's Home as a notice, through
``bot.rooms.replies.replies_to``. Permissions are never checked here: the Rooms and
Schedules methods check them server-side, so a forged click is refused there
exactly like a real one.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from bot.home import view as home
from bot.home.tab import HomeTab
from bot.logs import ContextThreadPoolExecutor
from bot.rooms.replies import replies_to
from bot.rooms.service import OpenRequest
from bot.slack.gateway import UnknownUser, UserInfo
from handlers import views
from handlers.topics import clean_topic

if TYPE_CHECKING:
    from slack_bolt import Ack, App
    from slack_sdk import WebClient

    from bot.services import Services

log = logging.getLogger("meetbot.handlers")

#: Time the New-room submission may spend on users.info, inside Slack's 3 s.
LOOKUP_BUDGET_S = 1.0
# Context-copying: the lookups use the workspace (bot token) of the request.
_lookups = ContextThreadPoolExecutor(max_workers=8, thread_name_prefix="home-modal")


def _text(value: Any) -> str:
    """A field Slack sends as a string; anything else counts as missing."""
    return value if isinstance(value, str) else ""


def _who(body: dict[str, Any]) -> tuple[str, str, str | None]:
    """(team, user, enterprise) of an interaction payload; "" when missing."""
    user = body.get("user") if isinstance(body.get("user"), dict) else {}
    team = body.get("team") if isinstance(body.get("team"), dict) else {}
    enterprise = body.get("enterprise") if isinstance(body.get("enterprise"), dict) else {}
    return (
        _text(team.get("id")) or _text(user.get("team_id")),
        _text(user.get("id")),
        _text(enterprise.get("id")) or None,
    )


def _org(body: dict[str, Any]) -> str | None:
    """The Enterprise Grid org of an event: the envelope's, else its authorization's."""
    org = _text(body.get("enterprise_id"))
    if not org:
        auths = body.get("authorizations")
        first = auths[0] if isinstance(auths, list) and auths else None
        org = _text(first.get("enterprise_id")) if isinstance(first, dict) else ""
    return org or None


def _value(body: dict[str, Any]) -> str:
    actions = body.get("actions") or [{}]
    return _text(actions[0].get("value")) if isinstance(actions[0], dict) else ""


# -- work after the ack --------------------------------------------------------------------


def get_link(
    services: Services, tab: HomeTab, team: str, user: str, room_id: str, org: str | None = None
) -> None:
    """Home "Get my link": the same DM as the channel card's button."""
    with replies_to(lambda text: tab.notice(team, user, text, org)):
        services.rooms.send_link(team, room_id, user, None)


def end_room(
    services: Services, tab: HomeTab, team: str, user: str, room_id: str, org: str | None = None
) -> None:
    """Home "End": owner or workspace admin, checked by ``Rooms.end_room``; once only."""
    with replies_to(lambda text: tab.notice(team, user, text, org)):
        services.rooms.end_room(team, room_id, user, None)


def extend_room(
    services: Services, tab: HomeTab, team: str, user: str, value: str, org: str | None = None
) -> None:
    """Home "Extend 30 min": owner only; the button's end makes a double click extend once."""
    room_id, expected = home.parse_extend_value(value)
    with replies_to(lambda text: tab.notice(team, user, text, org)):
        services.rooms.extend(team, room_id, user, home.EXTEND_S, None, expect_expires_at=expected)


def cancel_schedule(
    services: Services,
    tab: HomeTab,
    team: str,
    user: str,
    schedule_id: str,
    org: str | None = None,
) -> None:
    """Home "Stop": creator or admin, checked by ``Schedules.cancel``; a repeat says so."""
    tab.notice(team, user, services.schedules.cancel(team, schedule_id, user), org)


# -- the New-room modal ------------------------------------------------------------------


def read_new_room(values: dict[str, Any]) -> tuple[str, tuple[str, ...], int | None]:
    """(topic, invitees, duration) from the modal's ``state.values``; junk reads as missing."""

    def field(block: str) -> dict[str, Any]:
        entry = (
            (values.get(block) or {}).get(home.INPUT_ACTION) if isinstance(values, dict) else None
        )
        return entry if isinstance(entry, dict) else {}

    topic = clean_topic(_text(field(home.B_TOPIC).get("value")), home.MAX_TOPIC)
    users = field(home.B_INVITEES).get("selected_users")
    invitees = (
        tuple(dict.fromkeys(u for u in users if isinstance(u, str)))
        if isinstance(users, list)
        else ()
    )
    option = field(home.B_DURATION).get("selected_option")
    raw = _text(option.get("value")) if isinstance(option, dict) else ""
    duration = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 9 else None
    return topic, invitees, duration


def _lookup(services: Services, user_ids: list[str]) -> dict[str, UserInfo | Exception]:
    """users.info in parallel within the budget; ids not answered in time are left out."""
    futures: dict[str, Future[UserInfo]] = {
        u: _lookups.submit(services.slack.user_info, u) for u in user_ids
    }
    wait(list(futures.values()), timeout=LOOKUP_BUDGET_S)
    out: dict[str, UserInfo | Exception] = {}
    for user, fut in futures.items():
        if fut.done():
            exc = fut.exception()
            out[user] = exc if isinstance(exc, Exception) else fut.result()
    return out


def validate_new_room(
    services: Services,
    team: str,
    user: str,
    invitees: tuple[str, ...],
    duration: int | None,
) -> dict[str, str]:
    """Errors by block_id, shown next to the field while Slack waits; {} when fine.

    Checked again by ``Rooms.open_room`` after the ack; this is so that the
    usual mistakes show up in the form instead of a notice afterwards.
    """
    settings = services.settings
    errors: dict[str, str] = {}
    if duration is None or duration <= 0:
        errors[home.B_DURATION] = "Pick how long the room stays open."
    elif duration > settings.max_room_ttl:
        errors[home.B_DURATION] = "That is longer than a room may last here."
    others = [u for u in invitees if u != user]
    if len(others) > home.MAX_INVITEES:
        errors[home.B_INVITEES] = f"At most {home.MAX_INVITEES} people per room."
    else:
        found = _lookup(services, others)
        refused = []
        for u in others:
            info = found.get(u)
            if isinstance(info, UnknownUser):
                refused.append(f"{u} is not in this workspace")
            elif isinstance(info, UserInfo) and info.is_bot:
                refused.append(f"{info.display_name or info.name} is a bot")
            elif isinstance(info, UserInfo) and info.deleted:
                refused.append(f"{info.display_name or info.name} is deactivated")
        if refused:
            errors[home.B_INVITEES] = "Only people can join: " + "; ".join(refused) + "."
    open_now = len(services.store.open_rooms_of(team, user))
    if open_now >= settings.max_open_rooms_per_user:
        errors[home.B_TOPIC] = (
            f"You already have {open_now} open rooms, the most one person may have. End one first."
        )
    return errors


def handle_new_room(ack: Ack, body: dict[str, Any], services: Services, tab: HomeTab) -> None:
    """Validate while Slack waits, then open the room after the ack.

    The card goes to the requester's DM with the bot (the Home has no
    channel); the outcome is told on their Home.
    """
    team, user, enterprise = _who(body)
    view = body.get("view") or {}
    state = view.get("state") if isinstance(view.get("state"), dict) else {}
    topic, invitees, duration = read_new_room(state.get("values") or {})
    if not team or not user:
        ack(response_action="errors", errors={home.B_TOPIC: "Slack didn't say who you are."})
        return
    errors = validate_new_room(services, team, user, invitees, duration)
    if errors:
        ack(response_action="errors", errors=errors)
        return
    ack()
    services.submit(
        services.rooms.open_room,
        OpenRequest(
            team_id=team,
            user_id=user,
            channel_id=user,
            topic=topic,
            invitees=tuple(u for u in invitees if u != user),
            duration=duration,
            enterprise_id=enterprise,
            notify=functools.partial(tab.notice, team, user, enterprise_id=enterprise),
        ),
    )


def open_new_room_modal(client: WebClient, trigger_id: str, services: Services) -> bool:
    """``views.open`` of the New-room form, in the listener (the trigger dies in 3 s)."""
    s = services.settings
    if not trigger_id:
        return False
    try:
        client.views_open(
            trigger_id=trigger_id,
            view=home.new_room_modal(
                durations=home.duration_choices(s.room_ttl, s.max_room_ttl),
                default=min(s.room_ttl, s.max_room_ttl),
            ),
        )
        return True
    except Exception as e:  # SlackApiError (expired trigger...) or the network
        log.warning("views.open for the New-room form failed: %s", e)
        return False


# -- wiring ----------------------------------------------------------------------------------


def register(app: App, services: Services) -> None:
    """Wire the App Home: the event, its buttons and the New-room modal.

    Room changes republish the Homes concerned by themselves (``services.home``
    is the rooms' ``on_change``); these listeners draw a Home when it is opened
    and act on its buttons.
    """
    tab = services.home

    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("tab") != "home":
            return  # the Messages tab: nothing to draw
        user = _text(event.get("user"))
        team = _text(body.get("team_id")) or _text((event.get("view") or {}).get("team_id"))
        if user and team:
            services.submit(tab.opened, team, user, _org(body))

    @app.action(home.ACTION_NEW_ROOM)
    def new_room_clicked(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        team, user, org = _who(body)
        if not open_new_room_modal(client, _text(body.get("trigger_id")), services) and team:
            tab.notice(team, user, "I couldn't open the form; please try again.", org)

    @app.action(home.ACTION_SCHEDULE)
    def schedule_clicked(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        team, user, org = _who(body)
        opened = views.open_schedule_modal(
            client,
            _text(body.get("trigger_id")),
            user_id=user,
            channel_id=None,
            services=services,
        )
        if not opened and team:
            tab.notice(team, user, "I couldn't open the scheduling form; please try again.", org)

    def on_click(work: Any) -> Any:
        def listener(ack: Ack, body: dict[str, Any]) -> None:
            ack()
            team, user, org = _who(body)
            value = _value(body)
            if team and user and value:
                services.submit(work, services, tab, team, user, value, org)

        return listener

    app.action(home.ACTION_GET_LINK)(on_click(get_link))
    app.action(home.ACTION_END)(on_click(end_room))
    app.action(home.ACTION_EXTEND)(on_click(extend_room))
    app.action(home.ACTION_CANCEL)(on_click(cancel_schedule))

    @app.view(home.NEW_ROOM_CALLBACK)
    def new_room_submitted(ack: Ack, body: dict[str, Any]) -> None:
        handle_new_room(ack, body, services, tab)
