"""``meetbot doctor``: check everything the bot depends on, and say how to fix it.

Why a separate module that returns data: the same checks serve the terminal
checklist, ``--json`` for scripts and CI, and tests, which assert on the
``Check`` objects instead of parsing text. Rendering lives in ``bot/ops/admin.py``.

Rules every check follows:

* Read-only. Nothing here changes AMS, Slack or the database. A SQLite file
  that does not exist is reported, not created; migrations are not run.
* One attempt. No retries (AMS locks the admin user after three failed
  logins), short timeouts, so the whole run takes seconds even when
  everything is down.
* No secret is ever part of a result. Secrets are compared through HMAC-SHA256
  fingerprints under a key drawn for this run and thrown away, so even the
  fingerprints mean nothing afterwards. The one exception is deliberate: the
  webhook URL the operator must paste into AMS (``webhookAuthenticateURL`` and
  ``webhookPlayAuthUrl``) contains ``MEETBOT_WEBHOOK_SECRET``, and is shown in
  that check's fix only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.ams.client import (
    AmsBadRestJwt,
    AmsClient,
    AmsError,
    AmsIpFiltered,
    AmsManagement,
    AmsNotFound,
    AmsRestRefused,
    AmsTimeout,
    AmsUnavailable,
    is_enterprise,
)
from bot.config import ConfigError, Settings, load_settings
from bot.logs import redact

__all__ = [
    "Check",
    "Status",
    "diagnose",
    "failed",
    "find_manifest",
    "manifest_scopes",
    "run_checks",
    "sqlite_missing",
]

#: Seconds to wait for one answer from AMS, Slack or the database.
DEFAULT_TIMEOUT = 5.0

#: Scopes the manifest asks for that only one optional feature needs
#: (scope -> Settings attribute that turns the feature on). Missing one of
#: these is a warning while the feature is off.
OPTIONAL_SCOPES: Mapping[str, str] = {"calls:write": "slack_calls"}


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass
class Check:
    """One line of the checklist. ``fix`` says what to do when it is not OK."""

    id: str
    title: str
    status: Status
    summary: str
    fix: str | None = None
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


def failed(checks: list[Check]) -> bool:
    """Whether any check failed: ``meetbot doctor`` exits 0 only when not."""
    return any(c.status is Status.FAIL for c in checks)


# --------------------------------------------------------------------------- entry points


def diagnose(
    env: Mapping[str, str] | None = None,
    *,
    manifest: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Settings | None, list[Check]]:
    """Load the configuration (``env=None``: the process's, ``.env`` included), then check.

    A configuration that does not load is itself the first failed check; the
    others need it and are skipped rather than guessed at.
    """
    try:
        settings = load_settings(env)
    except ConfigError as e:
        return None, [
            Check(
                "config",
                "Configuration",
                Status.FAIL,
                f"{len(e.problems)} problem(s) in the environment / .env",
                fix="Fix each variable listed, then run `meetbot doctor` again.",
                details=list(e.problems),
            ),
            Check(
                "rest",
                "Everything else",
                Status.SKIP,
                "not checked until the configuration loads",
            ),
        ]
    return settings, run_checks(settings, manifest=manifest, timeout=timeout)


def run_checks(
    settings: Settings,
    *,
    manifest: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Check]:
    """Every check, in the order an operator fixes things. Never raises for a finding."""
    out: list[Check] = [_config_check(settings)]
    if settings.oauth_enabled:
        out.append(_installs_check(settings))
    db_check, current_secrets = _database_checks(settings, timeout)
    out.append(db_check)
    out.extend(_slack_checks(settings, manifest, timeout))
    out.extend(_ams_checks(settings, timeout, current_secrets))
    return out


# --------------------------------------------------------------------------- configuration


def _config_check(settings: Settings) -> Check:
    mode = "HTTP mode (Slack calls /slack/events)" if settings.http_mode else "Socket Mode"
    db = "SQLite" if settings.database_url.startswith("sqlite") else "PostgreSQL"
    details = [
        f"mode: {mode}",
        f"database: {db}" + (" (one process only)" if db == "SQLite" else ""),
        f"AMS: application {settings.ams_app!r} at {settings.ams_url}",
        "secret rotation: "
        + ("on" if settings.rotation_enabled else "off (MEETBOT_SECRET_MAX_AGE=0)"),
    ]
    parts = urlsplit(settings.ams_url)
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return Check(
            "config",
            "Configuration",
            Status.WARN,
            "loaded, but AMS_URL is plain http://",
            fix=(
                "Join links carry each person's token in the URL: serve AMS over https "
                "(port 5443 by default) and set AMS_URL to the https:// address."
            ),
            details=details,
        )
    return Check("config", "Configuration", Status.OK, f"loaded: {mode}, {db}", details=details)


def _installs_check(settings: Settings) -> Check:
    """Multi-workspace OAuth: which workspaces may install the app."""
    title = "Who may install"
    if not settings.allowed_teams:
        return Check(
            "installs",
            title,
            Status.WARN,
            "any Slack workspace can install this app (MEETBOT_ALLOWED_TEAMS is empty)",
            fix=(
                "Anyone who finds /slack/install can add the bot to their workspace and open "
                "rooms on your AMS. Set MEETBOT_ALLOWED_TEAMS to the team ids (T…) and "
                "Enterprise Grid org ids (E…) that may, separated by commas."
            ),
        )
    return Check(
        "installs",
        title,
        Status.OK,
        "only " + ", ".join(settings.allowed_teams) + " (MEETBOT_ALLOWED_TEAMS)",
    )


# --------------------------------------------------------------------------- database


@contextmanager
def _engine(url: str, timeout: float) -> Iterator[Any]:
    from sqlalchemy import create_engine

    from bot.store import normalise_url

    url = normalise_url(url)
    args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        args["connect_timeout"] = max(1, int(timeout))
    engine = create_engine(url, connect_args=args)
    try:
        yield engine
    finally:
        engine.dispose()


def sqlite_missing(url: str) -> str | None:
    """The path of a SQLite database file that does not exist (connecting would create it)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    path = parsed.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return None if Path(path).exists() else path


def _database_checks(settings: Settings, timeout: float) -> tuple[Check, list[tuple[str, str]]]:
    """Reachable and migrated; also returns the rotated stream secrets it could read."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from bot.store import alembic_config

    title = "Database"
    upgrade = "Run `meetbot db upgrade` (`meetbot serve` also upgrades when it starts)."
    missing = sqlite_missing(settings.database_url)
    if missing:
        return Check(
            "database",
            title,
            Status.FAIL,
            f"SQLite file {missing} does not exist",
            fix=upgrade + " Check DATABASE_URL if you expected an existing file.",
        ), []
    try:
        with _engine(settings.database_url, timeout) as engine, engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
            script = ScriptDirectory.from_config(alembic_config(engine))
            heads = set(script.get_heads())
            known = {rev.revision for rev in script.walk_revisions()}
            rotated = _rotated_secrets(conn, settings) if current == heads else []
            deployment = _deployment_id(conn) if current == heads else None
    except Exception as e:
        message = redact(f"{type(e).__name__}: {e}".splitlines()[0], settings.secrets())
        return Check(
            "database",
            title,
            Status.FAIL,
            "cannot connect",
            fix=(
                "Check DATABASE_URL (host, port, database name, user, password) and that "
                "the database server runs and accepts connections from this machine."
            ),
            details=[message[:300]],
        ), []
    head = ", ".join(sorted(heads))
    if current == heads:
        identity = (
            f"deployment {deployment}: the id in the marker of every room it makes on AMS; "
            "reconciliation touches no room without it"
            if deployment
            else "no deployment id yet (`meetbot serve` or `meetbot db upgrade` makes it once)"
        )
        return Check(
            "database",
            title,
            Status.OK,
            f"reachable, schema at {head} (head)"
            + (f", deployment {deployment}" if deployment else ""),
            details=[identity],
        ), rotated
    if not current:
        return Check(
            "database", title, Status.FAIL, "reachable, but has no meetbot tables", fix=upgrade
        ), []
    if current - known:
        return Check(
            "database",
            title,
            Status.FAIL,
            f"schema at {', '.join(sorted(current))}, newer than this meetbot knows ({head})",
            fix="Another, newer meetbot migrated this database: run that version here too.",
        ), []
    return Check(
        "database",
        title,
        Status.FAIL,
        f"schema at {', '.join(sorted(current))}, this meetbot needs {head}",
        fix=upgrade,
    ), []


def _deployment_id(conn: Any) -> str | None:
    """This deployment's identity (``Store.deployment_id``), read only."""
    from sqlalchemy import select

    from bot.store import DEPLOYMENT_KEY, Meta

    return conn.execute(select(Meta.value).where(Meta.key == DEPLOYMENT_KEY)).scalar()


def _rotated_secrets(conn: Any, settings: Settings) -> list[tuple[str, str]]:
    """With MEETBOT_SECRET_KEY set, the stream secrets the bot stored: ``[(state, secret)]``.

    Then the bot signs with the stored ``current`` secret (``bot.ams.stream_secret``),
    encrypted with that key (Fernet). Anything unreadable is left out: the
    stream secret check then falls back to AMS_JWT_SECRET, which is what the
    bot seeds the store with on its first start.
    """
    if not settings.secret_key:
        return []
    from cryptography.fernet import Fernet, InvalidToken
    from sqlalchemy import select

    from bot.store import StreamSecret

    fernet = Fernet(settings.secret_key.encode("utf-8"))
    rows = conn.execute(
        select(StreamSecret.state, StreamSecret.ciphertext)
        .where(StreamSecret.state.in_(("current", "pending")))
        .order_by(StreamSecret.version.desc())
    ).all()
    out: list[tuple[str, str]] = []
    for state, ciphertext in rows:
        try:
            out.append((state, fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")))
        except (InvalidToken, ValueError, UnicodeError):
            continue
    return out


# --------------------------------------------------------------------------- Slack


def manifest_scopes(path: Path) -> list[str]:
    """The bot scopes ``manifest.yml`` asks for (``oauth_config.scopes.bot``)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    scopes = ((data.get("oauth_config") or {}).get("scopes") or {}).get("bot") or []
    return [str(s).strip() for s in scopes if str(s).strip()]


def find_manifest(explicit: Path | None = None) -> Path | None:
    """``--manifest``, else ``./manifest.yml``, else the one beside the source tree."""
    if explicit is not None:
        return explicit
    for candidate in (Path.cwd() / "manifest.yml", Path(__file__).parent.parent / "manifest.yml"):
        if candidate.is_file():
            return candidate
    return None


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value[0] if isinstance(value, list) else str(value)
    return None


def _slack_checks(settings: Settings, manifest: Path | None, timeout: float) -> list[Check]:
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    title = "Slack"
    if not settings.slack_bot_token:
        return [
            Check(
                "slack",
                title,
                Status.WARN,
                "no SLACK_BOT_TOKEN (multi-workspace OAuth): nothing to test here",
                fix="Install the app to a workspace, then check it with that workspace's token.",
            )
        ]
    client = WebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_api_url,
        timeout=max(1, int(timeout)),
        retry_handlers=[],
    )
    try:
        resp = client.auth_test()
    except SlackApiError as e:
        error = e.response.get("error") if isinstance(e.response.data, dict) else None
        status = e.response.status_code
        return [
            Check(
                "slack",
                title,
                Status.FAIL,
                f"auth.test refused the bot token ({error or f'HTTP {status}'})",
                fix=(
                    "SLACK_BOT_TOKEN is wrong, revoked, or the app was uninstalled. Copy the "
                    "Bot User OAuth Token (xoxb-…) from api.slack.com/apps → your app → "
                    "OAuth & Permissions, reinstalling the app if it is gone."
                ),
            ),
            Check("slack_scopes", "Slack scopes", Status.SKIP, "not checked: no valid token"),
        ]
    except Exception as e:  # URLError, timeout, a non-JSON answer from a proxy
        return [
            Check(
                "slack",
                title,
                Status.FAIL,
                f"cannot reach Slack at {settings.slack_api_url} ({type(e).__name__})",
                fix="Let this machine reach slack.com over HTTPS (proxy, firewall, DNS), "
                "or check SLACK_API_URL.",
            ),
            Check("slack_scopes", "Slack scopes", Status.SKIP, "not checked: Slack unreachable"),
        ]
    who = f"@{resp.get('user')} in {resp.get('team')} ({resp.get('team_id')})"
    out = [Check("slack", title, Status.OK, f"auth.test ok: {who}")]
    granted_raw = _header(resp.headers or {}, "x-oauth-scopes")
    out.append(_scope_check(settings, manifest, granted_raw))
    if not settings.http_mode:
        out[0].details.append(
            "Socket Mode: SLACK_APP_TOKEN is verified when `meetbot serve` connects."
        )
    return out


def _scope_check(settings: Settings, manifest: Path | None, granted_raw: str | None) -> Check:
    title = "Slack scopes"
    path = find_manifest(manifest)
    if path is None or not path.is_file():
        return Check(
            "slack_scopes",
            title,
            Status.WARN,
            "manifest.yml not found, so the granted scopes were not compared",
            fix="Run from the directory holding manifest.yml, or pass --manifest PATH.",
        )
    try:
        wanted = manifest_scopes(path)
    except Exception as e:
        return Check(
            "slack_scopes",
            title,
            Status.WARN,
            f"cannot read {path} ({type(e).__name__})",
            fix="Fix the YAML, or pass --manifest PATH to the right file.",
        )
    if granted_raw is None:
        return Check(
            "slack_scopes",
            title,
            Status.WARN,
            "Slack did not report the granted scopes (no x-oauth-scopes header)",
        )
    granted = {s.strip() for s in granted_raw.split(",") if s.strip()}
    missing = [s for s in wanted if s not in granted]
    required = [s for s in missing if not _optional_off(settings, s)]
    optional = [s for s in missing if _optional_off(settings, s)]
    fix = (
        "Add them under api.slack.com/apps → your app → OAuth & Permissions → Bot Token "
        "Scopes (or paste manifest.yml again under App Manifest), then reinstall the app "
        "to the workspace: new scopes take effect only after reinstalling."
    )
    details = [f"manifest: {path}"]
    extra = sorted(granted - set(wanted))
    if extra:
        details.append("granted but not in the manifest: " + ", ".join(extra))
    if required:
        return Check(
            "slack_scopes",
            title,
            Status.FAIL,
            "missing: " + ", ".join(required),
            fix=fix,
            details=details,
        )
    if optional:
        return Check(
            "slack_scopes",
            title,
            Status.WARN,
            "missing optional: "
            + ", ".join(f"{s} (needed when {OPTIONAL_SCOPES[s]} is on)" for s in optional),
            fix=fix,
            details=details,
        )
    return Check(
        "slack_scopes",
        title,
        Status.OK,
        f"all {len(wanted)} scopes of the manifest granted",
        details=details,
    )


def _optional_off(settings: Settings, scope: str) -> bool:
    feature = OPTIONAL_SCOPES.get(scope)
    return feature is not None and not getattr(settings, feature, False)


# --------------------------------------------------------------------------- AMS


def _fingerprint(key: bytes, secret: str) -> bytes:
    return hmac.new(key, secret.encode("utf-8"), hashlib.sha256).digest()


def _ip_fix(app: str) -> str:
    return (
        f"AMS's IP filter for the '{app}' application does not allow this machine. "
        f"Either add the bot's address to the app's remoteAllowedCIDR (AMS panel → "
        f"Applications → {app} → Settings; comma-separated, e.g. 203.0.113.7/32), or turn "
        "the IP filter off (ipFilterEnabled) and protect the REST API with a JWT instead: "
        "turn on jwtControlEnabled and set AMS_REST_JWT_SECRET to the app's jwtSecretKey."
    )


def _jwt_fix(settings: Settings) -> str:
    if settings.ams_rest_jwt_secret:
        return (
            f"AMS_REST_JWT_SECRET does not match the '{settings.ams_app}' app's jwtSecretKey "
            "(AMS panel → Applications → Settings), or this machine's clock is more than a "
            "minute or two off: check NTP."
        )
    return (
        f"The '{settings.ams_app}' app requires a REST JWT (jwtControlEnabled): set "
        "AMS_REST_JWT_SECRET to the app's jwtSecretKey."
    )


def _ams_checks(settings: Settings, timeout: float, rotated: list[tuple[str, str]]) -> list[Check]:
    client = AmsClient(
        settings.ams_url,
        settings.ams_app,
        rest_jwt_secret=settings.ams_rest_jwt_secret,
        timeout=(min(3.05, timeout), timeout),
        retries=0,
    )
    try:
        return _ams_checks_with(client, settings, timeout, rotated)
    finally:
        client.close()


def _rest_refusal(e: AmsError, settings: Settings) -> Check:
    """AMS's two REST filters run in order, the REST JWT filter first, then the IP
    filter; the page of a 403 names the one that refused."""
    if isinstance(e, AmsIpFiltered):
        return Check(
            "ams_rest",
            "AMS REST access",
            Status.FAIL,
            "refused by the IP filter: HTTP 403 Not allowed IP",
            fix=_ip_fix(settings.ams_app)
            + " (The REST JWT filter runs first and let the request through.)",
        )
    if isinstance(e, AmsBadRestJwt):
        return Check(
            "ams_rest",
            "AMS REST access",
            Status.FAIL,
            "refused by the REST JWT filter: HTTP 403 Invalid App JWT Token",
            fix=_jwt_fix(settings)
            + " AMS checks the JWT before the IP filter: once the JWT passes, the IP filter "
            "(remoteAllowedCIDR) may still refuse, and doctor will say so.",
        )
    return Check(
        "ams_rest",
        "AMS REST access",
        Status.FAIL,
        f"refused with HTTP {e.status or 403}, by a filter the answer does not name",
        fix=(
            "AMS checks the REST JWT first (jwtControlEnabled; AMS_REST_JWT_SECRET must be "
            f"the '{settings.ams_app}' app's jwtSecretKey), then the IP filter "
            "(ipFilterEnabled; remoteAllowedCIDR must list this machine). A proxy in front "
            "of AMS may refuse too."
        ),
        details=[str(e)[:300]],
    )


def _ams_checks_with(
    client: AmsClient, settings: Settings, timeout: float, rotated: list[tuple[str, str]]
) -> list[Check]:
    where = f"{settings.ams_url} (application {settings.ams_app!r})"
    version: dict[str, Any] | None = None
    out: list[Check] = []
    try:
        version = client.version()
    except (AmsTimeout, AmsUnavailable) as e:
        return [
            Check(
                "ams",
                "AMS server",
                Status.FAIL,
                f"unreachable at {settings.ams_url}",
                fix=(
                    "Check AMS_URL (scheme, host and port: 5443 for https, 5080 for http), "
                    "DNS and firewalls between this machine and AMS, and that AMS is running."
                ),
                details=[str(e)],
            ),
            Check("ams_rest", "AMS checks", Status.SKIP, "not checked: AMS unreachable"),
        ]
    except AmsRestRefused as e:
        out.append(Check("ams", "AMS server", Status.OK, f"answers at {where}"))
        out.append(
            Check(
                "ams_edition",
                "AMS edition",
                Status.SKIP,
                "unknown: the version call needs REST access",
            )
        )
        out.append(_rest_refusal(e, settings))
    except AmsNotFound:
        return [
            Check(
                "ams",
                "AMS server",
                Status.FAIL,
                f"answers, but has no application {settings.ams_app!r}",
                fix=(
                    "Set AMS_APP to the application that hosts Circle, or create it in the "
                    "AMS panel → Applications (and deploy Circle to it)."
                ),
            )
        ]
    except AmsError as e:
        return [
            Check(
                "ams",
                "AMS server",
                Status.FAIL,
                f"unexpected answer from {settings.ams_url}",
                fix="Check that AMS_URL points at Ant Media Server itself, not a proxy page.",
                details=[str(e)[:300]],
            )
        ]
    if version is not None:
        name = version.get("versionName", "?")
        edition = version.get("versionType", "?")
        out.append(Check("ams", "AMS server", Status.OK, f"AMS {name} answers at {where}"))
        if is_enterprise(version):
            out.append(Check("ams_edition", "AMS edition", Status.OK, str(edition)))
        else:
            out.append(
                Check(
                    "ams_edition",
                    "AMS edition",
                    Status.FAIL,
                    f"{edition}: STREAM TOKENS ARE NOT ENFORCED",
                    fix=(
                        "Community Edition accepts every join link, with or without a valid "
                        "token, so anyone who learns a room id can join; Circle also needs "
                        "Enterprise. Use AMS Enterprise Edition."
                    ),
                )
            )
        try:
            client.list_rooms(0, 1)
            out.append(
                Check(
                    "ams_rest",
                    "AMS REST access",
                    Status.OK,
                    "allowed (IP filter and REST JWT both pass)",
                )
            )
        except AmsRestRefused as e:
            out.append(_rest_refusal(e, settings))
        except AmsError as e:
            out.append(
                Check(
                    "ams_rest",
                    "AMS REST access",
                    Status.FAIL,
                    f"listing rooms failed ({e.kind})",
                    details=[str(e)[:300]],
                )
            )
    out.extend(_management_checks(settings, timeout, rotated))
    return out


def _management_checks(
    settings: Settings, timeout: float, rotated: list[tuple[str, str]]
) -> list[Check]:
    title = "AMS management"
    if not (
        settings.ams_server_jwt_secret or (settings.ams_admin_email and settings.ams_admin_password)
    ):
        return [
            Check(
                "ams_management",
                title,
                Status.WARN,
                "no management credentials: JWT control, the stream secret and the room "
                "settings were not checked",
                fix=(
                    "Set AMS_ADMIN_EMAIL and AMS_ADMIN_PASSWORD (or AMS_SERVER_JWT_SECRET) so "
                    "meetbot can read the application's settings; secret rotation needs "
                    "them too."
                ),
            )
        ]
    mgmt = AmsManagement(
        settings.ams_url,
        email=settings.ams_admin_email,
        password=settings.ams_admin_password,
        server_jwt_secret=settings.ams_server_jwt_secret,
        timeout=(min(3.05, timeout), timeout),
        retries=0,
    )
    try:
        mgmt.login()
        app_settings = mgmt.get_app_settings(settings.ams_app)
    except AmsError as e:
        return [
            Check(
                "ams_management",
                title,
                Status.FAIL,
                f"cannot read the application's settings ({e.kind})",
                fix=(
                    "Check AMS_ADMIN_EMAIL / AMS_ADMIN_PASSWORD (doctor tries once: AMS locks "
                    "the user for 300 s after 3 failed logins) or AMS_SERVER_JWT_SECRET."
                ),
                details=[str(e)[:400]],
            )
        ]
    finally:
        mgmt.close()
    how = "server JWT" if settings.ams_server_jwt_secret else f"login {settings.ams_admin_email}"
    out = [Check("ams_management", title, Status.OK, f"settings readable ({how})")]
    out.append(_jwt_control_check(app_settings, settings))
    out.append(_stream_secret_check(app_settings, settings, rotated))
    out.append(_rest_guard_check(app_settings))
    out.append(_rooms_lock_check(app_settings, settings))
    out.append(_webhook_check(app_settings, settings))
    return out


def _jwt_control_check(a: Mapping[str, Any], settings: Settings) -> Check:
    off = [d for d in ("publish", "play") if not a.get(f"{d}JwtControlEnabled")]
    if not off:
        return Check(
            "ams_jwt_control", "AMS stream tokens", Status.OK, "publish and play require a JWT"
        )
    return Check(
        "ams_jwt_control",
        "AMS stream tokens",
        Status.FAIL,
        "JWT control is OFF for " + " and ".join(off) + ": any link works without its token",
        fix=(
            f"AMS panel → Applications → {settings.ams_app} → Settings: enable JWT for "
            "publish and play (publishJwtControlEnabled, playJwtControlEnabled). AMS allows "
            "one token scheme per direction: turn off one-time tokens and TOTP first."
        ),
    )


def _stream_secret_check(
    a: Mapping[str, Any], settings: Settings, rotated: list[tuple[str, str]]
) -> Check:
    title = "AMS stream secret"
    theirs = a.get("jwtStreamSecretKey") or ""
    if not isinstance(theirs, str) or not theirs:
        return Check(
            "ams_stream_secret",
            title,
            Status.FAIL,
            "AMS has no jwtStreamSecretKey",
            fix=(
                f"Set the {settings.ams_app} app's jwtStreamSecretKey (32+ random characters) "
                "and the same value as AMS_JWT_SECRET."
            ),
        )
    candidates = [(f"stored {state} secret", value) for state, value in rotated]
    if not any(state == "current" for state, _ in rotated) and settings.ams_jwt_secret:
        candidates.append(("AMS_JWT_SECRET", settings.ams_jwt_secret))
    if not candidates:
        return Check(
            "ams_stream_secret",
            title,
            Status.FAIL,
            "meetbot holds no stream secret it can read",
            fix="Set AMS_JWT_SECRET to the app's jwtStreamSecretKey.",
        )
    # Compare keyed fingerprints, never the values: the key lives for this call only.
    key = secrets.token_bytes(32)
    ams_print = _fingerprint(key, theirs)
    match = next(
        (
            label
            for label, value in candidates
            if hmac.compare_digest(_fingerprint(key, value), ams_print)
        ),
        None,
    )
    weak = [] if len(theirs) >= 32 else ["AMS's secret is shorter than 32 characters"]
    if match is None:
        used = candidates[0][0]
        return Check(
            "ams_stream_secret",
            title,
            Status.FAIL,
            f"{used} differs from AMS's jwtStreamSecretKey: AMS refuses every link meetbot sends",
            fix=(
                "Set AMS_JWT_SECRET to the app's jwtStreamSecretKey (or the other way round), "
                "then restart meetbot. (Compared by keyed fingerprints; neither is shown.)"
            ),
            details=weak,
        )
    if match.startswith("stored pending"):
        return Check(
            "ams_stream_secret",
            title,
            Status.WARN,
            "AMS holds the secret of an unfinished rotation",
            fix="Start `meetbot serve`: it settles an interrupted rotation on start.",
            details=weak,
        )
    status = Status.WARN if weak else Status.OK
    return Check(
        "ams_stream_secret",
        title,
        status,
        f"{match} matches AMS's jwtStreamSecretKey (compared by keyed fingerprint)",
        fix="Use a longer jwtStreamSecretKey (32+ characters)." if weak else None,
        details=weak,
    )


def _rest_guard_check(a: Mapping[str, Any]) -> Check:
    if a.get("ipFilterEnabled") or a.get("jwtControlEnabled"):
        guards = [
            name
            for name, on in (
                ("IP filter", a.get("ipFilterEnabled")),
                ("REST JWT", a.get("jwtControlEnabled")),
            )
            if on
        ]
        return Check(
            "ams_rest_guard", "AMS REST protection", Status.OK, " and ".join(guards) + " on"
        )
    return Check(
        "ams_rest_guard",
        "AMS REST protection",
        Status.FAIL,
        "REST API open to anyone who can reach AMS (IP filter and REST JWT both off)",
        fix=(
            "Anyone could list and delete rooms or have AMS mint join tokens "
            "(/broadcasts/{id}/jwt-token). Turn on ipFilterEnabled with the bot's address in "
            "remoteAllowedCIDR, or jwtControlEnabled with AMS_REST_JWT_SECRET."
        ),
    )


def _rooms_lock_check(a: Mapping[str, Any], settings: Settings) -> Check:
    title = "AMS rooms lock"
    if a.get("acceptOnlyRoomsInDataStore"):
        return Check(
            "ams_rooms_lock",
            title,
            Status.OK,
            "acceptOnlyRoomsInDataStore on: only meetbot's rooms",
        )
    return Check(
        "ams_rooms_lock",
        title,
        Status.WARN,
        "acceptOnlyRoomsInDataStore is off: joining an unknown room id creates that room",
        fix=(
            f"AMS panel → Applications → {settings.ams_app} → Settings: turn on "
            "acceptOnlyRoomsInDataStore, so only rooms meetbot created can be joined."
        ),
    )


#: AppSettings fields that must name meetbot's /ams/auth/<secret>, and what each one does.
WEBHOOK_FIELDS = (
    (
        "webhookAuthenticateURL",
        "AMS lets every join and reconnect publish without asking meetbot: a removed person "
        "rejoins with the link they have, and an ended room's links still publish, until "
        "the token expires",
    ),
    (
        "webhookPlayAuthUrl",
        "AMS lets people watch and listen without asking meetbot: a removed person (or one "
        "whose room ended) can still watch with their link until the token expires",
    ),
)


def _webhook_check(a: Mapping[str, Any], settings: Settings) -> Check:
    title = "AMS join webhooks"
    theirs = {name: a.get(name) or "" for name, _ in WEBHOOK_FIELDS}
    if settings.webhook_secret:
        path = f"/ams/auth/{settings.webhook_secret}"
        expected = f"{settings.public_url.rstrip('/')}{path}" if settings.public_url else None

        def points_here(value: Any) -> bool:
            if not isinstance(value, str):
                return False
            want = expected or path
            have = value if expected else value[-len(path) :]
            return hmac.compare_digest(have.encode("utf-8"), want.encode("utf-8"))

        wrong = [name for name, _ in WEBHOOK_FIELDS if not points_here(theirs[name])]
        if not wrong:
            return Check(
                "ams_webhook",
                title,
                Status.OK,
                "webhookAuthenticateURL and webhookPlayAuthUrl point at meetbot: a removed "
                "person and an ended room's links are refused at join, reconnect and play",
            )
        details = [
            f"{name} {'is not set' if not theirs[name] else 'points elsewhere (not shown)'}: "
            f"{meaning}"
            for name, meaning in WEBHOOK_FIELDS
            if name in wrong
        ]
        # The one place MEETBOT_WEBHOOK_SECRET is shown: the operator must paste it into AMS.
        url = expected or f"<this bot's public address>{path}"
        return Check(
            "ams_webhook",
            title,
            Status.WARN,
            " and ".join(wrong) + " not pointing at meetbot",
            fix=(
                f"AMS panel → Applications → {settings.ams_app} → Settings: set "
                f"{' and '.join(wrong)} to:\n{url}"
                + ("" if expected else "\n(set MEETBOT_PUBLIC_URL to see the exact address)")
            ),
            details=details,
        )
    if any(theirs.values()):
        return Check(
            "ams_webhook",
            title,
            Status.WARN,
            "AMS sends joins to a webhook, but MEETBOT_WEBHOOK_SECRET is not set, so meetbot "
            "serves none",
            fix=(
                "If that webhook was meetbot's, set MEETBOT_WEBHOOK_SECRET to match it; "
                "otherwise nothing to do."
            ),
        )
    return Check(
        "ams_webhook",
        title,
        Status.OK,
        "not used: a removed person's link, and an ended room's, work until the token "
        "expires (optional; needs MEETBOT_WEBHOOK_SECRET)",
    )
