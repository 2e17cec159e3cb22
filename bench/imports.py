"""Where ``meetbot serve``'s memory goes, import by import: ``python -m bench.imports``.

One fresh interpreter imports, in order, what a bare Bolt app needs and then
what the bot adds, and reads its own ``VmRSS`` after each step; the growth of
each step is what that step brought in that was not already there (shared
dependencies count where they first arrive, so the order matters and is the
order ``serve`` meets them: Bolt first, as the floor). The footprint benchmark
logs this next to its RSS figures, so that a miss is explained.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: (label, statements) in the order they run: first the floor's (a bare Bolt app on
#: waitress), then what ``meetbot serve`` on SQLite adds, then what it does not load
#: (PostgreSQL's driver, loaded by a PostgreSQL deployment; Alembic, loaded only when
#: the schema is behind, which ``meetbot db upgrade`` settles before ``serve``).
STEPS: tuple[tuple[str, str], ...] = (
    ("python itself", "pass"),
    ("waitress", "import waitress"),
    ("slack_sdk WebClient", "from slack_sdk import WebClient"),
    ("slack_bolt App (the floor's imports end here)", "from slack_bolt import App"),
    ("requests (the AMS client)", "import requests"),
    ("SQLAlchemy core + ORM + SQLite", "import sqlalchemy.orm, sqlalchemy.dialects.sqlite"),
    (
        "slack_sdk OAuth stores (+ SQLAlchemy asyncio)",
        "import slack_sdk.oauth.installation_store.sqlalchemy, "
        "slack_sdk.oauth.state_store.sqlalchemy, slack_bolt.oauth.oauth_flow",
    ),
    ("PyJWT (+ cryptography, OpenSSL)", "import jwt, jwt.algorithms"),
    ("cryptography Fernet", "from cryptography.fernet import Fernet"),
    ("APScheduler", "from apscheduler.schedulers.background import BackgroundScheduler"),
    ("prometheus_client", "import prometheus_client"),
    ("click, python-dotenv", "import click, dotenv"),
    ("slack_sdk Block Kit models", "import slack_sdk.models.blocks"),
    ("meetbot's own modules and handlers/", "import bot.server, bot.ops.cli, handlers"),
    ("-- not loaded by serve on SQLite: psycopg", "import psycopg"),
    ("-- not loaded by serve on a current schema: Alembic", "import alembic.command"),
)
#: Modules the steps up to meetbot's own must not have pulled in early (checked).
NOT_SERVE = ("psycopg", "alembic", "yaml")

_CHILD = r"""
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
out = []
for label, code in json.loads(sys.argv[1]):
    exec(code)
    out.append([label, rss(), sorted(sys.modules)])
print(json.dumps(out))
"""


def breakdown() -> list[tuple[str, float, float]]:
    """``(step, RSS after it in MiB, growth in MiB)`` in a fresh interpreter."""
    steps = list(STEPS)
    proc = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", _CHILD, json.dumps(steps)],
        capture_output=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    rows = json.loads(proc.stdout)
    out = []
    before = 0.0
    for label, rss, modules in rows:
        out.append((label, rss, rss - before))
        before = rss
        if label.startswith("meetbot's own"):
            early = [m for m in NOT_SERVE if m in modules]
            if early:  # the steps no longer say what serve loads: keep them true
                raise RuntimeError(f"meetbot's modules now import {early} at start")
    return out


def render(rows: list[tuple[str, float, float]]) -> str:
    return "\n".join(f"{label:<55} {rss:6.1f} MiB  +{grow:5.1f}" for label, rss, grow in rows)


if __name__ == "__main__":
    print(render(breakdown()))
