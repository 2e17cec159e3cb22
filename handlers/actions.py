"""Button clicks. Each acks at once; the work runs after the ack."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot import messages

if TYPE_CHECKING:
    from slack_bolt import Ack, App

    from bot.app import Services


EXTEND_BUTTON_S = 30 * 60  # the owner's DM button: "Extend 30 min"


def _who(body: dict[str, Any]) -> tuple[str, str]:
    user = body.get("user") or {}
    team = body.get("team") or {}
    return str(team.get("id") or user.get("team_id") or ""), str(user.get("id") or "")


def register(app: App, services: Services) -> None:
    @app.action(messages.ACTION_GET_LINK)
    def get_link(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        team, user = _who(body)
        room_id = str(action.get("value") or "")
        if team and user and room_id:
            services.submit(services.rooms.send_link, team, room_id, user, body.get("response_url"))

    @app.action(messages.ACTION_EXTEND)
    def extend_clicked(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        team, user = _who(body)
        room_id = str(action.get("value") or "")
        if team and user and room_id:
            services.submit(
                services.rooms.extend,
                team,
                room_id,
                user,
                EXTEND_BUTTON_S,
                body.get("response_url"),
            )

    @app.action(messages.ACTION_JOIN)
    def join_clicked(ack: Ack) -> None:
        # A URL button: the browser opens the link; Slack still wants an ack.
        ack()
