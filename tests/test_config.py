"""bot/config.py: every variable of the design's table, all problems at once, no secret leaks."""

from __future__ import annotations

import dataclasses
import os
from unittest import mock

import pytest
from cryptography.fernet import Fernet

from bot.config import SECRET_FIELDS, ConfigError, Settings, load_settings

BOT_TOKEN = "xoxb-1111-2222-bottokenvalue"
SIGNING = "signing-secret-value-abcdef"
STREAM = "S" * 31 + "-stream-secret-value"  # 51 chars
FERNET = Fernet.generate_key().decode()

BASE = {
    "SLACK_BOT_TOKEN": BOT_TOKEN,
    "SLACK_SIGNING_SECRET": SIGNING,
    "AMS_URL": "https://ams.example.com:5443",
    "AMS_JWT_SECRET": STREAM,
}


def env(**changes: str | None) -> dict[str, str]:
    out = dict(BASE)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def problems(**changes: str | None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_settings(env(**changes))
    return e.value.problems


def one_problem(**changes: str | None) -> str:
    found = problems(**changes)
    assert len(found) == 1, found
    return found[0]


def test_defaults_follow_the_design_table() -> None:
    s = load_settings(BASE)
    assert s.slack_api_url == "https://slack.com/api/"
    assert s.ams_url == "https://ams.example.com:5443"
    assert s.ams_app == "Conference"
    assert s.database_url == "sqlite:///meetbot.db"
    assert s.port == 3000
    assert s.room_ttl == 3600
    assert s.max_room_ttl == 86400
    assert s.token_grace == 300
    assert s.secret_max_age == 0
    assert s.sweep_interval == 15
    assert s.max_open_rooms_per_user == 5
    assert s.allow_guests is False and s.slack_calls is False
    assert (s.log_format, s.log_level) == ("text", "INFO")
    assert s.ams_timeout == 10.0 and s.ams_concurrency == 8 and s.fanout_workers == 16
    for name in (
        "slack_app_token",
        "ams_rest_jwt_secret",
        "ams_admin_email",
        "secret_key",
        "public_url",
        "webhook_secret",
        "slack_client_id",
        "slack_client_secret",
    ):
        assert getattr(s, name) is None, name
    assert s.http_mode and not s.rotation_enabled and not s.oauth_enabled


def test_settings_is_frozen() -> None:
    s = load_settings(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_every_value_is_read() -> None:
    s = load_settings(
        env(
            SLACK_APP_TOKEN="xapp-1-abc",
            SLACK_API_URL="http://127.0.0.1:8080/api",
            AMS_URL="http://ams.local:5080/",
            AMS_APP="Live_2-x",
            AMS_REST_JWT_SECRET="rest-secret",
            AMS_ADMIN_EMAIL="admin@example.com",
            AMS_ADMIN_PASSWORD="pw",
            AMS_SERVER_JWT_SECRET="server-secret",
            DATABASE_URL="postgres://u:p@db/meet",
            PORT="8080",
            MEETBOT_ROOM_TTL="45m",
            MEETBOT_MAX_ROOM_TTL="2h",
            MEETBOT_TOKEN_GRACE="0",
            MEETBOT_SECRET_MAX_AGE="7d",
            MEETBOT_SWEEP_INTERVAL="5",
            MEETBOT_SECRET_KEY=FERNET,
            MEETBOT_PUBLIC_URL="https://meet.example.com/",
            MEETBOT_WEBHOOK_SECRET="abcdefghijklmnop_-",
            MEETBOT_MAX_OPEN_ROOMS_PER_USER="3",
            MEETBOT_ALLOW_GUESTS="yes",
            MEETBOT_SLACK_CALLS="ON",
            MEETBOT_LOG_FORMAT="JSON",
            MEETBOT_LOG_LEVEL="debug",
            SLACK_CLIENT_ID="123.456",
            SLACK_CLIENT_SECRET="client-secret",
            AMS_TIMEOUT="2.5",
            MEETBOT_AMS_CONCURRENCY="4",
            MEETBOT_FANOUT_WORKERS="24",
        )
    )
    assert s.slack_app_token == "xapp-1-abc" and not s.http_mode
    assert s.slack_api_url == "http://127.0.0.1:8080/api/"
    assert s.ams_url == "http://ams.local:5080"
    assert s.ams_app == "Live_2-x"
    assert s.database_url == "postgresql+psycopg://u:p@db/meet"
    assert (s.port, s.room_ttl, s.max_room_ttl, s.token_grace) == (8080, 2700, 7200, 0)
    assert (s.secret_max_age, s.sweep_interval) == (604800, 5)
    assert s.rotation_enabled
    assert s.public_url == "https://meet.example.com"
    assert s.max_open_rooms_per_user == 3
    assert s.allow_guests and s.slack_calls
    assert (s.log_format, s.log_level) == ("json", "DEBUG")
    assert not s.oauth_enabled  # a bot token is set: single workspace
    assert (s.ams_timeout, s.ams_concurrency, s.fanout_workers) == (2.5, 4, 24)


def test_blank_values_count_as_unset() -> None:
    s = load_settings(env(AMS_APP="", PORT="  ", MEETBOT_LOG_LEVEL=""))
    assert (s.ams_app, s.port, s.log_level) == ("Conference", 3000, "INFO")


# --- Slack --------------------------------------------------------------------------


def test_oauth_replaces_the_bot_token() -> None:
    key = Fernet.generate_key().decode()
    s = load_settings(
        env(
            SLACK_BOT_TOKEN=None,
            SLACK_CLIENT_ID="1.2",
            SLACK_CLIENT_SECRET="cs",
            MEETBOT_SECRET_KEY=key,
        )
    )
    assert s.oauth_enabled and s.slack_bot_token is None


OAUTH = {
    "SLACK_BOT_TOKEN": None,
    "SLACK_CLIENT_ID": "1.2",
    "SLACK_CLIENT_SECRET": "cs",
    "MEETBOT_SECRET_KEY": FERNET,
}


def test_allowed_teams() -> None:
    assert load_settings(env(**OAUTH)).allowed_teams == ()
    s = load_settings(env(**OAUTH, MEETBOT_ALLOWED_TEAMS=" T0001, E0ABC12 ,T0001,"))
    assert s.allowed_teams == ("T0001", "E0ABC12")


@pytest.mark.parametrize("bad", ["t0001", "U0001", "T0001;E01", ",", "T0001, C123"])
def test_allowed_teams_are_team_or_org_ids(bad: str) -> None:
    msg = one_problem(**OAUTH, MEETBOT_ALLOWED_TEAMS=bad)
    assert msg.startswith("MEETBOT_ALLOWED_TEAMS must be Slack team ids (T…) or Enterprise")


def test_allowed_teams_only_with_oauth() -> None:
    msg = one_problem(MEETBOT_ALLOWED_TEAMS="T0001")
    assert msg.startswith("MEETBOT_ALLOWED_TEAMS only applies to multi-workspace OAuth installs")


def test_oauth_needs_a_key_to_encrypt_the_bot_tokens() -> None:
    msg = one_problem(SLACK_BOT_TOKEN=None, SLACK_CLIENT_ID="1.2", SLACK_CLIENT_SECRET="cs")
    assert msg.startswith("MEETBOT_SECRET_KEY is required with SLACK_CLIENT_ID")


def test_bot_token_required_without_oauth() -> None:
    assert one_problem(SLACK_BOT_TOKEN=None).startswith("SLACK_BOT_TOKEN is required")


def test_half_oauth_is_an_error() -> None:
    msg = one_problem(SLACK_CLIENT_ID="1.2")
    assert "SLACK_CLIENT_SECRET is required" in msg
    msgs = problems(SLACK_BOT_TOKEN=None, SLACK_CLIENT_SECRET="cs")
    assert any(m.startswith("SLACK_CLIENT_ID is required") for m in msgs)
    assert any(m.startswith("SLACK_BOT_TOKEN is required") for m in msgs)


def test_bot_token_prefix() -> None:
    msg = one_problem(SLACK_BOT_TOKEN="xoxp-user-token-secret")
    assert msg.startswith("SLACK_BOT_TOKEN") and "xoxb-" in msg
    assert "xoxp-user-token-secret" not in msg


def test_signing_secret_needed_only_in_http_mode() -> None:
    assert one_problem(SLACK_SIGNING_SECRET=None).startswith("SLACK_SIGNING_SECRET is required")
    s = load_settings(env(SLACK_SIGNING_SECRET=None, SLACK_APP_TOKEN="xapp-1-A"))
    assert not s.http_mode


def test_app_token_prefix() -> None:
    msg = one_problem(SLACK_APP_TOKEN="xoxb-wrong-kind-of-token")
    assert msg.startswith("SLACK_APP_TOKEN") and "xapp-" in msg
    assert "wrong-kind" not in msg


# --- AMS ----------------------------------------------------------------------------


def test_ams_url_required_with_example() -> None:
    assert one_problem(AMS_URL=None) == "AMS_URL is required (e.g. https://ams.example.com:5443)"


@pytest.mark.parametrize("bad", ["ams.example.com", "ftp://ams", "https://", "http://h:99999", "x"])
def test_ams_url_must_be_http_with_host(bad: str) -> None:
    msg = one_problem(AMS_URL=bad)
    assert msg.startswith("AMS_URL must be an http(s) URL") and f'"{bad}"' in msg


def test_ams_url_with_credentials_is_refused_without_echoing_them() -> None:
    msg = one_problem(AMS_URL="https://admin:hunter2@ams.example.com")
    assert msg.startswith("AMS_URL") and "hunter2" not in msg


@pytest.mark.parametrize("bad", ["Con ference", "Conf/x", "app?", "Ünïcode"])
def test_ams_app_charset(bad: str) -> None:
    msg = one_problem(AMS_APP=bad)
    assert msg.startswith("AMS_APP") and bad in msg


def test_stream_secret_length_and_not_shown() -> None:
    msg = one_problem(AMS_JWT_SECRET="short-secret-value")
    assert msg == "AMS_JWT_SECRET must be at least 32 characters"


def test_stream_secret_required_without_rotation() -> None:
    assert one_problem(AMS_JWT_SECRET=None).startswith("AMS_JWT_SECRET is required")


def test_rotation_with_key_and_credentials_manages_the_stream_secret() -> None:
    s = load_settings(
        env(
            AMS_JWT_SECRET=None,
            MEETBOT_SECRET_MAX_AGE="30d",
            MEETBOT_SECRET_KEY=FERNET,
            AMS_SERVER_JWT_SECRET="server-secret-value",
        )
    )
    assert s.rotation_enabled and s.ams_jwt_secret is None
    s = load_settings(
        env(
            AMS_JWT_SECRET=None,
            MEETBOT_SECRET_MAX_AGE="30d",
            MEETBOT_SECRET_KEY=FERNET,
            AMS_ADMIN_EMAIL="a@example.com",
            AMS_ADMIN_PASSWORD="pw",
        )
    )
    assert s.rotation_enabled


def test_rotation_needs_key_and_management_credentials() -> None:
    msgs = problems(MEETBOT_SECRET_MAX_AGE="30d")
    assert any(m.startswith("MEETBOT_SECRET_KEY is required") for m in msgs)
    assert any(m.startswith("MEETBOT_SECRET_MAX_AGE") and "AMS_ADMIN_EMAIL" in m for m in msgs)
    assert len(msgs) == 2


def test_secret_key_must_be_fernet_and_is_not_shown() -> None:
    msg = one_problem(MEETBOT_SECRET_KEY="not-a-fernet-key-but-secret")
    assert msg.startswith("MEETBOT_SECRET_KEY must be a Fernet key")
    assert "not-a-fernet-key-but-secret" not in msg


def test_admin_email_and_password_come_together() -> None:
    assert one_problem(AMS_ADMIN_EMAIL="a@example.com").startswith("AMS_ADMIN_PASSWORD is required")
    msg = one_problem(AMS_ADMIN_PASSWORD="topsecretpw")
    assert msg.startswith("AMS_ADMIN_EMAIL is required") and "topsecretpw" not in msg


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "nan", "inf", "301"])
def test_ams_timeout(bad: str) -> None:
    assert one_problem(AMS_TIMEOUT=bad).startswith("AMS_TIMEOUT")


