"""Deployment files: what can be tested without a Docker engine.

* The image's entry point and health check are real commands: `meetbot serve`
  (the console script, as `ENTRYPOINT ["meetbot"]` + `CMD ["serve"]` run it)
  and `meetbot healthcheck`, run here against a live bot.
* `Dockerfile`, `.dockerignore` and `compose.yaml` are checked for structure:
  compose.yaml against a small JSON-schema-like description of the parts we
  rely on, then for the relations between services.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import bot_env

REPO = Path(__file__).resolve().parent.parent
MEETBOT = Path(sys.executable).parent / "meetbot"  # the console script `pip install` made


def run_meetbot(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [str(MEETBOT), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
    )


# -- the entry point and the health check, for real ------------------------------------


@pytest.fixture
def served(ams, slack, tmp_path):
    """`meetbot serve` exactly as the image runs it (console script, default host)."""
    assert MEETBOT.exists(), f"{MEETBOT} missing: run `pip install -e .` into this venv"
    env = bot_env(ams, slack, f"sqlite:///{tmp_path / 'meetbot.db'}", MEETBOT_LOG_LEVEL="INFO")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(MEETBOT), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['PORT']}"
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if requests.get(url + "/healthz", timeout=0.5).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "meetbot serve did not come up"
        time.sleep(0.05)
    yield proc, env, tmp_path / "serve.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def test_entrypoint_serves_and_healthcheck_follows_it(served, tmp_path):
    proc, env, log_path = served
    healthy = run_meetbot("healthcheck", env={**os.environ, "PORT": env["PORT"]})
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.strip() == "healthy"

    # PORT from ./.env, as `serve` would read it, when the environment has none.
    (tmp_path / ".env").write_text(f"PORT={env['PORT']}\n")
    bare = {k: v for k, v in os.environ.items() if k != "PORT"}
    assert run_meetbot("healthcheck", env=bare, cwd=tmp_path).returncode == 0

    wrong = run_meetbot("healthcheck", "--url", f"http://127.0.0.1:{env['PORT']}/nope")
    assert wrong.returncode == 1 and "HTTP 404" in wrong.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, log_path.read_text()
    assert "stopped" in log_path.read_text()

    started = time.monotonic()
    gone = run_meetbot("healthcheck", env={**os.environ, "PORT": env["PORT"]})
    assert gone.returncode == 1 and gone.stderr.startswith("unhealthy")
    assert time.monotonic() - started < 5


def test_healthcheck_times_out_in_two_seconds():
    import socket

    with socket.socket() as listener:  # accepts the connection, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        result = run_meetbot("healthcheck", env={**os.environ, "PORT": str(port)})
        took = time.monotonic() - started
    assert result.returncode == 1
    assert 1.5 < took < 6


# -- Dockerfile ----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile():
    steps = dockerfile()
    instructions = [i for i, _ in steps]
    args = {i: a for i, a in steps}  # the last of each
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert any(i == "RUN" and "pip install ." in a for i, a in steps)
    # Runs as a non-root user, set after the install and before the entry point.
    user = args["USER"]
    assert user not in ("root", "0") and re.fullmatch(r"[a-z_][a-z0-9_-]*|[1-9][0-9]*", user)
    assert instructions.index("USER") > max(
        n for n, (i, a) in enumerate(steps) if i == "RUN" and "pip install" in a
    )
    assert any(i == "RUN" and "useradd" in a and user in a for i, a in steps)
    assert args["ENTRYPOINT"] == '["meetbot"]'
    assert args["CMD"] == '["serve"]'
    hc = args["HEALTHCHECK"]
    assert "--timeout=" in hc and hc.split("CMD", 1)[1].strip() == '["meetbot", "healthcheck"]'
    copied = " ".join(a for i, a in steps if i == "COPY")
    for needed in ("pyproject.toml", "README.md", "bot/", "handlers/", "manifest.yml"):
        assert needed in copied, needed
    assert "3000" in args["EXPOSE"]


#: The last release with a known CVE, and the first without: pyproject.toml's floors
#: must keep the former out (CVE-2024-49768/-49769, CVE-2024-47081, CVE-2024-12797,
#: CVE-2024-53861).
CVE_FLOORS = {
    "waitress": ("3.0.0", "3.0.1"),
    "requests": ("2.32.3", "2.32.4"),
    "cryptography": ("44.0.0", "44.0.1"),
    "pyjwt": ("2.10.0", "2.10.1"),
}


def test_dependency_floors_keep_known_cves_out():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    for name, (vulnerable, fixed) in CVE_FLOORS.items():
        spec = reqs[name].specifier
        assert not spec.contains(vulnerable), f"{name} {spec} still allows {vulnerable}"
        assert spec.contains(fixed), f"{name} {spec} refuses the fixed {fixed}"


def test_dockerfile_installs_with_constraints_when_given():
    """docs/security.md tells operators to drop a constraints.txt next to the Dockerfile."""
    steps = dockerfile()
    copied = " ".join(a for i, a in steps if i == "COPY")
    assert "constraints*.txt" in copied
    assert any(i == "RUN" and "pip install -c constraints.txt ." in a for i, a in steps)
    assert "constraints" not in (REPO / ".dockerignore").read_text()


def test_dockerignore_keeps_secrets_and_local_state_out():
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for must in (".env", ".git", ".venv", "*.db", "tests"):
        assert must in patterns, must
    for needed in ("bot", "handlers", "pyproject.toml", "README.md", "manifest.yml"):
        assert needed not in patterns, needed


# -- compose.yaml ---------------------------------------------------------------

DURATION = {"type": str, "pattern": r"^\d+(ms|s|m|h)$"}
HEALTHCHECK = {
    "type": dict,
    "required": ["test", "interval", "timeout", "retries"],
    "properties": {
        "test": {"type": list, "items": {"type": str}, "min_items": 2},
        "interval": DURATION,
        "timeout": DURATION,
        "start_period": DURATION,
        "retries": {"type": int},
    },
}
DEPENDS_ON = {
    "type": dict,
    "values": {
        "type": dict,
        "required": ["condition"],
        "properties": {
            "condition": {
                "enum": [
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully",
                ]
            }
        },
    },
}
SERVICE = {
    "type": dict,
    "any_of_required": [["image"], ["build"]],
    "properties": {
        "image": {"type": str},
        "build": {"type": str},
        "command": {"type": list, "items": {"type": str}},
        "environment": {"type": dict, "values": {"type": str}},
        "env_file": {"type": str},
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "ports": {
            "type": list,
            "items": {"type": str, "pattern": r"^(\d+|\$\{[A-Z_]+(:-\d+)?\}):\d+$"},
        },
        "volumes": {"type": list, "items": {"type": str}},
        "healthcheck": HEALTHCHECK,
        "depends_on": DEPENDS_ON,
        "stop_grace_period": DURATION,
    },
    "additional": False,
}
COMPOSE = {
    "type": dict,
    "required": ["services"],
    "properties": {
        "name": {"type": str},
        "services": {"type": dict, "values": SERVICE, "required": ["bot", "db"]},
        "volumes": {"type": dict},
    },
    "extension_prefix": "x-",
    "additional": False,
}


def validate(value: Any, schema: dict, path: str = "$") -> list[str]:
    """A small JSON-schema-like checker; returns every problem found."""
    errors: list[str] = []
    expected = schema.get("type")
    if expected is not None and not isinstance(value, expected):
        return [f"{path}: expected {expected.__name__}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not one of {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        errors += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        if "any_of_required" in schema and not any(
            all(k in value for k in keys) for keys in schema["any_of_required"]
        ):
            errors.append(f"{path}: needs one of {schema['any_of_required']}")
        props = schema.get("properties", {})
        prefix = schema.get("extension_prefix")
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], f"{path}.{key}")
            elif "values" in schema:
                errors += validate(item, schema["values"], f"{path}.{key}")
            elif schema.get("additional", True) is False and not (
                prefix and key.startswith(prefix)
            ):
                errors.append(f"{path}: unexpected key {key}")
    if isinstance(value, list):
        if len(value) < schema.get("min_items", 0):
            errors.append(f"{path}: fewer than {schema['min_items']} items")
        for n, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{path}[{n}]")
    return errors


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_compose_matches_the_schema(compose):
    assert validate(compose, COMPOSE) == []


def test_validator_catches_mistakes(compose):
    broken = yaml.safe_load((REPO / "compose.yaml").read_text())
    broken["services"]["bot"]["depends_on"]["db"]["condition"] = "healthy"
    broken["services"]["bot"]["healthcheck"]["interval"] = 30
    broken["services"]["bot"]["enviroment"] = {}
    del broken["services"]["db"]
    problems = validate(broken, COMPOSE)
    assert len(problems) == 4, problems


def test_compose_services_fit_together(compose):
    services = compose["services"]
    db, bot, migrate = services["db"], services["bot"], services["migrate"]
    assert db["image"] == "postgres:16"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert bot["command"] == ["serve"] and bot["build"] == "."
    assert bot["healthcheck"]["test"] == ["CMD", "meetbot", "healthcheck"]
    assert bot["depends_on"]["db"]["condition"] == "service_healthy"
    # The schema is migrated once, before any bot starts.
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert bot["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate["image"] == bot["image"]
    # The bot talks to that database, with the password that database was given.
    url = bot["environment"]["DATABASE_URL"]
    assert url.startswith("postgresql://meetbot:") and url.endswith("@db:5432/meetbot")
    password = db["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD") and password in url
    assert db["environment"]["POSTGRES_USER"] == "meetbot"
    assert db["environment"]["POSTGRES_DB"] == "meetbot"
    # The published port reaches the PORT the bot listens on.
    port = bot["environment"]["PORT"]
    assert any(p.endswith(f":{port}") for p in bot["ports"])
    # Settings come from .env; none is written into the file itself.
    assert bot["env_file"] == ".env" and migrate["env_file"] == ".env"
    for service in services.values():
        for name, val in (service.get("environment") or {}).items():
            if re.search(r"SECRET|TOKEN|PASSWORD", name):
                assert val.startswith("${"), f"{name} is hard-coded in compose.yaml"
    for volume in db["volumes"]:
        assert volume.split(":", 1)[0] in compose["volumes"]


def test_compose_commands_exist(compose):
    """Every command compose runs is a real `meetbot` subcommand."""
    from click.testing import CliRunner

    from bot.ops.cli import main

    for service in ("bot", "migrate"):
        argv = compose["services"][service]["command"]
        result = CliRunner().invoke(main, [*argv, "--help"])
        assert result.exit_code == 0, (argv, result.output)
    hc = compose["services"]["bot"]["healthcheck"]["test"]
    assert CliRunner().invoke(main, [*hc[2:], "--help"]).exit_code == 0


def test_deploy_doc_covers_the_walkthrough():
    text = (REPO / "docs" / "deploy.md").read_text()
    for needed in (
        "manifest.yml",
        "Enterprise",
        "publishJwtControlEnabled",
        "remoteAllowedCIDR",
        "acceptOnlyRoomsInDataStore",
        "webhookAuthenticateURL",
        "Socket Mode",
        "PostgreSQL",
        "/readyz",
        "/metrics",
        "meetbot doctor",
    ):
        assert needed in text, needed
    # Every command the doc shows exists.
    from click.testing import CliRunner

    from bot.ops.cli import main

    for line in re.findall(r"^(?:\.venv/bin/)?meetbot ([a-z-]+(?: [a-z-]+)?)", text, re.M):
        argv = shlex.split(line)
        if CliRunner().invoke(main, [*argv, "--help"]).exit_code != 0:
            assert CliRunner().invoke(main, [argv[0], "--help"]).exit_code == 0, line
