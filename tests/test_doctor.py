"""`meetbot doctor` against the AMS and Slack doubles, one misconfiguration at a time."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from bot.config import load_settings
from bot.ops.cli import main
from bot.ops.doctor import Status, failed, manifest_scopes, run_checks
from bot.sim.ams import (
    COMMUNITY_EDITION,
    DEFAULT_ADMIN_EMAIL,
    DEFAULT_ADMIN_PASSWORD,
    AmsDouble,
)
from bot.sim.slack import SlackDouble
from bot.store import Store
from tests.conftest import BOT_TOKEN, SIGNING_SECRET, STREAM_SECRET, free_port

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "manifest.yml"
SCOPES = manifest_scopes(MANIFEST)
OTHER_SECRET = "another-stream-secret-9876543210-9876543210"
WEBHOOK_SECRET = "hook-secret-0123456789abcdef"
LOCKED = {"acceptOnlyRoomsInDataStore": True}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No stray variables or .env of the developer's; the root logger restored afterwards."""
    import os

    for name in list(os.environ):
        if name.startswith(("SLACK_", "AMS_", "MEETBOT_")) or name in ("DATABASE_URL", "PORT"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'meetbot.db'}"
    store = Store(url)
    store.migrate()
    store.dispose()
    return url


def env_for(ams: AmsDouble, slack: SlackDouble, database_url: str, **extra: str) -> dict:
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "AMS_URL": ams.url,
        "AMS_JWT_SECRET": STREAM_SECRET,
        "AMS_ADMIN_EMAIL": DEFAULT_ADMIN_EMAIL,
        "AMS_ADMIN_PASSWORD": DEFAULT_ADMIN_PASSWORD,
        "DATABASE_URL": database_url,
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def checks_for(env: dict) -> dict:
    checks = run_checks(load_settings(env), manifest=MANIFEST, timeout=2)
    return {c.id: c for c in checks}


def doctor_cli(monkeypatch: pytest.MonkeyPatch, env: dict, *args: str):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return CliRunner().invoke(main, ["doctor", "--manifest", str(MANIFEST), *args])


@pytest.fixture
def good_slack():
    with SlackDouble(bot_token=BOT_TOKEN, scopes=SCOPES) as double:
        yield double


@pytest.fixture
def good_ams():
    with AmsDouble(stream_secret=STREAM_SECRET, settings=LOCKED) as double:
        yield double


def test_all_good_exits_0_with_a_tick_for_everything(monkeypatch, good_ams, good_slack, migrated):
    result = doctor_cli(monkeypatch, env_for(good_ams, good_slack, migrated))
    assert result.exit_code == 0, result.output
    assert "✗" not in result.output
    assert "no problems" in result.output
    for title in ("Configuration", "Database", "Slack scopes", "AMS edition", "AMS stream secret"):
        line = next(x for x in result.output.splitlines() if title in x)
        assert "✓" in line, line
    assert STREAM_SECRET not in result.output


def test_json_output_for_scripts(monkeypatch, good_ams, good_slack, migrated):
    result = doctor_cli(monkeypatch, env_for(good_ams, good_slack, migrated), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True
    statuses = {c["id"]: c["status"] for c in data["checks"]}
    assert statuses["ams_edition"] == "ok" and statuses["database"] == "ok"
    assert data["settings"]["ams_jwt_secret"] == "***"
    assert STREAM_SECRET not in result.stdout and DEFAULT_ADMIN_PASSWORD not in result.stdout


def test_oauth_without_an_allow_list_warns(monkeypatch, good_ams, good_slack, migrated):
    from cryptography.fernet import Fernet

    oauth = dict(
        SLACK_BOT_TOKEN=None,
        SLACK_CLIENT_ID="1.2",
        SLACK_CLIENT_SECRET="oauth-client-secret",
        MEETBOT_SECRET_KEY=Fernet.generate_key().decode(),
    )
    checks = checks_for(env_for(good_ams, good_slack, migrated, **oauth))
    assert checks["installs"].status is Status.WARN
    assert "any Slack workspace can install" in checks["installs"].summary
    assert "MEETBOT_ALLOWED_TEAMS" in checks["installs"].fix
    listed = env_for(good_ams, good_slack, migrated, **oauth, MEETBOT_ALLOWED_TEAMS="T0001,E0002")
    checks = checks_for(listed)
    assert checks["installs"].status is Status.OK
    assert "T0001, E0002" in checks["installs"].summary
    # A single workspace's bot token: nothing to say.
    assert "installs" not in checks_for(env_for(good_ams, good_slack, migrated))


def test_community_edition_fails_loudly(monkeypatch, good_slack, migrated):
    with AmsDouble(stream_secret=STREAM_SECRET, edition=COMMUNITY_EDITION, settings=LOCKED) as ams:
        result = doctor_cli(monkeypatch, env_for(ams, good_slack, migrated))
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if "AMS edition" in x)
    assert "✗" in line and "NOT ENFORCED" in line
    assert "Enterprise" in result.output


