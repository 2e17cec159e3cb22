"""Button clicks. Each acks at once; the work runs after the ack."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.slack import messages

if TYPE_CHECKING:
    from slack_bolt import Ack, App

    from bot.services import Services


EXTEND_BUTTON_S = 30 * 60  # the owner's DM button: "Extend 30 min"


def _text(value: Any) -> str:
    """A field Slack sends as a string; anything else counts as missing (never ``str(5)``)."""
    return value if isinstance(value, str) else ""


def _who(body: dict[str, Any]) -> tuple[str, str]:
    user = body.get("user")
    team = body.get("team")
    user = user if isinstance(user, dict) else {}
    team = team if isinstance(team, dict) else {}
    return _text(team.get("id")) or _text(user.get("team_id")), _text(user.get("id"))


def register(app: App, services: Services) -> None:
    @app.action(messages.ACTION_GET_LINK)
    def get_link(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        team, user = _who(body)
        room_id = _text(action.get("value"))
        if team and user and room_id:
            services.submit(
                services.rooms.send_link,
                team,
                room_id,
                user,
                body.get("response_url"),
                reply_to=body.get("response_url"),
            )

    @app.action(messages.ACTION_EXTEND)
    def extend_clicked(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        team, user = _who(body)
        room_id, _, seen_end = _text(action.get("value")).partition("|")
        if team and user and room_id:
            services.submit(
                services.rooms.extend,
                team,
                room_id,
                user,
                EXTEND_BUTTON_S,
                body.get("response_url"),
                expect_expires_at=int(seen_end) if seen_end.isdigit() else None,
                reply_to=body.get("response_url"),
            )

    @app.action(messages.ACTION_JOIN)
    def join_clicked(ack: Ack) -> None:
        # A URL button: the browser opens the link; Slack still wants an ack.
        ack()
