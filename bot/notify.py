"""Slack side effects: the only place in ``bot/`` that calls Slack's Web API.

Two clients on purpose. Reads (``users.info``) go through a client with
slack_sdk's connection-error and rate-limit retry handlers: repeating a read
is harmless and the handlers sleep off the ack path. Writes
(``chat.postMessage``/``chat.update``) go through a client with no retry
handlers, because ``chat.postMessage`` has no idempotency key and a resent
POST whose answer was lost is a duplicate DM; the outbox owns their retries.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

log = logging.getLogger("meetbot.notify")

SLACK_TIMEOUT_S = 10
USER_CACHE_TTL_S = 300
# Errors after which sending the same message again can never work.
PERMANENT_ERRORS = frozenset(
    {
        "cannot_dm_bot",
        "user_not_found",
        "user_disabled",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_blocks",
        "msg_too_long",
        "no_text",
        "message_not_found",
        "cant_update_message",
        "edit_window_closed",
        "restricted_action",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "missing_scope",
    }
)


class SlackSendError(Exception):
    """A Slack write that did not happen.

    ``retry_after`` is set for a 429 (seconds Slack asked us to wait);
    ``permanent`` is True when retrying cannot help.
    """

    def __init__(self, error: str, *, permanent: bool, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True)
class UserInfo:
    id: str
    name: str
    display_name: str
    tz: str
    is_bot: bool
    is_admin: bool
    is_restricted: bool
    deleted: bool

    @property
    def is_guest(self) -> bool:
        return self.is_restricted


class UnknownUser(Exception):
    pass


class SlackGateway:
    """Every Slack Web API call meetbot makes, with typed failures."""

    def __init__(self, token: str | None, api_url: str, *, timeout: int = SLACK_TIMEOUT_S) -> None:
        self.reader = WebClient(
            token=token,
            base_url=api_url,
            timeout=timeout,
            retry_handlers=[
                ConnectionErrorRetryHandler(max_retry_count=2),
                RateLimitErrorRetryHandler(max_retry_count=2),
            ],
        )
        self.writer = WebClient(token=token, base_url=api_url, timeout=timeout, retry_handlers=[])
        self._http = requests.Session()
        self._timeout = timeout
        self._users: dict[str, tuple[float, UserInfo]] = {}
        self._lock = threading.Lock()

    # -- reads ----------------------------------------------------------
    def user_info(self, user_id: str) -> UserInfo:
        """users.info, cached for a few minutes (Tier 4, and asked per invitee)."""
        with self._lock:
            hit = self._users.get(user_id)
        if hit and time.monotonic() - hit[0] < USER_CACHE_TTL_S:
            return hit[1]
        try:
            data = self.reader.users_info(user=user_id)["user"]
        except SlackApiError as e:
            if e.response.get("error") in ("user_not_found", "users_not_found"):
                raise UnknownUser(user_id) from e
            raise
        profile = data.get("profile") or {}
        info = UserInfo(
            id=data["id"],
            name=data.get("name") or data["id"],
            display_name=profile.get("display_name")
            or profile.get("real_name")
            or data.get("real_name")
            or data.get("name")
            or "",
            tz=data.get("tz") or "UTC",
            is_bot=bool(data.get("is_bot")) or data["id"] == "USLACKBOT",
            is_admin=bool(data.get("is_admin") or data.get("is_owner")),
            is_restricted=bool(data.get("is_restricted") or data.get("is_ultra_restricted")),
            deleted=bool(data.get("deleted")),
        )
        with self._lock:
            self._users[user_id] = (time.monotonic(), info)
        return info

    def find_posted(self, channel: str, outbox_id: int) -> tuple[str, str] | None:
        """The message an earlier attempt of outbox row ``outbox_id`` posted, if any.

        A process killed after Slack accepted a DM but before the database
        recorded it would otherwise send the DM twice. Each post carries the
        row id in its message metadata, so the retry looks in the recent
        history of the DM first. Raises SlackSendError when Slack cannot say.
        """
        try:
            if channel[:1] in ("U", "W"):
                channel = self.reader.conversations_open(users=channel)["channel"]["id"]
            history = self.reader.conversations_history(
                channel=channel, limit=50, include_all_metadata=True
            )
        except SlackApiError as e:
            error = e.response.get("error") if isinstance(e.response.data, dict) else None
            if error in ("missing_scope", "not_allowed_token_type"):
                log.warning("cannot check for an earlier DM (%s): sending anyway", error)
                return None
            raise SlackSendError(error or "history_failed", permanent=False) from e
        except (OSError, ValueError) as e:
            raise SlackSendError(type(e).__name__, permanent=False) from e
        for message in history.get("messages") or []:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            if payload.get("outbox_id") == outbox_id:
                return channel, message["ts"]
        return None

    # -- writes ---------------------------------------------------------
    def post(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """chat.postMessage with unfurling off; returns (channel, ts)."""
        resp = self._call(
            self.writer.chat_postMessage,
            channel=channel,
            text=text,
            blocks=blocks,
            unfurl_links=False,
            unfurl_media=False,
            metadata=metadata,
        )
        return resp["channel"], resp["ts"]

    def update(
        self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None
    ) -> tuple[str, str]:
        resp = self._call(
            self.writer.chat_update, channel=channel, ts=ts, text=text, blocks=blocks or []
        )
        return resp["channel"], resp["ts"]

    def respond(
        self,
        response_url: str,
        text: str,
        *,
        blocks: list[dict[str, Any]] | None = None,
        in_channel: bool = False,
        replace_original: bool = False,
    ) -> bool:
        """Reply through a command's or action's ``response_url``.

        Works in private channels and DMs the bot is not in. Failures are
        logged, not raised: the reply is a courtesy, the state change stands.
        """
        body: dict[str, Any] = {
            "text": text,
            "response_type": "in_channel" if in_channel else "ephemeral",
            "replace_original": replace_original,
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if blocks:
            body["blocks"] = blocks
        try:
            r = self._http.post(response_url, json=body, timeout=(3.05, self._timeout))
            if r.status_code >= 400:
                log.warning("response_url answered %s", r.status_code)
                return False
            return True
        except requests.RequestException as e:
            log.warning("response_url failed: %s", type(e).__name__)
            return False

    @staticmethod
    def _call(method: Any, **kwargs: Any) -> Any:
        try:
            return method(**{k: v for k, v in kwargs.items() if v is not None})
        except SlackApiError as e:
            status = e.response.status_code
            if status == 429:
                retry_after = int(e.response.headers.get("Retry-After", "1") or 1)
                raise SlackSendError("ratelimited", permanent=False, retry_after=retry_after) from e
            error = e.response.get("error") if isinstance(e.response.data, dict) else None
            if status >= 500 or not error:
                raise SlackSendError(f"http_{status}", permanent=False) from e
            raise SlackSendError(error, permanent=error in PERMANENT_ERRORS) from e
        except (OSError, ValueError) as e:
            # URLError, timeouts, resets, and a non-JSON body from Slack's edge.
            raise SlackSendError(type(e).__name__, permanent=False) from e
