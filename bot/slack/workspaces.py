"""Which bot token speaks for which workspace.

Single-workspace mode has one ``SLACK_BOT_TOKEN``. Multi-workspace mode
(``SLACK_CLIENT_ID`` + ``SLACK_CLIENT_SECRET``) keeps each installation in the
bot's own database through slack_sdk's SQLAlchemy installation store, looks up
the token of the workspace (or Enterprise Grid organisation) a piece of work
belongs to, and refreshes rotating tokens before they expire, because the
outbox and the scheduler call Slack outside any incoming request (where Bolt
would otherwise do the refresh).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from html import escape
from typing import Any

from slack_bolt.error import BoltError
from slack_bolt.oauth.callback_options import FailureArgs
from slack_bolt.oauth.oauth_flow import OAuthFlow
from slack_bolt.request import BoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk import WebClient
from slack_sdk.oauth.installation_store import Bot, Installation
from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore
from slack_sdk.oauth.token_rotation import TokenRotator
from sqlalchemy.engine import Engine

from bot.config import Settings

log = logging.getLogger("meetbot.workspaces")

#: The bot scopes an OAuth install asks for; tests keep this equal to manifest.yml.
BOT_SCOPES = (
    "commands",
    "chat:write",
    "im:write",
    "im:history",
    "users:read",
    "channels:read",
    "groups:read",
    "im:read",
    "mpim:read",
    "calls:write",
)
STATE_EXPIRATION_S = 600
ROTATE_BEFORE_MIN = 120


_TOKEN_FIELDS = ("bot_token", "bot_refresh_token", "user_token", "user_refresh_token")
_ENC = "enc:"


Allowed = Callable[[str | None, str | None], bool]


class WorkspaceNotAllowed(BoltError):
    """An install into a workspace that ``MEETBOT_ALLOWED_TEAMS`` does not list.

    A BoltError, so that Bolt's OAuth flow hands it to the failure page.
    """

    def __init__(self, team_id: str | None, enterprise_id: str | None) -> None:
        super().__init__(f"workspace {team_id!r} (org {enterprise_id!r}) may not install")
        self.team_id = team_id
        self.enterprise_id = enterprise_id


class EncryptedInstallationStore(SQLAlchemyInstallationStore):
    """slack_sdk's SQLAlchemy installation store, with the tokens Fernet-encrypted.

    Bot tokens are secrets like any other: they must not sit in the database in
    clear. Values are encrypted on the way in (once: already-encrypted values
    are left alone, as ``save`` also calls ``save_bot``) and decrypted on the
    way out.

    It also keeps ``MEETBOT_ALLOWED_TEAMS``: a workspace not on the list is
    never saved, and one saved before the list changed is never found, so
    Bolt serves none of its requests and no token of it is used.
    """

    def __init__(
        self, *args: Any, vault: Any, allowed: Allowed | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._vault = vault
        self._allowed = allowed or (lambda team_id, enterprise_id: True)

    def _sealed(self, obj: Any) -> Any:
        out = copy.copy(obj)
        for name in _TOKEN_FIELDS:
            value = getattr(out, name, None)
            if isinstance(value, str) and value and not value.startswith(_ENC):
                setattr(out, name, _ENC + self._vault.encrypt(value))
        return out

    def _opened(self, obj: Any) -> Any:
        if obj is None:
            return None
        for name in _TOKEN_FIELDS:
            value = getattr(obj, name, None)
            if isinstance(value, str) and value.startswith(_ENC):
                setattr(obj, name, self._vault.decrypt(value[len(_ENC) :]))
        return obj

    def _check(self, obj: Any) -> None:
        if not self._allowed(obj.team_id, obj.enterprise_id):
            raise WorkspaceNotAllowed(obj.team_id, obj.enterprise_id)

    def save(self, installation: Any) -> None:
        self._check(installation)
        super().save(self._sealed(installation))

    def save_bot(self, bot: Any) -> None:
        self._check(bot)
        super().save_bot(self._sealed(bot))

    def find_bot(self, **kwargs: Any) -> Bot | None:
        if not self._allowed(kwargs.get("team_id"), kwargs.get("enterprise_id")):
            return None
        return self._opened(super().find_bot(**kwargs))

    def find_installation(self, **kwargs: Any) -> Any:
        if not self._allowed(kwargs.get("team_id"), kwargs.get("enterprise_id")):
            return None
        return self._opened(super().find_installation(**kwargs))


_REFUSED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex,nofollow">
<title>Not available for this workspace &#183; meetbot</title></head>
<body><main>
<h1>meetbot is not available for this workspace</h1>
<p>Whoever runs this meetbot lets only some Slack workspaces install it, and
<strong>{workspace}</strong> is not one of them. Nothing was installed.</p>
<p>If it should be, ask them to add <code>{ids}</code> to
<code>MEETBOT_ALLOWED_TEAMS</code>, then install again.</p>
</main></body></html>
"""