def test_ip_filter_403_explains_remote_allowed_cidr(good_slack, migrated):
    with AmsDouble(stream_secret=STREAM_SECRET, ip_allowed=False) as ams:
        checks = checks_for(env_for(ams, good_slack, migrated))
    assert checks["ams"].status is Status.OK  # it answered: reachable
    assert checks["ams_edition"].status is Status.SKIP
    rest = checks["ams_rest"]
    assert rest.status is Status.FAIL and "Not allowed IP" in rest.summary
    assert "remoteAllowedCIDR" in rest.fix and "AMS_REST_JWT_SECRET" in rest.fix


def test_bad_rest_jwt(good_slack, migrated):
    with AmsDouble(stream_secret=STREAM_SECRET, rest_jwt_secret="R" * 40) as ams:
        wrong = checks_for(env_for(ams, good_slack, migrated, AMS_REST_JWT_SECRET="W" * 40))
        unset = checks_for(env_for(ams, good_slack, migrated))
        right = checks_for(env_for(ams, good_slack, migrated, AMS_REST_JWT_SECRET="R" * 40))
    assert wrong["ams_rest"].status is Status.FAIL
    assert "does not match" in wrong["ams_rest"].fix and "jwtSecretKey" in wrong["ams_rest"].fix
    assert unset["ams_rest"].status is Status.FAIL
    assert "set AMS_REST_JWT_SECRET" in unset["ams_rest"].fix
    assert right["ams_rest"].status is Status.OK


def test_jwt_control_off(monkeypatch, good_slack, migrated):
    with AmsDouble(
        stream_secret=STREAM_SECRET, settings={**LOCKED, "playJwtControlEnabled": False}
    ) as ams:
        result = doctor_cli(monkeypatch, env_for(ams, good_slack, migrated))
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if "AMS stream tokens" in x)
    assert "✗" in line and "play" in line and "publish and" not in line
    assert "playJwtControlEnabled" in result.output


def test_secret_mismatch_shows_neither_secret(monkeypatch, good_slack, migrated):
    with AmsDouble(stream_secret=OTHER_SECRET, settings=LOCKED) as ams:
        env = env_for(ams, good_slack, migrated)
        text = doctor_cli(monkeypatch, env)
        as_json = doctor_cli(monkeypatch, env, "--json")
        verbose = doctor_cli(monkeypatch, env, "-v")
    assert text.exit_code == 1
    line = next(x for x in text.output.splitlines() if "AMS stream secret" in x)
    assert "✗" in line and "differs" in line
    for result in (text, as_json, verbose):
        for secret in (STREAM_SECRET, OTHER_SECRET, STREAM_SECRET[:16], OTHER_SECRET[:16]):
            assert secret not in result.output


def test_secret_rotated_into_the_database_is_the_one_compared(good_slack, migrated):
    from cryptography.fernet import Fernet

    from bot.ams.stream_secret import Vault

    key = Fernet.generate_key().decode()
    with sa.create_engine(migrated).begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO stream_secrets (version, ciphertext, state, created_at, activated_at)"
                " VALUES (2, :c, 'current', 1, 1)"
            ),
            {"c": Vault(key).encrypt(OTHER_SECRET)},
        )
    extra = {"MEETBOT_SECRET_MAX_AGE": "7d", "MEETBOT_SECRET_KEY": key}
    with AmsDouble(stream_secret=OTHER_SECRET, settings=LOCKED) as ams:
        checks = checks_for(env_for(ams, good_slack, migrated, **extra))
    # AMS_JWT_SECRET is stale after a rotation; the stored current secret is what counts.
    assert checks["ams_stream_secret"].status is Status.OK
    assert "stored current" in checks["ams_stream_secret"].summary


