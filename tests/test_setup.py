"""`meetbot setup` against the AMS and Slack doubles: flags, prompts, the file it writes.

The doctor that setup runs is the real one, against the doubles, so "green"
here means the answers reached a Slack that accepts the token and an AMS
whose settings match.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from dotenv import dotenv_values

from bot.ops.cli import main
from bot.ops.doctor import manifest_scopes
from bot.sim.ams import DEFAULT_ADMIN_EMAIL, DEFAULT_ADMIN_PASSWORD, AmsDouble
from bot.sim.slack import SlackDouble
from tests.conftest import BOT_TOKEN, SIGNING_SECRET, STREAM_SECRET

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "manifest.yml"
PUBLIC_URL = "https://meetbot.acme.test"
SECRETS = (BOT_TOKEN, SIGNING_SECRET, STREAM_SECRET, DEFAULT_ADMIN_PASSWORD)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No stray variables or .env of the developer's; the root logger restored afterwards."""
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
def slack():
    with SlackDouble(bot_token=BOT_TOKEN, scopes=manifest_scopes(MANIFEST)) as double:
        yield double


@pytest.fixture
def ams():
    settings = {"acceptOnlyRoomsInDataStore": True}
    with AmsDouble(stream_secret=STREAM_SECRET, settings=settings) as double:
        yield double


def flags(ams: AmsDouble, slack: SlackDouble, **changes: str | None) -> list[str]:
    values = {
        "--public-url": PUBLIC_URL,
        "--slack-bot-token": BOT_TOKEN,
        "--slack-signing-secret": SIGNING_SECRET,
        "--ams-url": ams.url,
        "--ams-app": "Conference",
        "--ams-jwt-secret": STREAM_SECRET,
        "--ams-admin-email": DEFAULT_ADMIN_EMAIL,
        "--ams-admin-password": DEFAULT_ADMIN_PASSWORD,
    }
    for k, v in changes.items():
        values["--" + k.replace("_", "-")] = v
    argv = ["--manifest", str(MANIFEST), "--timeout", "2"]
    for k, v in values.items():
        if v is not None:
            argv += [k, v]
    return argv


def setup(args: list[str], input: str | None = None):
    """Run `meetbot setup`. Tests set SLACK_API_URL (not one of its questions) in the
    environment to reach the Slack double; the doctor it runs reads it from there."""
    return CliRunner().invoke(main, ["setup", *args], input=input)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def printed_manifest(output: str) -> dict:
    rule = "-" * 72
    body = output.split(rule)[1]
    return yaml.safe_load(body)


def assert_green(result) -> None:
    assert result.exit_code == 0, result.output
    assert "meetbot doctor" in result.output
    assert "✗" not in result.output and "no problems" in result.output


def assert_no_secret(output: str) -> None:
    for secret in SECRETS:
        assert secret not in output


