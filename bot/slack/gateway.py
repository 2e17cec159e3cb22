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
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
#: How long a channel's member list is reused. Short: someone who left the
#: channel keeps getting links for at most this long. A person not on the list
#: is asked about again once it is REFRESH_MISS_S old, so someone who just
#: joined is not refused for long.
CHANNEL_MEMBERS_TTL_S = 30.0
REFRESH_MISS_S = 5.0
MEMBERS_PAGE = 500  # conversations.members per page (Slack's default is 100)
MAX_MEMBER_PAGES = 100  # 50,000 members; beyond that the list is not trusted
#: conversations.members errors that mean "Slack will not tell this bot", not "try later".
UNREADABLE_ERRORS = frozenset(
    {
        "channel_not_found",
        "missing_scope",
        "method_not_supported_for_channel_type",
        "not_in_channel",
        "not_allowed_token_type",
        "too_many_members",
    }
)
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
    """A Slack write that did not happen, as far as the bot can tell.

    ``retry_after`` is set for a 429 (seconds Slack asked us to wait);
    ``permanent`` is True when retrying cannot help. ``unknown`` is True when
    Slack gave no definite answer (a timeout, a dropped connection, a 5xx from
    its edge): the write may have happened after all. A 429 or an ``ok: false``
    answer is definite: nothing was written.
    """

    def __init__(
        self,
        error: str,
        *,
        permanent: bool,
        retry_after: int | None = None,
        unknown: bool = False,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.permanent = permanent
        self.retry_after = retry_after
        self.unknown = unknown


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
    #: The person's own workspace, and their Enterprise Grid org (None outside Grid).
    team_id: str | None = None
    enterprise_id: str | None = None

    @property
    def is_guest(self) -> bool:
        return self.is_restricted


class UnknownUser(Exception):
    pass


class ChannelUnreadable(Exception):
    """Slack will not list a conversation's members to the bot: a DM or private
    channel it is not in, or a missing ``*:read`` scope. ``error`` is Slack's."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


#: The workspace (team id, enterprise id) the current work is for. Set with
#: ``acting_for``; the gateway picks that workspace's bot token from it.
CURRENT_TEAM: ContextVar[tuple[str | None, str | None] | None] = ContextVar(
    "meetbot_team", default=None
)


@contextmanager
def acting_for(team_id: str | None, enterprise_id: str | None = None) -> Iterator[None]:
    """Make Slack calls in this block with ``team_id``'s bot token."""
    reset = CURRENT_TEAM.set((team_id, enterprise_id))
    try:
        yield
    finally:
        CURRENT_TEAM.reset(reset)


class SlackGateway:
    """Every Slack Web API call meetbot makes, with typed failures.

    ``token_for(team_id, enterprise_id)`` (multi-workspace installs) picks the
    bot token of the workspace named by ``acting_for``; without it every call
    uses the single ``token``.
    """

    def __init__(
        self,
        token: str | None,
        api_url: str,
        *,
        timeout: int = SLACK_TIMEOUT_S,
        token_for: Callable[[str | None, str | None], str | None] | None = None,
    ) -> None:
        self._api_url = api_url
        self._timeout = timeout
        self._token_for = token_for
        self._default = self._clients_for(token)
        self._by_token: dict[str, tuple[WebClient, WebClient]] = {}
        # Replies to response_urls. requests would read the proxy and CA settings from
        # the environment again for every reply (walking it several times, 40% of a
        # reply's CPU in the burst's profile); they are read once per host instead.
        self._http = requests.Session()
        self._http.trust_env = False
        self._http.verify = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        self._proxies: dict[str, dict[str, str]] = {}
        self._users: dict[str, tuple[float, UserInfo]] = {}
        self._asking: dict[str, Future[UserInfo]] = {}
        self._members: dict[tuple[Any, str], tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def _clients_for(self, token: str | None) -> tuple[WebClient, WebClient]:
        reader = WebClient(
            token=token,
            base_url=self._api_url,
            timeout=self._timeout,
            retry_handlers=[
                ConnectionErrorRetryHandler(max_retry_count=2),
                RateLimitErrorRetryHandler(max_retry_count=2),
            ],
        )
        writer = WebClient(
            token=token, base_url=self._api_url, timeout=self._timeout, retry_handlers=[]
        )
        return reader, writer

    def _clients(self) -> tuple[WebClient, WebClient]:
        if self._token_for is None:
            return self._default
        team = CURRENT_TEAM.get()
        token = self._token_for(*team) if team else None
        if not token:
            raise SlackSendError("not_installed", permanent=True)
        with self._lock:
            pair = self._by_token.get(token)
            if pair is None:
                pair = self._by_token[token] = self._clients_for(token)
            return pair

    @property
    def reader(self) -> WebClient:
        """Client for reads: retried on connection errors and 429s (safe to repeat)."""
        return self._clients()[0]

    @property
    def writer(self) -> WebClient:
        """Client for writes: never retried by slack_sdk (the outbox owns retries)."""
        return self._clients()[1]

    # -- reads ----------------------------------------------------------
    def user_info(self, user_id: str) -> UserInfo:
        """users.info, cached for a few minutes (Tier 4, and asked per invitee)."""
        return self.ask_user(user_id).result()

    def ask_user(self, user_id: str, executor: Executor | None = None) -> Future[UserInfo]:
        """users.info as a future: from the cache, the request already asking, or a new
        one (on ``executor``, or here and now when None).

        One request per person at a time: when a team opens several rooms at
        once (ten ``/meet`` for the same standup), the first asks Slack about
        each person and the others share that answer, or its error, instead of
        asking again. Waiting on the future, not in ``executor``, keeps a lookup
        pool's threads for people nobody is asking about yet.
        """
        with self._lock:
            hit = self._users.get(user_id)
            if hit and time.monotonic() - hit[0] < USER_CACHE_TTL_S:
                done: Future[UserInfo] = Future()
                done.set_result(hit[1])
                return done
            asking = self._asking.get(user_id)
            if asking is not None:
                return asking
            mine = self._asking[user_id] = Future()

        def ask() -> None:
            try:
                mine.set_result(self._ask_user(user_id))
            except BaseException as e:  # every waiter gets it, then it goes on up
                mine.set_exception(e)
                if not isinstance(e, Exception):
                    raise
            finally:
                with self._lock:
                    del self._asking[user_id]

        if executor is None:
            ask()
        else:
            executor.submit(ask)
        return mine

    def _ask_user(self, user_id: str) -> UserInfo:
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
            team_id=data.get("team_id") if isinstance(data.get("team_id"), str) else None,
            enterprise_id=_enterprise_of(data),
        )
        with self._lock:
            self._users[user_id] = (time.monotonic(), info)
        return info

    def is_member(self, channel_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is in the conversation ``channel_id`` (``conversations.members``).

        The list is cached per workspace for ``CHANNEL_MEMBERS_TTL_S``; a person
        missing from a list older than ``REFRESH_MISS_S`` is looked up afresh.
        Raises ChannelUnreadable when Slack will not say, SlackSendError when it
        could not answer now.
        """
        key = (CURRENT_TEAM.get(), channel_id)
        with self._lock:
            hit = self._members.get(key)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age < CHANNEL_MEMBERS_TTL_S and (user_id in hit[1] or age < REFRESH_MISS_S):
                return user_id in hit[1]
        members = self._channel_members(channel_id)
        with self._lock:
            self._members[key] = (time.monotonic(), members)
        return user_id in members

    def _channel_members(self, channel_id: str) -> frozenset[str]:
        """Every page of conversations.members (Tier 4), on the retrying reader."""
        members: set[str] = set()
        cursor: str | None = None
        for _ in range(MAX_MEMBER_PAGES):
            try:
                resp = self._call(
                    self.reader.conversations_members,
                    channel=channel_id,
                    limit=MEMBERS_PAGE,
                    cursor=cursor,
                )
            except SlackSendError as e:
                if e.error in UNREADABLE_ERRORS:
                    raise ChannelUnreadable(e.error) from None
                raise
            members.update(m for m in resp.get("members") or [] if isinstance(m, str))
            cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return frozenset(members)
        log.warning("conversations.members: %s has more members than I read", channel_id)
        raise ChannelUnreadable("too_many_members")

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
            r = self._http.post(
                response_url,
                json=body,
                timeout=(3.05, self._timeout),
                proxies=self._proxies_for(response_url),
            )
            if r.status_code >= 400:
                log.warning("response_url answered %s", r.status_code)
                return False
            return True
        except requests.RequestException as e:
            log.warning("response_url failed: %s", type(e).__name__)
            return False

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The environment's proxies for ``url``'s host (``HTTPS_PROXY``, ``NO_PROXY``...),
        read the first time a reply goes there: Slack's response_urls share one host."""
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.netloc}"
        found = self._proxies.get(host)
        if found is None:
            found = self._proxies[host] = requests.utils.get_environ_proxies(host + "/")
        return found

    def post_ephemeral(self, channel: str, user_id: str, text: str) -> bool:
        """chat.postEphemeral: a reply only ``user_id`` sees, for when there is no response_url.

        Like ``respond``, a courtesy: failures (the bot is not in the channel,
        the person left it) are logged, not raised.
        """
        try:
            self._call(self.writer.chat_postEphemeral, channel=channel, user=user_id, text=text)
            return True
        except SlackSendError as e:
            log.warning("chat.postEphemeral failed: %s", e.error)
            return False

    def publish_home(self, user_id: str, view: dict[str, Any]) -> None:
        """views.publish of a Home tab; raises SlackSendError.

        On the retrying client: publishing the same view twice is harmless.
        """
        self._call(self.reader.views_publish, user_id=user_id, view=view)

    # -- Calls API (bot/slack/calls.py), Sign in with Slack (bot/web/call_join.py) --
    def call_add(
        self,
        *,
        external_unique_id: str,
        join_url: str,
        created_by: str,
        title: str,
        date_start: int,
    ) -> str:
        """calls.add (Tier 2); returns the Call's id. On the writer: never resent blindly."""
        resp = self._call(
            self.writer.calls_add,
            external_unique_id=external_unique_id,
            join_url=join_url,
            created_by=created_by,
            title=title,
            date_start=date_start,
        )
        return str(resp["call"]["id"])

    def call_end(self, call_id: str, duration: int | None = None) -> None:
        """calls.end; raises SlackSendError."""
        self._call(self.writer.calls_end, id=call_id, duration=duration)

    def call_participants(self, call_id: str, user_ids: list[str], *, joined: bool) -> None:
        """calls.participants.add (``joined``) or .remove for Slack users; raises SlackSendError."""
        writer = self.writer
        method = writer.calls_participants_add if joined else writer.calls_participants_remove
        self._call(method, id=call_id, users=[{"slack_id": u} for u in user_ids])

    def openid_token(
        self, *, client_id: str, client_secret: str, code: str, redirect_uri: str
    ) -> dict[str, Any]:
        """openid.connect.token: a Sign in with Slack code for its ``id_token``.

        Authenticated by the app's client credentials, not a bot token, so it
        works the same in single- and multi-workspace mode. Never retried: the
        code is single-use.
        """
        client = WebClient(base_url=self._api_url, timeout=self._timeout, retry_handlers=[])
        resp = self._call(
            client.openid_connect_token,
            client_id=client_id,
            client_secret=client_secret,
            code=code,
            redirect_uri=redirect_uri,
        )
        return dict(resp.data) if isinstance(resp.data, dict) else {}

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
                raise SlackSendError(f"http_{status}", permanent=False, unknown=True) from e
            raise SlackSendError(error, permanent=error in PERMANENT_ERRORS) from e
        except (OSError, ValueError) as e:
            # URLError, timeouts, resets, and a non-JSON body from Slack's edge.
            raise SlackSendError(type(e).__name__, permanent=False, unknown=True) from e


def _enterprise_of(user: dict[str, Any]) -> str | None:
    """The Enterprise Grid org of a ``users.info`` user, or None outside Grid."""
    grid = user.get("enterprise_user")
    org = grid.get("enterprise_id") if isinstance(grid, dict) else None
    return org if isinstance(org, str) and org else None