def test_missing_scopes(monkeypatch, good_ams, migrated):
    scopes = [s for s in SCOPES if s != "im:history"]
    with SlackDouble(bot_token=BOT_TOKEN, scopes=scopes) as slack:
        result = doctor_cli(monkeypatch, env_for(good_ams, slack, migrated))
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if "Slack scopes" in x)
    assert "✗" in line and "im:history" in line
    assert "reinstall" in result.output


def test_optional_calls_scope_only_warns_while_calls_are_off(good_ams, migrated):
    scopes = [s for s in SCOPES if s != "calls:write"]
    with SlackDouble(bot_token=BOT_TOKEN, scopes=scopes) as slack:
        off = checks_for(env_for(good_ams, slack, migrated))
        calls = {
            "MEETBOT_SLACK_CALLS": "1",
            "MEETBOT_PUBLIC_URL": "https://meetbot.example.com",
            "SLACK_CLIENT_ID": "1234.5678",
            "SLACK_CLIENT_SECRET": "client-secret-0123456789",
        }
        on = checks_for(env_for(good_ams, slack, migrated, **calls))
    assert off["slack_scopes"].status is Status.WARN
    assert on["slack_scopes"].status is Status.FAIL


def test_bad_slack_token(good_ams, migrated):
    with SlackDouble(bot_token="xoxb-the-real-one", scopes=SCOPES) as slack:
        checks = checks_for(env_for(good_ams, slack, migrated))
    assert checks["slack"].status is Status.FAIL and "invalid_auth" in checks["slack"].summary
    assert checks["slack_scopes"].status is Status.SKIP


def test_database_not_migrated(good_ams, good_slack, tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(empty).connect().close()  # the file exists, with no tables
    half = f"sqlite:///{tmp_path / 'half.db'}"
    from alembic import command

    from bot.store import alembic_config

    engine = sa.create_engine(half)
    command.upgrade(alembic_config(engine), "0001")
    engine.dispose()
    missing = tmp_path / "nope.db"

    checks_empty = checks_for(env_for(good_ams, good_slack, empty))
    checks_half = checks_for(env_for(good_ams, good_slack, half))
    checks_missing = checks_for(env_for(good_ams, good_slack, f"sqlite:///{missing}"))

    assert checks_empty["database"].status is Status.FAIL
    assert "no meetbot tables" in checks_empty["database"].summary
    assert "meetbot db upgrade" in checks_empty["database"].fix
    assert checks_half["database"].status is Status.FAIL
    assert "0001" in checks_half["database"].summary
    assert checks_missing["database"].status is Status.FAIL
    assert not missing.exists(), "doctor must not create the database"


def test_ams_unreachable_fails_fast(monkeypatch, good_slack, migrated):
    class Gone:
        url = f"http://127.0.0.1:{free_port()}"

    started = time.monotonic()
    result = doctor_cli(monkeypatch, env_for(Gone, good_slack, migrated))
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if "AMS server" in x)
    assert "✗" in line and "unreachable" in line
    assert "AMS_URL" in result.output


def test_management_login_refused_is_tried_once(good_slack, migrated):
    with AmsDouble(stream_secret=STREAM_SECRET) as ams:
        checks = checks_for(env_for(ams, good_slack, migrated, AMS_ADMIN_PASSWORD="wrong"))
        logins = ams.count("POST", "/rest/v2/users/authenticate")
    assert checks["ams_management"].status is Status.FAIL
    assert logins == 1


def test_without_management_credentials_it_warns(good_ams, good_slack, migrated):
    env = env_for(good_ams, good_slack, migrated)
    del env["AMS_ADMIN_EMAIL"], env["AMS_ADMIN_PASSWORD"]
    checks = run_checks(load_settings(env), manifest=MANIFEST, timeout=2)
    by_id = {c.id: c for c in checks}
    assert by_id["ams_management"].status is Status.WARN
    assert "ams_stream_secret" not in by_id
    assert not failed(checks)


def test_rooms_lock_off_and_open_rest_api(good_slack, migrated):
    settings = {"acceptOnlyRoomsInDataStore": False, "ipFilterEnabled": False}
    with AmsDouble(stream_secret=STREAM_SECRET, settings=settings) as ams:
        checks = checks_for(env_for(ams, good_slack, migrated))
    assert checks["ams_rooms_lock"].status is Status.WARN
    assert "acceptOnlyRoomsInDataStore" in checks["ams_rooms_lock"].fix
    assert checks["ams_rest_guard"].status is Status.FAIL


