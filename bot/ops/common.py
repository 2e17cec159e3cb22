"""What every ``meetbot`` command needs first: its settings, or one line per problem."""

from __future__ import annotations

import sys

import click

from bot.config import ConfigError, Settings, load_settings

__all__ = ["settings_or_exit"]


def settings_or_exit() -> Settings:
    """Load the configuration or stop with exit code 2 and one line per problem."""
    try:
        return load_settings()
    except ConfigError as e:
        click.echo("meetbot: the configuration has problems:", err=True)
        for problem in e.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