class GuardedOAuthFlow(OAuthFlow):
    """Bolt's install flow, refusing workspaces ``MEETBOT_ALLOWED_TEAMS`` does not list.

    Slack says which workspace is installing only when the code is exchanged,
    so the check comes after: the token Slack just issued is revoked (the app
    leaves nothing behind there), nothing is stored, and the installer gets a
    page that says why and what their operator can do.
    """

    def __init__(self, *, allowed: Allowed, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._allowed = allowed
        default_failure = self.failure_handler

        def failure(args: FailureArgs) -> BoltResponse:
            if isinstance(args.error, WorkspaceNotAllowed):
                return _refused(args.error)
            return default_failure(args)

        self.failure_handler = failure

    def store_installation(self, request: BoltRequest, installation: Installation) -> None:
        team, org = installation.team_id, installation.enterprise_id
        if not self._allowed(team, org):
            log.warning(
                "refused an install into workspace %r (Enterprise Grid org %r): "
                "not in MEETBOT_ALLOWED_TEAMS",
                team,
                org,
            )
            token = installation.bot_token or installation.user_token
            if token:
                try:
                    self.client.auth_revoke(token=token)
                except Exception as e:  # it was refused all the same: nothing is stored
                    log.warning("could not revoke the refused install's token: %s", e)
            raise WorkspaceNotAllowed(team, org)
        super().store_installation(request, installation)


def _refused(e: WorkspaceNotAllowed) -> BoltResponse:
    ids = " or ".join(i for i in (e.team_id, e.enterprise_id) if i) or "its id"
    body = _REFUSED_PAGE.format(
        workspace=escape(e.team_id or e.enterprise_id or "?"), ids=escape(ids)
    )
    return BoltResponse(
        status=403,
        body=body,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        },
    )


class Workspaces:
    """Bot tokens by workspace, from the environment or from installations."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.oauth = settings.oauth_enabled
        self.installation_store: SQLAlchemyInstallationStore | None = None
        self.state_store: SQLAlchemyOAuthStateStore | None = None
        self._rotator: TokenRotator | None = None
        self._lock = threading.Lock()
        if self.oauth:
            assert settings.slack_client_id and settings.slack_client_secret
            # slack_sdk's stores read then write in one transaction: on SQLite
            # that must start IMMEDIATE, or a concurrent writer makes it fail
            # at once with "database is locked" (see bot/store.py).
            engine = engine.execution_options(meetbot_write=True)
            from bot.vault import Vault

            assert settings.secret_key  # config requires it with OAuth
            self.installation_store = EncryptedInstallationStore(
                client_id=settings.slack_client_id,
                engine=engine,
                logger=log,
                vault=Vault(settings.secret_key),
                allowed=self.allowed,
            )
            self.state_store = SQLAlchemyOAuthStateStore(
                expiration_seconds=STATE_EXPIRATION_S, engine=engine, logger=log
            )
            self._rotator = TokenRotator(
                client_id=settings.slack_client_id,
                client_secret=settings.slack_client_secret,
                client=WebClient(base_url=settings.slack_api_url, timeout=10),
            )

    def allowed(self, team_id: str | None, enterprise_id: str | None) -> bool:
        """Whether ``MEETBOT_ALLOWED_TEAMS`` lets this workspace (or its org) in.

        Empty means any. An org-wide install has no team id: its org must be listed.
        """
        teams = self.settings.allowed_teams
        return not teams or bool({team_id, enterprise_id} & set(teams))

    def token_for(self, team_id: str | None, enterprise_id: str | None = None) -> str | None:
        """The bot token of a workspace; None when the app is not installed there."""
        if not self.oauth:
            return self.settings.slack_bot_token
        bot = self._find_bot(team_id, enterprise_id)
        if bot is None:
            return None
        return self._fresh(bot).bot_token

    def _find_bot(self, team_id: str | None, enterprise_id: str | None) -> Bot | None:
        assert self.installation_store is not None
        bot = self.installation_store.find_bot(
            enterprise_id=enterprise_id, team_id=team_id, is_enterprise_install=False
        )
        if bot is None and enterprise_id:
            # An org-wide install on Enterprise Grid serves every workspace of the org.
            bot = self.installation_store.find_bot(
                enterprise_id=enterprise_id, team_id=None, is_enterprise_install=True
            )
        return bot

    def _fresh(self, bot: Bot) -> Bot:
        if self._rotator is None or not bot.bot_refresh_token:
            return bot
        with self._lock:
            try:
                rotated = self._rotator.perform_bot_token_rotation(
                    bot=bot, minutes_before_expiration=ROTATE_BEFORE_MIN
                )
            except Exception as e:  # an old token may still work for a while
                log.warning("bot token refresh failed for %s: %s", bot.team_id, type(e).__name__)
                return bot
            if rotated is not None:
                assert self.installation_store is not None
                self.installation_store.save_bot(rotated)
                return rotated
        return bot

    def forget(self, team_id: str | None, enterprise_id: str | None) -> None:
        """The app was uninstalled or its tokens revoked: drop what we kept."""
        if self.installation_store is not None:
            self.installation_store.delete_all(enterprise_id=enterprise_id, team_id=team_id)

    def oauth_kwargs(self) -> dict[str, Any]:
        """What Bolt's OAuthSettings needs from here."""
        return {
            "installation_store": self.installation_store,
            "state_store": self.state_store,
        }