# --- durations and numbers -----------------------------------------------------------


def test_duration_message_names_variable_and_value() -> None:
    msg = one_problem(MEETBOT_ROOM_TTL="banana")
    assert msg.startswith('MEETBOT_ROOM_TTL: "banana" is not a duration')


@pytest.mark.parametrize(
    "name", ["MEETBOT_ROOM_TTL", "MEETBOT_MAX_ROOM_TTL", "MEETBOT_SWEEP_INTERVAL"]
)
def test_durations_that_must_be_positive(name: str) -> None:
    msg = one_problem(**{name: "0m"})
    assert msg.startswith(name) and '"0m"' in msg


def test_zero_allowed_for_grace_and_max_age() -> None:
    s = load_settings(env(MEETBOT_TOKEN_GRACE="0", MEETBOT_SECRET_MAX_AGE="0"))
    assert s.token_grace == 0 and s.secret_max_age == 0


def test_negative_duration() -> None:
    assert "negative" in one_problem(MEETBOT_TOKEN_GRACE="-5m")


def test_room_ttl_not_above_max() -> None:
    msg = one_problem(MEETBOT_ROOM_TTL="2h", MEETBOT_MAX_ROOM_TTL="1h")
    assert "MEETBOT_ROOM_TTL (2h)" in msg and "MEETBOT_MAX_ROOM_TTL (1h)" in msg
    # a bad value is reported once, without a knock-on comparison error
    assert len(problems(MEETBOT_ROOM_TTL="banana", MEETBOT_MAX_ROOM_TTL="30m")) == 1


