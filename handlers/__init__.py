"""Slack listeners: parse what Slack sent, ack at once, hand the work to ``bot/``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slack_bolt import App

    from bot.services import Services


def register(app: App, services: Services) -> None:
    """Entry point ``meetbot.listeners``: wire every listener group into ``app``.

    Imported here, not at the top, so ``handlers.grammar`` (pure) loads without Bolt.
    """
    from handlers import actions, commands, views

    commands.register(app, services)
    actions.register(app, services)
    views.register(app, services)
    from handlers import installs

    installs.register(app, services)
    from handlers import events, shortcuts

    events.register(app, services)
    shortcuts.register(app, services)