def test_flags_write_a_private_env_print_the_manifest_and_doctor_is_green(
    ams, slack, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLACK_API_URL", slack.api_url)
    os.umask(0)  # the most permissive umask: the file must still be the owner's only
    try:
        result = setup(flags(ams, slack))
    finally:
        os.umask(0o022)
    assert_green(result)
    env_file = tmp_path / ".env"
    assert mode(env_file) == 0o600
    written = dotenv_values(env_file)
    assert written == {
        "MEETBOT_PUBLIC_URL": PUBLIC_URL,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "AMS_URL": ams.url,
        "AMS_APP": "Conference",
        "AMS_JWT_SECRET": STREAM_SECRET,
        "AMS_ADMIN_EMAIL": DEFAULT_ADMIN_EMAIL,
        "AMS_ADMIN_PASSWORD": DEFAULT_ADMIN_PASSWORD,
    }
    assert_no_secret(result.output)
    # The manifest, ready to paste: every URL is the bot's, scopes as in manifest.yml.
    manifest = printed_manifest(result.output)
    urls = [
        manifest["features"]["slash_commands"][0]["url"],
        manifest["settings"]["event_subscriptions"]["request_url"],
        manifest["settings"]["interactivity"]["request_url"],
        *manifest["oauth_config"]["redirect_urls"],
    ]
    assert all(u.startswith(PUBLIC_URL + "/") for u in urls), urls
    assert manifest["features"]["slash_commands"][0]["url"] == f"{PUBLIC_URL}/slack/events"
    assert "example.com" not in result.output.split("-" * 72)[1]
    assert manifest["oauth_config"]["scopes"]["bot"] == manifest_scopes(MANIFEST)
    # The database was prepared (doctor's Database line is a tick) where serve will look.
    assert (tmp_path / "meetbot.db").exists()
    # And the bot itself reads what was written.
    from bot.config import load_settings

    monkeypatch.delenv("SLACK_API_URL")
    settings = load_settings()
    assert settings.slack_bot_token == BOT_TOKEN and settings.public_url == PUBLIC_URL


def test_prompts_hide_secrets_and_lead_to_a_green_doctor(ams, slack, tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_API_URL", slack.api_url)
    answers = [
        PUBLIC_URL,
        BOT_TOKEN,
        SIGNING_SECRET,
        ams.url,
        "",  # AMS app: the default, Conference
        STREAM_SECRET,
        "",  # no REST JWT
        DEFAULT_ADMIN_EMAIL,
        DEFAULT_ADMIN_PASSWORD,
        f"sqlite:///{tmp_path / 'bot.db'}",
    ]
    result = setup(["--manifest", str(MANIFEST), "--timeout", "2"], input="\n".join(answers) + "\n")
    assert_green(result)
    assert_no_secret(result.output)
    written = dotenv_values(tmp_path / ".env")
    assert written["AMS_APP"] == "Conference"
    assert written["SLACK_BOT_TOKEN"] == BOT_TOKEN
    assert written["DATABASE_URL"] == f"sqlite:///{tmp_path / 'bot.db'}"
    assert "AMS_REST_JWT_SECRET" not in written
    assert mode(tmp_path / ".env") == 0o600
    assert (tmp_path / "bot.db").exists()
    # The manifest came right after the public URL, before the Slack token was asked for.
    out = result.output
    assert out.index("slash_commands") < out.index("Slack Bot User OAuth Token")


def test_a_bad_answer_is_explained_and_asked_again(ams, slack, tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_API_URL", slack.api_url)
    answers = [
        "http://meetbot.acme.test",  # Slack calls HTTPS only
        PUBLIC_URL,
        "xoxp-a-user-token",  # not a bot token
        BOT_TOKEN,
        SIGNING_SECRET,
        "ams.example.com",  # no scheme
        ams.url,
        "Con ference",
        "Conference",
        "too-short",
        STREAM_SECRET,
        "",
        "",  # no management login: doctor warns, nothing fails
        "",
    ]
    result = setup(["--manifest", str(MANIFEST), "--timeout", "2"], input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Error: MEETBOT_PUBLIC_URL must start with https://" in out
    assert 'Error: SLACK_BOT_TOKEN must be a bot token starting with "xoxb-"' in out
    assert "Error: AMS_URL must be an http(s) URL with a host" in out
    assert "Error: AMS_APP may contain only letters, digits, _ and -" in out
    assert "Error: AMS_JWT_SECRET must be at least 32 characters" in out
    assert "too-short" not in out and "xoxp-a-user-token" not in out  # hidden, even when wrong
    assert dotenv_values(tmp_path / ".env")["AMS_URL"] == ams.url
    assert "AMS_ADMIN_EMAIL" not in dotenv_values(tmp_path / ".env")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ams_url": "ftp://ams.example.com"}, "Invalid value for '--ams-url': AMS_URL must be"),
        ({"public_url": "not a url"}, "Invalid value for '--public-url': MEETBOT_PUBLIC_URL"),
        ({"slack_bot_token": "xapp-1"}, "Invalid value for '--slack-bot-token': SLACK_BOT_TOKEN"),
        ({"ams_jwt_secret": "short"}, "AMS_JWT_SECRET must be at least 32 characters"),
        ({"database_url": "mysql://x/y"}, "DATABASE_URL must start with sqlite:// or postgresql"),
        ({"ams_admin_password": None}, "AMS_ADMIN_PASSWORD is required when AMS_ADMIN_EMAIL"),
        ({"ams_admin_password": "two words"}, "must not contain spaces"),
    ],
)
def test_bad_flags_stop_before_anything_is_written(ams, slack, tmp_path, change, message):
    result = setup(flags(ams, slack, **change))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / ".env").exists()
    assert not (tmp_path / "meetbot.db").exists()
    for key, value in change.items():
        if value and ("secret" in key or "password" in key):
            assert value not in result.output  # a wrong secret is still a secret


def test_an_existing_env_is_not_clobbered_without_a_yes(ams, slack, tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_API_URL", slack.api_url)
    env_file = tmp_path / ".env"
    original = "SLACK_BOT_TOKEN=xoxb-the-old-one\nPORT=4000\nMEETBOT_ROOM_TTL=30m\n"
    env_file.write_text(original)
    env_file.chmod(0o644)

    no = setup(flags(ams, slack), input="n\n")
    assert no.exit_code == 1
    assert "exists. Replace it" in no.output and "nothing written" in no.output
    assert env_file.read_text() == original and mode(env_file) == 0o644

    silent = setup(flags(ams, slack), input="")  # no answer at all (a script): no
    assert silent.exit_code == 1 and env_file.read_text() == original

    yes = setup(flags(ams, slack), input="y\n")
    assert_green(yes)
    written = dotenv_values(env_file)
    assert written["SLACK_BOT_TOKEN"] == BOT_TOKEN
    # What setup does not ask for stays.
    assert written["PORT"] == "4000" and written["MEETBOT_ROOM_TTL"] == "30m"
    assert "Kept from the old file: PORT, MEETBOT_ROOM_TTL" in yes.output
    assert mode(env_file) == 0o600  # and the old, readable file is gone

    forced = setup([*flags(ams, slack, ams_app="Conference"), "--force"])
    assert_green(forced)
    assert "exists. Replace it" not in forced.output


def test_the_file_is_private_before_any_secret_is_in_it(ams, slack, tmp_path, monkeypatch):
    """Every file written under the target's directory is 0600 when the secrets reach it."""
    from bot.ops import setup as setup_wizard

    monkeypatch.setenv("SLACK_API_URL", slack.api_url)
    seen: list[tuple[str, int]] = []
    real_fdopen = os.fdopen

    def watching_fdopen(fd, *args, **kwargs):
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_IMODE(os.fstat(fd).st_mode)))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(setup_wizard.os, "fdopen", watching_fdopen)
    os.umask(0)
    try:
        assert_green(setup(flags(ams, slack)))
    finally:
        os.umask(0o022)
    assert seen and all(m == 0o600 for _, m in seen), seen
    assert all(Path(p).parent == tmp_path for p, _ in seen)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".env")] == [".env"]


def test_doctor_failing_makes_setup_fail_but_keeps_the_file(ams, slack, tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_API_URL", slack.api_url)
    ams.set_stream_secret("a-different-stream-secret-0123456789-abcdef")
    result = setup(flags(ams, slack))
    assert result.exit_code == 1, result.output
    assert "✗" in result.output and "AMS stream secret" in result.output
    assert "Fix what doctor marks" in result.output
    assert (tmp_path / ".env").exists() and mode(tmp_path / ".env") == 0o600
    assert_no_secret(result.output)


def test_no_check_writes_and_prints_but_touches_no_database_or_server(ams, slack, tmp_path):
    """For a bot that runs elsewhere: no doctor here, no SQLite file conjured up."""
    result = setup([*flags(ams, slack), "--no-check"])
    assert result.exit_code == 0, result.output
    assert mode(tmp_path / ".env") == 0o600
    assert "slash_commands" in result.output and "meetbot doctor" in result.output
    assert "no problems" not in result.output
    assert not (tmp_path / "meetbot.db").exists()
    assert ams.requests == [] and not slack.calls