@pytest.mark.parametrize("bad", ["abc", "0", "65536", "-1", "80.0", "+80", "99999999999"])
def test_port(bad: str) -> None:
    assert one_problem(PORT=bad) == f'PORT must be a number from 1 to 65535, not "{bad}"'


@pytest.mark.parametrize(
    "name", ["MEETBOT_MAX_OPEN_ROOMS_PER_USER", "MEETBOT_AMS_CONCURRENCY", "MEETBOT_FANOUT_WORKERS"]
)
@pytest.mark.parametrize("bad", ["0", "-3", "two", "1.5"])
def test_positive_integers(name: str, bad: str) -> None:
    msg = one_problem(**{name: bad})
    assert msg.startswith(name) and f'"{bad}"' in msg


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("0", False),
        ("TRUE", True),
        ("false", False),
        ("Yes", True),
        ("no", False),
        ("on", True),
        ("OFF", False),
    ],
)
def test_booleans(raw: str, value: bool) -> None:
    assert load_settings(env(MEETBOT_ALLOW_GUESTS=raw)).allow_guests is value


def test_bad_boolean() -> None:
    msg = one_problem(MEETBOT_SLACK_CALLS="maybe")
    assert msg.startswith("MEETBOT_SLACK_CALLS") and '"maybe"' in msg


