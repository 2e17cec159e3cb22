"""The ``meetbot`` command line: serve the bot, and the operator's tools."""

from __future__ import annotations

import sys

import click

from bot.config import ConfigError, Settings, load_settings
from bot.logs import setup_logging


def _settings() -> Settings:
    """Load the configuration or stop with exit code 2 and one line per problem."""
    try:
        return load_settings()
    except ConfigError as e:
        click.echo("meetbot: the configuration has problems:", err=True)
        for problem in e.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """meetbot: private Ant Media Server rooms from Slack."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")  # noqa: S104
def serve(host: str) -> None:
    """Run the bot (HTTP mode on PORT, or Socket Mode with SLACK_APP_TOKEN)."""
    settings = _settings()
    setup_logging(settings.log_level, settings.log_format, settings.secrets())
    from bot.app import serve as run

    run(settings, host=host)


if __name__ == "__main__":
    main()