def test_webhook_url_to_configure_is_the_only_place_its_secret_shows(
    monkeypatch, good_ams, good_slack, migrated
):
    env = env_for(
        good_ams,
        good_slack,
        migrated,
        MEETBOT_PUBLIC_URL="https://meetbot.example.com",
        MEETBOT_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    result = doctor_cli(monkeypatch, env)
    expected = f"https://meetbot.example.com/ams/auth/{WEBHOOK_SECRET}"
    assert result.exit_code == 0  # a warning, not a failure
    assert [line.strip() for line in result.output.splitlines() if WEBHOOK_SECRET in line] == [
        expected
    ]
    good_ams.update_settings(webhookAuthenticateURL=expected, webhookPlayAuthUrl=expected)
    ok = doctor_cli(monkeypatch, env)
    assert WEBHOOK_SECRET not in ok.output
    line = next(x for x in ok.output.splitlines() if "AMS join webhooks" in x)
    assert "✓" in line


def test_both_webhook_settings_are_checked_and_what_is_missing_is_said(
    good_ams, good_slack, migrated
):
    env = env_for(good_ams, good_slack, migrated, MEETBOT_WEBHOOK_SECRET=WEBHOOK_SECRET)
    # No MEETBOT_PUBLIC_URL: the path is what can be checked.
    good_ams.update_settings(
        webhookAuthenticateURL=f"https://bot.example/ams/auth/{WEBHOOK_SECRET}"
    )
    check = checks_for(env)["ams_webhook"]
    assert check.status is Status.WARN
    assert check.summary == "webhookPlayAuthUrl not pointing at meetbot"
    (detail,) = check.details
    assert "is not set" in detail and "can still watch" in detail
    assert f"/ams/auth/{WEBHOOK_SECRET}" in check.fix and "MEETBOT_PUBLIC_URL" in check.fix
    good_ams.update_settings(webhookPlayAuthUrl="https://elsewhere.example/hook")
    check = checks_for(env)["ams_webhook"]
    assert "points elsewhere" in check.details[0] and "elsewhere.example" not in str(check)
    good_ams.update_settings(webhookPlayAuthUrl=f"https://bot.example/ams/auth/{WEBHOOK_SECRET}")
    assert checks_for(env)["ams_webhook"].status is Status.OK
    # Neither set: both named, each with what it costs.
    good_ams.update_settings(webhookAuthenticateURL="", webhookPlayAuthUrl="")
    check = checks_for(env)["ams_webhook"]
    assert check.summary == "webhookAuthenticateURL and webhookPlayAuthUrl not pointing at meetbot"
    assert "rejoins" in check.details[0] and "watch" in check.details[1]


def test_the_deployment_id_is_shown(good_ams, good_slack, migrated):
    deployment = Store(migrated).deployment_id(create=False)
    check = checks_for(env_for(good_ams, good_slack, migrated))["database"]
    assert deployment and deployment in check.summary and "marker" in check.details[0]


def test_rest_refusals_name_the_filter_in_the_order_ams_runs_them(good_slack, migrated):
    """The JWT filter runs before the IP filter; each 403 is Tomcat's HTML page."""
    with AmsDouble(stream_secret=STREAM_SECRET, rest_jwt_secret="R" * 40, ip_allowed=False) as ams:
        # Right JWT, wrong address: the IP filter refused (the JWT passed).
        ip = checks_for(env_for(ams, good_slack, migrated, AMS_REST_JWT_SECRET="R" * 40))
        # Both wrong: the JWT filter answers first, and the IP filter is named as next.
        both = checks_for(env_for(ams, good_slack, migrated, AMS_REST_JWT_SECRET="W" * 40))
    assert ip["ams_rest"].summary == "refused by the IP filter: HTTP 403 Not allowed IP"
    assert (
        "remoteAllowedCIDR" in ip["ams_rest"].fix
        and "let the request through" in ip["ams_rest"].fix
    )
    assert both["ams_rest"].summary.startswith("refused by the REST JWT filter")
    assert "does not match" in both["ams_rest"].fix and "IP filter" in both["ams_rest"].fix


def test_configuration_problems_are_listed(monkeypatch):
    monkeypatch.setenv("AMS_URL", "ftp://nope")
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert "SLACK_BOT_TOKEN is required" in result.output
    assert "AMS_URL must be an http(s) URL" in result.output