def test_log_format_and_level() -> None:
    assert one_problem(MEETBOT_LOG_FORMAT="xml").startswith("MEETBOT_LOG_FORMAT must be one of")
    assert one_problem(MEETBOT_LOG_LEVEL="TRACE").startswith("MEETBOT_LOG_LEVEL must be one of")


# --- URLs, database, webhook ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("sqlite:///meetbot.db", "sqlite:///meetbot.db"),
        ("sqlite://", "sqlite://"),
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_database_url(raw: str, stored: str) -> None:
    assert load_settings(env(DATABASE_URL=raw)).database_url == stored


def test_bad_database_url_hides_password() -> None:
    msg = one_problem(DATABASE_URL="mysql://root:dbpass123@h/db")
    assert msg.startswith("DATABASE_URL must start with sqlite:// or postgresql")
    assert "dbpass123" not in msg and "mysql://root:***@h/db" in msg


def test_public_url() -> None:
    msg = one_problem(MEETBOT_PUBLIC_URL="meet.example.com")
    assert msg.startswith("MEETBOT_PUBLIC_URL") and "meet.example.com" in msg


@pytest.mark.parametrize("bad", ["short", "has spaces in it ok", "slash/in/it/0123456", "ä" * 20])
def test_webhook_secret(bad: str) -> None:
    msg = one_problem(MEETBOT_WEBHOOK_SECRET=bad)
    assert msg.startswith("MEETBOT_WEBHOOK_SECRET") and bad not in msg


# --- all at once, no leaks -----------------------------------------------------------


def test_all_problems_reported_together() -> None:
    with pytest.raises(ConfigError) as e:
        load_settings({"PORT": "abc", "MEETBOT_ROOM_TTL": "banana", "AMS_APP": "a b"})
    names = [p.split()[0].rstrip(":") for p in e.value.problems]
    for expected in (
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "AMS_URL",
        "AMS_APP",
        "AMS_JWT_SECRET",
        "MEETBOT_ROOM_TTL",
        "PORT",
    ):
        assert expected in names
    assert str(e.value) == "\n".join(e.value.problems)
    assert all("\n" not in p for p in e.value.problems)


