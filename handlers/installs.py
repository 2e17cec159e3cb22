"""The app leaving a workspace: ``app_uninstalled`` and ``tokens_revoked``.

Bolt's own token-revocation listeners only delete installations; meetbot also
owes the workspace an end to its rooms on AMS and its schedules, so these
listeners do both (after the ack).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slack_bolt import Ack, App

    from bot.services import Services


def _ids(body: dict[str, Any]) -> tuple[str | None, str | None]:
    team = body.get("team_id") if isinstance(body.get("team_id"), str) else None
    enterprise = body.get("enterprise_id") if isinstance(body.get("enterprise_id"), str) else None
    return team, enterprise


def register(app: App, services: Services) -> None:
    @app.event("app_uninstalled")
    def uninstalled(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        team, enterprise = _ids(body)
        services.submit(services.uninstall, team, enterprise, "uninstalled")

    @app.event("tokens_revoked")
    def revoked(ack: Ack, body: dict[str, Any], event: dict[str, Any]) -> None:
        ack()
        tokens = event.get("tokens") if isinstance(event.get("tokens"), dict) else {}
        if tokens.get("bot"):  # user tokens alone leave the bot working
            team, enterprise = _ids(body)
            services.submit(services.uninstall, team, enterprise, "disconnected (tokens revoked)")
