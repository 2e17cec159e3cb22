"""Settings from the environment, validated all at once.

``meetbot serve`` must refuse to start on a bad configuration, and an operator
fixing a ``.env`` deserves every mistake in one go rather than one per restart.
So :func:`load_settings` collects all problems and raises one
:class:`ConfigError`; each problem is a single line that names the variable
and, unless it is a secret, the offending value. Secret values never appear in
messages, in :meth:`Settings.redacted` or in ``repr()``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from bot.durations import parse_duration

__all__ = ["ConfigError", "SECRET_FIELDS", "Settings", "load_settings", "variable_names"]

#: Fields whose values must never be shown (messages, ``doctor``, logs, repr).
SECRET_FIELDS: frozenset[str] = frozenset(
    {
        "slack_bot_token",
        "slack_signing_secret",
        "slack_app_token",
        "slack_client_secret",
        "ams_jwt_secret",
        "ams_rest_jwt_secret",
        "ams_admin_password",
        "ams_server_jwt_secret",
        "secret_key",
        "webhook_secret",
    }
)
_MASK = "***"


def _secret() -> Any:
    """A secret field: optional, and kept out of ``repr()`` so a stray log line cannot leak it."""
    return field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated configuration. Durations are int seconds; optional values are ``None``.

    Build it with :func:`load_settings`; constructing it directly (tests) skips
    validation on purpose.
    """

    ams_url: str
    slack_bot_token: str | None = _secret()
    slack_signing_secret: str | None = _secret()
    slack_app_token: str | None = _secret()
    slack_api_url: str = "https://slack.com/api/"
    ams_app: str = "Conference"
    ams_jwt_secret: str | None = _secret()
    ams_rest_jwt_secret: str | None = _secret()
    ams_admin_email: str | None = None
    ams_admin_password: str | None = _secret()
    ams_server_jwt_secret: str | None = _secret()
    # repr=False: a PostgreSQL URL may carry a password.
    database_url: str = field(default="sqlite:///meetbot.db", repr=False)
    port: int = 3000
    room_ttl: int = 3600
    max_room_ttl: int = 86400
    token_grace: int = 300
    secret_max_age: int = 0
    sweep_interval: int = 15
    secret_key: str | None = _secret()
    public_url: str | None = None
    webhook_secret: str | None = _secret()
    max_open_rooms_per_user: int = 5
    allow_guests: bool = False
    slack_calls: bool = False
    log_format: str = "text"
    log_level: str = "INFO"
    slack_client_id: str | None = None
    slack_client_secret: str | None = _secret()
    ams_timeout: float = 10.0
    ams_concurrency: int = 8
    #: Threads sending Slack posts: each holds one for Slack's round trip and the
    #: record of its outcome. 16, not 8: in the morning burst (bench/burst.py) 8
    #: were the bottleneck, not Slack's caps (fan-out 1.16-1.53x the caps' time
    #: against 1.06-1.15x with 16).
    fanout_workers: int = 16
    #: How long a claimed outbox message is one worker's before others may send it.
    outbox_lease: int = 30
    #: How often one replica compares AMS's rooms with the database.
    reconcile_interval: int = 300
    #: Slack's workspace-wide cap on chat.postMessage as (posts, per seconds): the
    #: outbox never asks for more, on all replicas together (bot/slack/pacing.py).
    slack_post_cap: tuple[int, int] = (600, 60)
    #: OAuth installs: the Slack team (T…) and Enterprise Grid org (E…) ids that
    #: may install the app; empty means any workspace.
    allowed_teams: tuple[str, ...] = ()

    @property
    def rotation_enabled(self) -> bool:
        """The scheduler rotates the AMS stream secret only when a maximum age is set."""
        return self.secret_max_age > 0

    @property
    def http_mode(self) -> bool:
        """Without an app-level token there is no Socket Mode: Slack must reach us over HTTP."""
        return not self.slack_app_token

    @property
    def oauth_enabled(self) -> bool:
        """Multi-workspace install flow: client credentials given and no fixed bot token."""
        return bool(self.slack_client_id and self.slack_client_secret and not self.slack_bot_token)

    def redacted(self) -> dict[str, Any]:
        """All settings as a dict, secrets shown as ``***`` (unset ones as ``None``).

        For ``meetbot doctor``: operators see what is configured without the
        output becoming a credential to protect. The database password is
        masked inside its URL.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = _MASK
            elif f.name == "database_url":
                value = _mask_url_password(value)
            out[f.name] = value
        return out

    def secrets(self) -> list[str]:
        """The configured secret values, longest first, for a log redaction filter.

        Includes the database password (raw and URL-encoded forms) because
        SQLAlchemy errors can echo the URL.
        """
        values = {getattr(self, name) for name in SECRET_FIELDS}
        password = urlsplit(self.database_url).password if "://" in self.database_url else None
        if password:
            values.update({password, unquote(password), quote(unquote(password), safe="")})
        return sorted((v for v in values if v), key=lambda v: (-len(v), v))


class ConfigError(Exception):
    """Every configuration problem found, one line each, naming the variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def _mask_url_password(url: str) -> str:
    """Replace the password of a URL with ``***`` so it can be shown."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:{_MASK}@{netloc}"))
    except ValueError:
        return _MASK


def _show(value: str) -> str:
    """Quote a (non-secret) value for a message, cut short to stay on one line."""
    value = value.replace("\n", " ").replace("\r", " ")
    if len(value) > 60:
        value = value[:59] + "…"
    return f'"{value}"'


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_APP_RE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_URLSAFE_RE = re.compile(r"[A-Za-z0-9._~-]+", re.ASCII)
_INT_RE = re.compile(r"[0-9]{1,9}", re.ASCII)
_TEAM_ID_RE = re.compile(r"[TE][A-Z0-9]{2,31}", re.ASCII)


class _Reader:
    """Reads variables from one mapping and records problems instead of raising.

    Every getter returns a usable fallback after a problem so that later
    checks (e.g. ROOM_TTL ≤ MAX_ROOM_TTL) can still run without cascading noise.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.bad: set[str] = set()

    def problem(self, message: str, name: str | None = None) -> None:
        self.problems.append(message)
        if name:
            self.bad.add(name)

    def raw(self, name: str) -> str | None:
        """The stripped value, or None when unset or blank (``FOO=`` in a .env means unset)."""
        value = self.env.get(name)
        if value is None:
            return None
        value = str(value).strip()
        return value or None

    def duration(self, name: str, default: int, *, allow_zero: bool) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            self.problem(f"{name}: {e}", name)
            return default
        if seconds == 0 and not allow_zero:
            self.problem(f"{name} must be longer than 0, not {_show(value)}", name)
            return default
        return seconds

    def integer(self, name: str, default: int, *, low: int = 1, high: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        n = int(value) if _INT_RE.fullmatch(value) else None
        if n is None or n < low or (high is not None and n > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            self.problem(f"{name} must be a number {bound}, not {_show(value)}")
            return default
        return n

    def number(self, name: str, default: float, *, high: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            n = float(value)
        except ValueError:
            n = math.nan
        if not (math.isfinite(n) and 0 < n <= high):
            self.problem(
                f"{name} must be a number of seconds above 0 and at most {high:g}, "
                f"not {_show(value)}"
            )
            return default
        return n

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        self.problem(f"{name} must be one of 1/0, true/false, yes/no, on/off, not {_show(value)}")
        return default

    def choice(
        self, name: str, default: str, choices: tuple[str, ...], norm: Callable[[str], str]
    ) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if norm(value) not in choices:
            self.problem(f"{name} must be one of {', '.join(choices)}, not {_show(value)}")
            return default
        return norm(value)

    def url(self, name: str, *, example: str, secret_free: bool = True) -> str | None:
        """An http(s) URL with a host, trailing slash stripped; no credentials inside."""
        value = self.raw(name)
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError:
            ok = False
            parts = None
        if not ok or parts is None:
            self.problem(
                f"{name} must be an http(s) URL with a host, e.g. {example}, not {_show(value)}"
            )
            return None
        if secret_free and (parts.username is not None or parts.password is not None):
            # Do not echo it: the part before @ is likely a password.
            self.problem(f"{name} must not contain a user name or password")
            return None
        if parts.query or parts.fragment:
            self.problem(f"{name} must not have a ?query or #fragment, not {_show(value)}")
            return None
        return value.rstrip("/")


def _database_url(r: _Reader) -> str:
    name = "DATABASE_URL"
    value = r.raw(name)
    default = "sqlite:///meetbot.db"
    if value is None:
        return default
    shown = _show(_mask_url_password(value))
    if value.startswith("sqlite://"):
        return value
    for prefix in ("postgres://", "postgresql://"):
        if value.startswith(prefix):
            value = "postgresql+psycopg://" + value[len(prefix) :]
            break
    if not value.startswith("postgresql"):
        r.problem(
            f"{name} must start with sqlite:// or postgresql:// (a SQLAlchemy URL), not {shown}"
        )
        return default
    return value


def _allowed_teams(r: _Reader, *, oauth: bool) -> tuple[str, ...]:
    """``MEETBOT_ALLOWED_TEAMS``: comma-separated team (T…) and org (E…) ids."""
    name = "MEETBOT_ALLOWED_TEAMS"
    value = r.raw(name)
    if value is None:
        return ()
    ids = [part.strip() for part in value.split(",") if part.strip()]
    bad = [i for i in ids if not _TEAM_ID_RE.fullmatch(i)]
    if bad or not ids:
        r.problem(
            f"{name} must be Slack team ids (T…) or Enterprise Grid org ids (E…) separated "
            f"by commas, not {_show(', '.join(bad) or value)}",
            name,
        )
        return ()
    if not oauth:
        r.problem(
            f"{name} only applies to multi-workspace OAuth installs (SLACK_CLIENT_ID and "
            "SLACK_CLIENT_SECRET without SLACK_BOT_TOKEN); a bot token serves its own "
            "workspace only",
            name,
        )
        return ()
    return tuple(dict.fromkeys(ids))


def _post_cap(r: _Reader) -> tuple[int, int]:
    """``MEETBOT_SLACK_POST_CAP``: ``<posts>/<duration>``, e.g. ``600/1m`` or ``60/10s``."""
    name = "MEETBOT_SLACK_POST_CAP"
    value = r.raw(name)
    default = (600, 60)
    if value is None:
        return default
    count, _, window = value.partition("/")
    try:
        posts = int(count.strip())
        seconds = parse_duration(window.strip())
    except ValueError:
        posts, seconds = 0, 0
    if not (0 < posts <= 100_000 and 0 < seconds <= 86_400):
        r.problem(
            f"{name} must be posts per duration, like 600/1m or 60/10s, not {_show(value)}",
            name,
        )
        return default
    return posts, seconds


def _fernet_ok(key: str) -> bool:
    from cryptography.fernet import Fernet

    try:
        Fernet(key.encode("utf-8"))
    except (ValueError, TypeError, UnicodeError):
        return False
    return True


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration.

    ``env=None`` means the real process: ``./.env`` is loaded first with
    python-dotenv (never overriding variables already set, so the deployment's
    environment wins), then ``os.environ`` is read. Passing a mapping reads
    only that, which keeps tests hermetic.

    Raises :class:`ConfigError` listing every problem found.
    """
    if env is None:
        from dotenv import load_dotenv

        dotenv_path = Path.cwd() / ".env"
        if dotenv_path.is_file():
            load_dotenv(dotenv_path, override=False)
        env = os.environ
    r = _Reader(env)

    # --- Slack -------------------------------------------------------------
    bot_token = r.raw("SLACK_BOT_TOKEN")
    signing_secret = r.raw("SLACK_SIGNING_SECRET")
    app_token = r.raw("SLACK_APP_TOKEN")
    client_id = r.raw("SLACK_CLIENT_ID")
    client_secret = r.raw("SLACK_CLIENT_SECRET")
    if bool(client_id) != bool(client_secret):
        missing = "SLACK_CLIENT_SECRET" if client_id else "SLACK_CLIENT_ID"
        given = "SLACK_CLIENT_ID" if client_id else "SLACK_CLIENT_SECRET"
        r.problem(f"{missing} is required when {given} is set (multi-workspace OAuth needs both)")
    if bot_token is None:
        if not (client_id and client_secret):
            r.problem(
                "SLACK_BOT_TOKEN is required (xoxb-...), unless SLACK_CLIENT_ID and "
                "SLACK_CLIENT_SECRET are set for multi-workspace OAuth"
            )
    elif not bot_token.startswith("xoxb-"):
        r.problem('SLACK_BOT_TOKEN must be a bot token starting with "xoxb-"')
    if app_token is not None and not app_token.startswith("xapp-"):
        r.problem('SLACK_APP_TOKEN must be an app-level token starting with "xapp-"')
    if signing_secret is None and app_token is None:
        r.problem(
            "SLACK_SIGNING_SECRET is required in HTTP mode "
            "(or set SLACK_APP_TOKEN to use Socket Mode)"
        )
    slack_api_url = r.url("SLACK_API_URL", example="https://slack.com/api/")
    slack_api_url = (slack_api_url + "/") if slack_api_url else "https://slack.com/api/"

    # --- AMS ---------------------------------------------------------------
    ams_url = r.url("AMS_URL", example="https://ams.example.com:5443")
    if r.raw("AMS_URL") is None:
        r.problem("AMS_URL is required (e.g. https://ams.example.com:5443)")
    ams_app = r.raw("AMS_APP") or "Conference"
    if not _APP_RE.fullmatch(ams_app):
        r.problem(f"AMS_APP may contain only letters, digits, _ and -, not {_show(ams_app)}")
    ams_jwt_secret = r.raw("AMS_JWT_SECRET")
    ams_rest_jwt_secret = r.raw("AMS_REST_JWT_SECRET")
    admin_email = r.raw("AMS_ADMIN_EMAIL")
    admin_password = r.raw("AMS_ADMIN_PASSWORD")
    server_jwt_secret = r.raw("AMS_SERVER_JWT_SECRET")
    if admin_email and not admin_password:
        r.problem("AMS_ADMIN_PASSWORD is required when AMS_ADMIN_EMAIL is set")
    if admin_password and not admin_email:
        r.problem("AMS_ADMIN_EMAIL is required when AMS_ADMIN_PASSWORD is set")
    ams_timeout = r.number("AMS_TIMEOUT", 10.0, high=300)
    ams_concurrency = r.integer("MEETBOT_AMS_CONCURRENCY", 8, high=1000)

    # --- secret rotation ---------------------------------------------------
    secret_max_age = r.duration("MEETBOT_SECRET_MAX_AGE", 0, allow_zero=True)
    secret_key = r.raw("MEETBOT_SECRET_KEY")
    if secret_key is not None and not _fernet_ok(secret_key):
        r.problem(
            "MEETBOT_SECRET_KEY must be a Fernet key (32 url-safe base64-encoded bytes; "
            "make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')"
        )
    management = bool(admin_email and admin_password) or bool(server_jwt_secret)
    if client_id and client_secret and bot_token is None and secret_key is None:
        r.problem(
            "MEETBOT_SECRET_KEY is required with SLACK_CLIENT_ID and SLACK_CLIENT_SECRET "
            "(it encrypts each workspace's bot token in the database)"
        )
    if secret_max_age > 0:
        if secret_key is None:
            r.problem(
                "MEETBOT_SECRET_KEY is required when MEETBOT_SECRET_MAX_AGE is above 0 "
                "(it encrypts the stored AMS secrets)"
            )
        if not management:
            r.problem(
                "MEETBOT_SECRET_MAX_AGE above 0 needs AMS management credentials: "
                "AMS_ADMIN_EMAIL and AMS_ADMIN_PASSWORD, or AMS_SERVER_JWT_SECRET"
            )
    rotation_managed = secret_max_age > 0 and secret_key is not None and management
    if ams_jwt_secret is None:
        if not rotation_managed:
            r.problem(
                "AMS_JWT_SECRET is required (the application's jwtStreamSecretKey, "
                "32+ characters) unless secret rotation manages it"
            )
    elif len(ams_jwt_secret) < 32:
        r.problem("AMS_JWT_SECRET must be at least 32 characters")

    # --- lifetimes -----------------------------------------------------------
    room_ttl = r.duration("MEETBOT_ROOM_TTL", 3600, allow_zero=False)
    max_room_ttl = r.duration("MEETBOT_MAX_ROOM_TTL", 86400, allow_zero=False)
    if room_ttl > max_room_ttl and not r.bad & {"MEETBOT_ROOM_TTL", "MEETBOT_MAX_ROOM_TTL"}:
        r.problem(
            f"MEETBOT_ROOM_TTL ({r.raw('MEETBOT_ROOM_TTL') or '60m'}) must not be longer "
            f"than MEETBOT_MAX_ROOM_TTL ({r.raw('MEETBOT_MAX_ROOM_TTL') or '24h'})"
        )
    token_grace = r.duration("MEETBOT_TOKEN_GRACE", 300, allow_zero=True)
    sweep_interval = r.duration("MEETBOT_SWEEP_INTERVAL", 15, allow_zero=False)

    # --- serving -------------------------------------------------------------
    database_url = _database_url(r)
    port = r.integer("PORT", 3000, high=65535)
    public_url = r.url("MEETBOT_PUBLIC_URL", example="https://meetbot.example.com")
    webhook_secret = r.raw("MEETBOT_WEBHOOK_SECRET")
    if webhook_secret is not None and (
        len(webhook_secret) < 16 or not _URLSAFE_RE.fullmatch(webhook_secret)
    ):
        r.problem(
            "MEETBOT_WEBHOOK_SECRET must be at least 16 characters from "
            "A-Z a-z 0-9 - _ . ~ (it goes into a URL path)"
        )
    max_open = r.integer("MEETBOT_MAX_OPEN_ROOMS_PER_USER", 5)
    fanout_workers = r.integer("MEETBOT_FANOUT_WORKERS", 16, high=1000)
    outbox_lease = r.duration("MEETBOT_OUTBOX_LEASE", 30, allow_zero=False)
    reconcile_interval = r.duration("MEETBOT_RECONCILE_INTERVAL", 300, allow_zero=False)
    allow_guests = r.boolean("MEETBOT_ALLOW_GUESTS", False)
    slack_calls = r.boolean("MEETBOT_SLACK_CALLS", False)
    # A Call has one shared join URL: Sign in with Slack (client credentials) at
    # a public callback tells the bot who clicked (bot/web/call_join.py).
    calls_missing = [
        name
        for name, value in [
            ("MEETBOT_PUBLIC_URL", r.raw("MEETBOT_PUBLIC_URL")),
            ("SLACK_CLIENT_ID", client_id),
            ("SLACK_CLIENT_SECRET", client_secret),
        ]
        if not value
    ]
    if slack_calls and calls_missing:
        r.problem(
            f"MEETBOT_SLACK_CALLS=1 needs {' and '.join(calls_missing)} "
            "(people joining a Slack Call sign in with Slack to get their own link)"
        )
    allowed_teams = _allowed_teams(r, oauth=bool(client_id and client_secret and not bot_token))
    slack_post_cap = _post_cap(r)
    log_format = r.choice("MEETBOT_LOG_FORMAT", "text", ("text", "json"), str.lower)
    log_level = r.choice("MEETBOT_LOG_LEVEL", "INFO", _LOG_LEVELS, str.upper)

    if r.problems:
        raise ConfigError(r.problems)
    assert ams_url is not None  # a missing AMS_URL is a problem above
    return Settings(
        slack_bot_token=bot_token,
        slack_signing_secret=signing_secret,
        slack_app_token=app_token,
        slack_api_url=slack_api_url,
        ams_url=ams_url,
        ams_app=ams_app,
        ams_jwt_secret=ams_jwt_secret,
        ams_rest_jwt_secret=ams_rest_jwt_secret,
        ams_admin_email=admin_email,
        ams_admin_password=admin_password,
        ams_server_jwt_secret=server_jwt_secret,
        database_url=database_url,
        port=port,
        room_ttl=room_ttl,
        max_room_ttl=max_room_ttl,
        token_grace=token_grace,
        secret_max_age=secret_max_age,
        sweep_interval=sweep_interval,
        secret_key=secret_key,
        public_url=public_url,
        webhook_secret=webhook_secret,
        max_open_rooms_per_user=max_open,
        allow_guests=allow_guests,
        slack_calls=slack_calls,
        log_format=log_format,
        log_level=log_level,
        slack_client_id=client_id,
        slack_client_secret=client_secret,
        ams_timeout=ams_timeout,
        ams_concurrency=ams_concurrency,
        fanout_workers=fanout_workers,
        outbox_lease=outbox_lease,
        reconcile_interval=reconcile_interval,
        allowed_teams=allowed_teams,
        slack_post_cap=slack_post_cap,
    )


def variable_names() -> frozenset[str]:
    """Every environment variable :func:`load_settings` reads.

    Found by letting it read an empty environment and noting each name it asks
    for, so this cannot drift from the reader: deployment files (and the tests
    that check them) compare against it instead of keeping a copy of the list.
    """
    asked: set[str] = set()

    class Noting(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
            asked.add(key)
            return default

    try:
        load_settings(Noting())
    except ConfigError:
        pass  # an empty environment lacks the required ones: expected
    return frozenset(asked)