def test_no_secret_value_in_any_message() -> None:
    secrets = {
        "SLACK_BOT_TOKEN": "xoxp-LEAK1-not-a-bot-token",
        "SLACK_APP_TOKEN": "LEAK2-not-an-app-token",
        "AMS_JWT_SECRET": "LEAK3-short",
        "MEETBOT_SECRET_KEY": "LEAK4-not-fernet",
        "MEETBOT_WEBHOOK_SECRET": "LEAK5 bad chars!",
        "AMS_ADMIN_PASSWORD": "LEAK6-password",
        "DATABASE_URL": "oracle://u:LEAK7@h/db",
        "SLACK_CLIENT_SECRET": "LEAK8-client-secret",
        "MEETBOT_SECRET_MAX_AGE": "1d",
    }
    with pytest.raises(ConfigError) as e:
        load_settings({**BASE, **secrets})
    assert "LEAK" not in str(e.value)


def test_redacted_and_secrets() -> None:
    s = load_settings(
        env(
            DATABASE_URL="postgresql://meet:p%40ss@db/meet",
            MEETBOT_WEBHOOK_SECRET="w" * 20,
            AMS_ADMIN_EMAIL="a@example.com",
            AMS_ADMIN_PASSWORD="adminpw",
        )
    )
    red = s.redacted()
    assert set(red) == {f.name for f in dataclasses.fields(Settings)}
    for name in SECRET_FIELDS:
        assert red[name] in ("***", None), name
    assert red["slack_bot_token"] == "***" and red["ams_admin_password"] == "***"
    assert red["slack_client_id"] is None
    assert red["database_url"] == "postgresql+psycopg://meet:***@db/meet"
    assert red["ams_admin_email"] == "a@example.com" and red["port"] == 3000
    text = repr(red) + repr(s)
    for secret in (BOT_TOKEN, SIGNING, STREAM, "adminpw", "p%40ss", "p@ss", "w" * 20):
        assert secret not in text
    found = s.secrets()
    for secret in (BOT_TOKEN, SIGNING, STREAM, "adminpw", "w" * 20, "p@ss", "p%40ss"):
        assert secret in found
    assert found == sorted(found, key=len, reverse=True)


# --- the real environment and .env --------------------------------------------------


def test_env_none_reads_dotenv_without_overriding(tmp_path, monkeypatch) -> None:
    (tmp_path / ".env").write_text(
        "SLACK_BOT_TOKEN=xoxb-from-dotenv\n"
        f"SLACK_SIGNING_SECRET={SIGNING}\n"
        "AMS_URL=https://from-dotenv.example.com/\n"
        f"AMS_JWT_SECRET={STREAM}\n"
        "PORT=4000\n"
    )
    monkeypatch.chdir(tmp_path)
    names = [*BASE, "PORT", "SLACK_APP_TOKEN", "SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"]
    clean = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("MEETBOT_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        os.environ["PORT"] = "5000"  # the real environment wins over .env
        s = load_settings()
    assert s.slack_bot_token == "xoxb-from-dotenv"
    assert s.ams_url == "https://from-dotenv.example.com"
    assert s.port == 5000


def test_env_none_without_dotenv_reads_os_environ(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with mock.patch.dict(os.environ, BASE, clear=True):
        assert load_settings().ams_url == BASE["AMS_URL"]
        os.environ.pop("AMS_URL")
        with pytest.raises(ConfigError):
            load_settings()


def test_variable_names_are_every_variable_the_reader_asks_for() -> None:
    """variable_names() is what deployment files are checked against: it must hold every
    name bot/config.py reads, including ones read only when another is set."""
    import re
    from pathlib import Path

    from bot.config import variable_names

    names = variable_names()
    source = Path(load_settings.__code__.co_filename).read_text()
    quoted = set(re.findall(r'"((?:SLACK|AMS|MEETBOT)_[A-Z_]+|DATABASE_URL|PORT)"', source))
    assert quoted and quoted <= names, quoted - names
    # Only what it reads: not Bolt's own variables, not compose's.
    assert "SLACK_VERIFICATION_TOKEN" not in names and "POSTGRES_PASSWORD" not in names


def test_readme_table_lists_exactly_the_variables_read() -> None:
    import re
    from pathlib import Path

    from bot.config import variable_names

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)? \|", readme, re.M)
    listed = {name for row in rows for name in row if name}
    assert listed == variable_names()
