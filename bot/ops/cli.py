"""The ``meetbot`` command line: serve the bot, and the operator's tools."""

from __future__ import annotations

import sys

import click

from bot.logs import setup_logging
from bot.ops.common import settings_or_exit

_settings = settings_or_exit


@click.group()
def main() -> None:
    """meetbot: private Ant Media Server rooms from Slack."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")  # noqa: S104
def serve(host: str) -> None:
    """Run the bot (HTTP mode on PORT, or Socket Mode with SLACK_APP_TOKEN)."""
    settings = _settings()
    setup_logging(settings.log_level, settings.log_format, settings.secrets())
    from bot.ams.stream_secret import StreamSecretError
    from bot.server import ListenError, SocketModeError
    from bot.server import serve as run
    from bot.vault import VaultError

    try:
        run(settings, host=host)
    except (StreamSecretError, VaultError) as e:
        # A wrong MEETBOT_SECRET_KEY, or no secret to be had: a configuration
        # problem, reported like one.
        click.echo(f"meetbot: {e}", err=True)
        sys.exit(2)
    except (SocketModeError, ListenError) as e:
        click.echo(f"meetbot: {e}", err=True)
        sys.exit(1)


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--all", "show_all", is_flag=True, help="Include stopped and finished ones.")
@click.pass_context
def schedules(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """List team-room schedules; `schedules cancel <id>` stops one."""
    if ctx.invoked_subcommand is not None:
        return
    from bot.schedules.service import schedules_report
    from bot.store import Store

    store = Store(_settings().database_url)
    try:
        store.migrate()
        click.echo(schedules_report(store, as_json=as_json, include_inactive=show_all))
    finally:
        store.dispose()


@schedules.command("cancel")
@click.argument("schedule_id", type=int)
def schedules_cancel(schedule_id: int) -> None:
    """Stop a schedule as the operator (audited as "cli"; no Slack needed)."""
    import time

    from bot.schedules.service import cancel_schedule
    from bot.store import Store

    store = Store(_settings().database_url)
    try:
        store.migrate()
        row = cancel_schedule(store, schedule_id, actor="cli", at=int(time.time()))
    finally:
        store.dispose()
    if row is None:
        click.echo(f"meetbot: no active schedule {schedule_id}", err=True)
        sys.exit(1)
    click.echo(f"Stopped schedule {row.id} ({row.name}) in team {row.team_id}.")


@main.command("rotate-secret")
def rotate_secret() -> None:
    """Rotate the AMS stream secret now (kills every outstanding join link).

    \f
    Safe next to running replicas: it takes the same ``rotate_secret`` lease as
    their schedulers, so the secret changes exactly once. It has no Slack
    wiring, so it cannot re-issue anyone's DM links itself. The rotation is
    recorded in the database (a new ``current`` row in ``stream_secrets`` and a
    ``rotate_secret`` audit row); the running bot compares
    ``RotatingSecret.current()[0]`` with the secret version it last re-issued
    links for, and on its next sweep re-issues every active room's links.
    Prints the new version, never the secret; exits 1 when nothing rotated.
    """
    import os
    import socket
    import time

    from bot.ams.client import AmsError
    from bot.ams.stream_secret import (
        StreamSecretError,
        bootstrap,
        build_management,
        rotate,
        settle,
    )
    from bot.store import Store
    from bot.vault import Vault, VaultError

    settings = _settings()
    setup_logging(settings.log_level, settings.log_format, settings.secrets())
    if not settings.secret_key:
        click.echo("meetbot: MEETBOT_SECRET_KEY is required to store rotated secrets", err=True)
        sys.exit(1)
    mgmt = build_management(settings)
    if mgmt is None:
        click.echo(
            "meetbot: rotating needs AMS management credentials: AMS_ADMIN_EMAIL and "
            "AMS_ADMIN_PASSWORD, or AMS_SERVER_JWT_SECRET",
            err=True,
        )
        sys.exit(1)
    store = Store(settings.database_url)
    try:
        store.migrate()
        vault = Vault(settings.secret_key)
        bootstrap(settings, store, vault, mgmt)
        click.echo(f"settled: {settle(settings, store, vault, mgmt)}")
        owner = f"cli:{socket.gethostname()}:{os.getpid()}"
        result = rotate(settings, store, vault, mgmt, owner=owner, now=int(time.time()), force=True)
    except (AmsError, StreamSecretError, VaultError) as e:
        click.echo(f"meetbot: the AMS stream secret was not rotated: {e}", err=True)
        sys.exit(1)
    finally:
        mgmt.close()
        store.dispose()
    if not result.rotated:
        click.echo(f"meetbot: the AMS stream secret was not rotated: {result.reason}", err=True)
        sys.exit(1)
    click.echo(f"Rotated the AMS stream secret: version {result.version} is current.")
    click.echo(
        "Outstanding links stopped working; the running bot re-issues active rooms' links "
        "on its next sweep."
    )


# Operator tools (doctor, rooms, link, db, healthcheck, reconcile) live in bot/ops/admin.py.
from bot.ops.admin import COMMANDS as _ADMIN_COMMANDS  # noqa: E402 - needs `main` defined

for _command in _ADMIN_COMMANDS:
    main.add_command(_command)

# `meetbot demo`: the real bot against local Slack and AMS stand-ins (bot/ops/demo.py).
from bot.ops.demo import demo_command as _demo_command  # noqa: E402 - needs `main` defined

main.add_command(_demo_command)

# `meetbot setup`: first-run questions, .env, the Slack manifest, doctor (bot/ops/setup.py).
from bot.ops.setup import setup_command as _setup_command  # noqa: E402 - needs `main`

main.add_command(_setup_command)


if __name__ == "__main__":
    main()
