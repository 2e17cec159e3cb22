"""Ant Media Server (AMS) client: app REST (rooms) and management API (settings).

Why it looks like this (see ``shared/docs/ams.md``):

* One ``requests.Session`` per client and an explicit ``(connect, read)`` timeout
  on every call: a Slack handler must never wait forever on AMS.
* Every failure is a typed :class:`AmsError` with two texts: ``user_message`` is
  short and safe to show in Slack, ``str(e)`` tells the operator what to fix.
* Idempotent calls (GET, DELETE, stop) are retried with exponential backoff on
  timeouts, dropped connections and 5xx. 4xx never is: it will not get better.
* ``create_room`` is *not* blindly retried. After an ambiguous failure (the POST
  may have reached AMS) it asks AMS with a GET whether the room exists and is ours.
* The management login is tried at most once per session and never in a loop:
  AMS locks the user for 300 s after 3 failed logins.
* Logs carry method, path, status and duration only: never tokens, the
  ``Authorization`` header, passwords or the settings body (it holds secrets).
"""

from __future__ import annotations

import html
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

import jwt
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_PAGE_SIZE",
    "AmsBadRestJwt",
    "AmsClient",
    "AmsError",
    "AmsIdTaken",
    "AmsInvalidId",
    "AmsIpFiltered",
    "AmsLoginFailed",
    "AmsManagement",
    "AmsNotFound",
    "AmsProtocolError",
    "AmsRejected",
    "AmsRestRefused",
    "AmsTimeout",
    "AmsUnavailable",
    "Observer",
    "is_enterprise",
]

log = logging.getLogger("meetbot.ams")

#: ``(connect, read)`` seconds. 3.05: just over a multiple of TCP's 3 s SYN retry.
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
#: AMS caps ``/broadcasts/list/{offset}/{size}`` at 250.
MAX_PAGE_SIZE = 250
#: Lifetime of the REST and server JWTs we mint per call: short, since they are
#: bearer credentials, yet long enough to survive a few seconds of clock skew.
CALL_JWT_LIFETIME = 120

_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

#: ``observer(op, outcome, seconds)``; outcome is ``"ok"`` or an error ``kind``.
Observer = Callable[[str, str, float], None]


# --------------------------------------------------------------------------- errors


class AmsError(Exception):
    """Base of every AMS failure. ``str(e)`` is for operators, ``user_message`` for Slack."""

    kind = "error"
    default_user_message = "Something went wrong on the video server. Try again in a minute."
    #: Whether the same call may succeed if tried again later.
    retryable = False

    def __init__(
        self, message: str, *, user_message: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.user_message = user_message or self.default_user_message
        self.status = status
        # True when the request may have reached AMS (so a POST may have taken effect).
        self.maybe_sent = True


class AmsNotFound(AmsError):
    """The room (or app) does not exist on AMS."""

    kind = "not_found"
    default_user_message = "That room does not exist on the video server any more."


class AmsIdTaken(AmsError):
    """``POST /broadcasts/create`` with an id that is already used."""

    kind = "id_taken"
    default_user_message = "The video server already has a room with that id. Please try again."


class AmsInvalidId(AmsError):
    """A room id with characters outside ``A-Za-z0-9-_.``."""

    kind = "invalid_id"
    default_user_message = "The video server refused the room id. Please try again."


class AmsRestRefused(AmsError):
    """401/403 from the app's REST filters, when the page does not say which one refused.

    AMS runs two filters on ``/rest/*``, the REST JWT filter first and the IP
    filter second (StreamApp's ``web.xml``); each refuses with Tomcat's HTML
    error page. The subclasses name the filter the page names.
    """

    kind = "rest_refused"
    default_user_message = (
        "The video server refuses to talk to this bot. An admin needs to fix its setup."
    )


class AmsIpFiltered(AmsRestRefused):
    """403 ``Not allowed IP``: the app's IP filter does not list the bot's address.

    The IP filter runs second, so the REST JWT (if the app wants one) passed.
    """

    kind = "ip_filtered"


class AmsBadRestJwt(AmsRestRefused):
    """403 ``Invalid App JWT Token``: REST JWT missing, wrongly signed or expired.

    The JWT filter runs first: the IP filter has not looked at the request yet.
    """

    kind = "bad_rest_jwt"


class AmsTimeout(AmsError):
    """AMS did not answer within the timeout."""

    kind = "timeout"
    retryable = True
    default_user_message = "The video server is not answering right now. Try again in a minute."


class AmsUnavailable(AmsError):
    """5xx, connection refused or reset."""

    kind = "unavailable"
    retryable = True
    default_user_message = "The video server is unavailable right now. Try again in a minute."


class AmsLoginFailed(AmsError):
    """The management login (or server JWT) was refused. Never retried automatically."""

    kind = "login_failed"
    default_user_message = (
        "The bot cannot sign in to the video server's admin API. An admin needs to check it."
    )


class AmsRejected(AmsError):
    """A settings update answered ``success: false``."""

    kind = "rejected"
    default_user_message = "The video server refused the change."


class AmsProtocolError(AmsError):
    """AMS answered something this client does not understand."""

    kind = "protocol_error"
    default_user_message = "The video server gave an unexpected answer. Try again in a minute."


def is_enterprise(version: Mapping[str, Any]) -> bool:
    """Whether a ``version()`` answer is Enterprise: Community Edition checks no JWT at all."""
    return "enterprise" in str(version.get("versionType", "")).lower()


# --------------------------------------------------------------------------- plumbing


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached AMS (connect failed), so a retry is safe."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason: Any = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


def _normalise_timeout(timeout: tuple[float, float] | float) -> tuple[float, float]:
    if isinstance(timeout, int | float):
        timeout = (float(timeout), float(timeout))
    connect, read = timeout
    if connect <= 0 or read <= 0:
        raise ValueError("AMS timeouts must be positive")
    return float(connect), float(read)


def _mint_jwt(secret: str) -> str:
    """A per-call HS256 JWT with only ``exp``.

    No ``iat``/``nbf``: AMS (java-jwt, zero leeway) rejects one that is even a
    second in its future, so a bot clock slightly ahead would break every call.
    """
    return jwt.encode({"exp": int(time.time()) + CALL_JWT_LIFETIME}, secret, algorithm="HS256")


#: Tomcat's error page (ErrorReportValve): ``<p><b>Message</b> Not allowed IP</p>``
#: (Tomcat 8.0 wrote ``<b>message</b> <u>…</u>``: case and inner tags vary).
_TOMCAT_MESSAGE = re.compile(r"<p>\s*<b>\s*message\s*</b>(.*?)</p>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_STYLE = re.compile(r"<(style|script)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def _page_text(text: str) -> str:
    """An HTML page's visible text, on one line (style and script blocks dropped)."""
    return " ".join(html.unescape(_TAG.sub(" ", _STYLE.sub(" ", text))).split())


def _result_message(resp: requests.Response) -> str:
    """What AMS said: a Result's ``message``, the Message of Tomcat's HTML error page,
    else the page's text (the whole body is read: the message comes after the
    page's title and style sheet)."""
    try:
        data = resp.json()
    except ValueError:
        text = resp.text
        found = _TOMCAT_MESSAGE.search(text)
        if found:
            return _page_text(found.group(1))[:200]
        return _page_text(text)[:200] if "<" in text else text.strip()[:200]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return ""


def _to_unix(value: int | float | datetime) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(value)


#: Connections kept open to AMS: as many as the bot's calls in flight at once
#: (room opens on the post-ack pool, the sweep's ``MEETBOT_AMS_CONCURRENCY``).
POOL_SIZE = 64


def _session_for(base_url: str) -> requests.Session:
    """A session whose proxy and CA bundle settings come from the environment once.

    With ``trust_env`` requests reads them again on every call, walking the
    whole environment several times (``get_environ_proxies``, ``.netrc``): about
    a third of an AMS call's CPU. Every call goes to ``base_url``, so the
    answer (``NO_PROXY`` included) is the same each time.
    """
    session = requests.Session()
    # Keep a connection per call in flight: a busy morning opens dozens of rooms at
    # once, and requests' default pool of 10 would drop and reopen the rest.
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca_bundle:
        session.verify = ca_bundle
    session.trust_env = False
    return session


class _Http:
    """Shared transport: session, timeouts, retries with backoff, logging, observer."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: tuple[float, float] | float,
        retries: int,
        backoff: float,
        session: requests.Session | None,
        observer: Observer | None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.timeout = _normalise_timeout(timeout)
        self.retries = retries
        self.backoff = max(0.0, backoff)
        self.observer = observer
        self._own_session = session is None
        self.session = session if session is not None else _session_for(self.base_url)

    def close(self) -> None:
        """Close the session's connections (only when this client created it)."""
        if self._own_session:
            self.session.close()

    @contextmanager
    def observed(self, op: str) -> Iterator[None]:
        """Report one public call's outcome and total duration (retries included)."""
        started = time.monotonic()
        outcome = "ok"
        try:
            yield
        except AmsError as exc:
            outcome = exc.kind
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            if self.observer is not None:
                try:
                    self.observer(op, outcome, time.monotonic() - started)
                except Exception:  # a metrics bug must never break a call
                    log.exception("AMS observer failed for %s", op)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with up to 10 % jitter, so replicas do not retry in step."""
        base = self.backoff * (2**attempt)
        return base + random.uniform(0, base * 0.1)

    def attempt(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """One HTTP exchange; transport failures become AmsTimeout/AmsUnavailable."""
        started = time.monotonic()
        try:
            resp = self.session.send(
                self._prepare(method, path, json_body, params, headers),
                timeout=self.timeout,
                allow_redirects=False,
                stream=False,
                verify=self.session.verify,
                proxies=self.session.proxies,
                cert=self.session.cert,
            )
        except requests.Timeout as exc:
            took = time.monotonic() - started
            log.warning("AMS %s %s -> timeout after %.3fs", method, path, took)
            phase = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
            limit = self.timeout[0] if phase == "connect" else self.timeout[1]
            err: AmsError = AmsTimeout(
                f"AMS at {self.base_url} did not answer {method} {path} "
                f"({phase} timeout {limit:g}s)"
            )
            err.maybe_sent = not _never_sent(exc)
            raise err from exc
        except requests.RequestException as exc:
            took = time.monotonic() - started
            log.warning("AMS %s %s -> %s after %.3fs", method, path, type(exc).__name__, took)
            err = AmsUnavailable(
                f"AMS at {self.base_url} is unreachable for {method} {path}: "
                f"{type(exc).__name__} (connection refused, reset or dropped)"
            )
            err.maybe_sent = not _never_sent(exc)
            raise err from exc
        took = time.monotonic() - started
        if resp.status_code < 400:
            level = logging.DEBUG
        elif resp.status_code < 500:
            level = logging.INFO
        else:
            level = logging.WARNING
        log.log(level, "AMS %s %s -> %d in %.3fs", method, path, resp.status_code, took)
        return resp

    def _prepare(
        self,
        method: str,
        path: str,
        json_body: Any,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> requests.PreparedRequest:
        """The request, prepared from the session's headers and cookies only.

        ``Session.request`` would merge every session setting into every call
        (``merge_setting``, which checks a runtime Protocol seven times a call): a
        fifth of an AMS call's CPU on Python 3.11, and the sweep makes two calls per
        room. This client's session has nothing else to merge (``_session_for``:
        no auth, no hooks, its environment read once); ``Session.send`` still keeps
        the cookies AMS sets (the management API's login session). A session
        passed in is used for its headers, cookies, adapters, ``verify``,
        ``proxies`` and ``cert``, not its ``auth``, ``hooks`` or ``params``.
        """
        return requests.Request(
            method,
            self.base_url + path,
            headers={**self.session.headers, **(headers or {})},
            json=json_body,
            params=params,
            cookies=self.session.cookies,
        ).prepare()

    def send(
        self,
        method: str,
        path: str,
        *,
        retry: bool,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> requests.Response:
        """``attempt`` plus retries (when ``retry``) on timeouts, dropped connections, 5xx.

        Returns any response below 500. ``headers`` is a factory so each attempt
        gets a freshly minted JWT.
        """
        attempts = 1 + (self.retries if retry else 0)
        for i in range(attempts):
            try:
                resp = self.attempt(
                    method,
                    path,
                    json_body=json_body,
                    params=params,
                    headers=headers() if headers else None,
                )
                if resp.status_code < 500:
                    return resp
                error: AmsError = AmsUnavailable(
                    f"AMS answered {method} {path} with HTTP {resp.status_code}",
                    status=resp.status_code,
                )
            except (AmsTimeout, AmsUnavailable) as exc:
                error = exc
            if i + 1 >= attempts:
                if attempts > 1:
                    log.warning("AMS %s %s: giving up after %d attempts", method, path, attempts)
                raise error
            pause = self.delay(i)
            log.info(
                "AMS %s %s failed (%s); retry %d/%d in %.2fs",
                method,
                path,
                error.kind,
                i + 1,
                attempts - 1,
                pause,
            )
            time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def json_of(resp: requests.Response, method: str, path: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise AmsProtocolError(
                f"AMS answered {method} {path} with HTTP {resp.status_code} and a body "
                "that is not JSON",
                status=resp.status_code,
            ) from None


# --------------------------------------------------------------------------- app REST


class AmsClient:
    """The app REST API (``{base_url}/{app}/rest/v2``): rooms are broadcasts.

    Safe to share between threads (one connection pool). ``retries`` is the number
    of *extra* attempts for idempotent calls; ``backoff`` the first pause in seconds.
    With ``rest_jwt_secret`` (the app's ``jwtSecretKey``) every call carries
    ``Authorization: Bearer <JWT>``.
    """

    def __init__(
        self,
        base_url: str,
        app: str,
        *,
        rest_jwt_secret: str | None = None,
        timeout: tuple[float, float] | float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.2,
        session: requests.Session | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.app = app
        self._rest_jwt_secret = rest_jwt_secret or None
        self._http = _Http(
            f"{base_url.rstrip('/')}/{quote(app, safe='')}/rest/v2",
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            session=session,
            observer=observer,
        )

    # -- lifecycle

    def close(self) -> None:
        """Release pooled connections (a session passed in is left to its owner)."""
        self._http.close()

    def __enter__(self) -> AmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API

    def create_room(
        self,
        room_id: str,
        name: str,
        start: int | float | datetime,
        end: int | float | datetime,
        metadata: str | Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create the room (a broadcast whose ``streamId`` is ``room_id``).

        ``start``/``end`` are unix seconds (or aware datetimes). A mapping
        ``metadata`` is sent as compact JSON (AMS's ``metaData`` is a string).
        Raises AmsIdTaken, AmsInvalidId, or, when AMS's answer was lost and a GET
        cannot prove the room is ours, AmsTimeout/AmsUnavailable.
        """
        body: dict[str, Any] = {
            "streamId": room_id,
            "name": name,
            "plannedStartDate": _to_unix(start),
            "plannedEndDate": _to_unix(end),
        }
        if metadata is not None:
            body["metaData"] = (
                metadata
                if isinstance(metadata, str)
                else json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True)
            )
        with self._http.observed("create_room"):
            return self._create(room_id, body)

    def get_room(self, room_id: str) -> dict[str, Any]:
        """The room's Broadcast; AmsNotFound when AMS does not know it."""
        with self._http.observed("get_room"):
            return self._get_room(room_id)

    def stop_room(self, room_id: str) -> bool:
        """Kick every participant (``stopSubtracks=true``); False if AMS says it failed."""
        with self._http.observed("stop_room"):
            path = f"/broadcasts/{self._path_id(room_id)}/stop"
            resp = self._send("POST", path, params={"stopSubtracks": "true"})
            if resp.status_code == 404:
                return False
            return self._result_success(resp, "POST", path)

    def delete_room(self, room_id: str) -> bool:
        """Delete the room; False when AMS says it did not exist (it answers 200 anyway)."""
        with self._http.observed("delete_room"):
            path = f"/broadcasts/{self._path_id(room_id)}"
            resp = self._send("DELETE", path)
            if resp.status_code == 404:
                return False
            return self._result_success(resp, "DELETE", path)

    def participant_count(self, room_id: str) -> int:
        """Live participants (AMS 3.0+ ``active-subtracks-count``); AmsNotFound if no room."""
        with self._http.observed("participant_count"):
            path = f"/broadcasts/{self._path_id(room_id)}/active-subtracks-count"
            resp = self._send("GET", path)
            data = self._ok_json(resp, "GET", path)
            number = data.get("number") if isinstance(data, dict) else None
            if not isinstance(number, int) or isinstance(number, bool):
                raise AmsProtocolError(f"AMS answered GET {path} without an integer 'number'")
            return number

    def active_subtracks(
        self, room_id: str, offset: int = 0, size: int = MAX_PAGE_SIZE
    ) -> list[dict[str, Any]]:
        """The room's participant streams still broadcasting (AMS 3.0+
        ``active-subtracks/{offset}/{size}``); AmsNotFound if no room.

        AMS does not cap ``size`` here (unlike the list), so one page can hold
        every participant of a room.
        """
        with self._http.observed("active_subtracks"):
            path = (
                f"/broadcasts/{self._path_id(room_id)}/active-subtracks/"
                f"{max(0, int(offset))}/{max(1, int(size))}"
            )
            data = self._ok_json(self._send("GET", path), "GET", path)
            if not isinstance(data, list) or not all(isinstance(b, dict) for b in data):
                raise AmsProtocolError(f"AMS answered GET {path} without a list of Broadcasts")
            return data

    def stop_stream(self, stream_id: str) -> bool:
        """Stop one participant's stream, which disconnects them (their publish).

        ``stopSubtracks=false``: a stream id that turned out to be a room must
        never take everybody in it down. False when AMS says it did not stop
        (not live, or unknown: Community Edition answers ``success: false`` for
        a stream that is not live).
        """
        with self._http.observed("stop_stream"):
            path = f"/broadcasts/{self._path_id(stream_id)}/stop"
            resp = self._send("POST", path, params={"stopSubtracks": "false"})
            if resp.status_code == 404:
                return False
            return self._result_success(resp, "POST", path)

    def list_rooms(self, offset: int = 0, size: int = MAX_PAGE_SIZE) -> list[dict[str, Any]]:
        """One page of AMS broadcasts, as AMS returns it (participant subtracks included)."""
        with self._http.observed("list_rooms"):
            return self._list(offset, size)

    def iter_rooms(self) -> Iterator[dict[str, Any]]:
        """Every room on the app, page by page; participant subtracks are skipped.

        Pages are fetched lazily: collect first if you delete while iterating,
        or offsets shift under you.
        """
        offset = 0
        while True:
            with self._http.observed("list_rooms"):
                page = self._list(offset, MAX_PAGE_SIZE)
            for broadcast in page:
                if not broadcast.get("mainTrackStreamId"):
                    yield broadcast
            if len(page) < MAX_PAGE_SIZE:
                return
            offset += len(page)

    def version(self) -> dict[str, Any]:
        """``{"versionName", "versionType", "buildNumber"}``; see :func:`is_enterprise`."""
        with self._http.observed("version"):
            resp = self._send("GET", "/version")
            data = self._ok_json(resp, "GET", "/version")
            if not isinstance(data, dict) or "versionType" not in data:
                raise AmsProtocolError("AMS answered GET /version without a versionType")
            return data

    # -- internals

    def _headers(self) -> dict[str, str]:
        if self._rest_jwt_secret is None:
            return {}
        return {"Authorization": f"Bearer {_mint_jwt(self._rest_jwt_secret)}"}

    def _send(
        self,
        method: str,
        path: str,
        *,
        retry: bool = True,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> requests.Response:
        resp = self._http.send(
            method, path, retry=retry, json_body=json_body, params=params, headers=self._headers
        )
        self._raise_for_access(resp, method, path)
        return resp

    @staticmethod
    def _path_id(room_id: str) -> str:
        """Refuse ids AMS would refuse anyway, and that could change the URL path."""
        if not isinstance(room_id, str) or not _ID_RE.fullmatch(room_id) or room_id in {".", ".."}:
            raise AmsInvalidId(f"room id {room_id!r} has characters AMS does not allow")
        return room_id

    def _raise_for_access(self, resp: requests.Response, method: str, path: str) -> None:
        """Turn AMS's REST filter refusals into errors that name the filter and the fix.

        The two filters run in order, the REST JWT filter first, then the IP
        filter; each answers with Tomcat's HTML page whose Message says which
        one refused ("Invalid App JWT Token", "Not allowed IP").
        """
        if resp.status_code not in (401, 403):
            return
        message = _result_message(resp)
        lowered = message.lower()
        whole = lowered if "<" not in resp.text else _page_text(resp.text).lower()
        where = f"AMS refused {method} /{self.app}/rest/v2{path} with HTTP {resp.status_code}"
        if "not allowed ip" in lowered or "not allowed ip" in whole:
            raise AmsIpFiltered(
                f"{where} ({message or 'Not allowed IP'}): the '{self.app}' application's "
                "IP filter, which runs after the REST JWT filter, does not allow this bot's "
                "address"
                + (" (the REST JWT was accepted)" if self._rest_jwt_secret else "")
                + ". Add the bot's address to the app's remoteAllowedCIDR (AMS panel > "
                f"Applications > {self.app} > Settings), or turn the IP filter off "
                "(ipFilterEnabled) and protect the REST API with a JWT instead "
                "(jwtControlEnabled, and set AMS_REST_JWT_SECRET to the app's jwtSecretKey).",
                status=resp.status_code,
            )
        if "jwt" in lowered or "jwt" in whole:
            after = (
                " Once the JWT passes, the IP filter (it runs second) checks the bot's address too."
            )
            if self._rest_jwt_secret:
                hint = (
                    f"AMS_REST_JWT_SECRET does not match the '{self.app}' app's "
                    "jwtSecretKey, or this machine's clock is off by more than a minute or two."
                )
            else:
                hint = (
                    f"the '{self.app}' app requires a REST JWT (jwtControlEnabled). Set "
                    "AMS_REST_JWT_SECRET to the app's jwtSecretKey."
                )
            raise AmsBadRestJwt(
                f"{where} ({message or 'Invalid App JWT Token'}): the REST JWT filter refused: "
                f"{hint}{after}",
                status=resp.status_code,
            )
        raise AmsRestRefused(
            f"{where} ({message or 'no message'}): a REST filter refused, and the page does not "
            f"say which. AMS checks the REST JWT first (jwtControlEnabled; meetbot "
            f"{'sends' if self._rest_jwt_secret else 'sends no'} AMS_REST_JWT_SECRET), then "
            f"the IP filter (ipFilterEnabled, remoteAllowedCIDR of the '{self.app}' app); "
            "a proxy in front of AMS may refuse too.",
            status=resp.status_code,
        )

    def _ok_json(self, resp: requests.Response, method: str, path: str) -> Any:
        """The JSON of a 2xx answer; 4xx become typed errors."""
        if resp.status_code == 404:
            raise AmsNotFound(
                f"AMS answered 404 to {method} /{self.app}/rest/v2{path}: no such room "
                f"(or no application {self.app!r} on this server)",
                status=404,
            )
        if resp.status_code == 400:
            message = _result_message(resp)
            lowered = message.lower()
            if "already being used" in lowered:
                raise AmsIdTaken(f"AMS: {message}", status=400)
            if "not valid" in lowered and "stream id" in lowered:
                raise AmsInvalidId(f"AMS: {message}", status=400)
        if not 200 <= resp.status_code < 300:
            raise AmsProtocolError(
                f"AMS answered {method} /{self.app}/rest/v2{path} with unexpected HTTP "
                f"{resp.status_code}: {_result_message(resp)[:200]}",
                status=resp.status_code,
            )
        return self._http.json_of(resp, method, path)

    def _result_success(self, resp: requests.Response, method: str, path: str) -> bool:
        data = self._ok_json(resp, method, path)
        if not isinstance(data, dict) or not isinstance(data.get("success"), bool):
            raise AmsProtocolError(f"AMS answered {method} {path} without a Result")
        return data["success"]

    def _get_room(self, room_id: str) -> dict[str, Any]:
        path = f"/broadcasts/{self._path_id(room_id)}"
        data = self._ok_json(self._send("GET", path), "GET", path)
        if not isinstance(data, dict) or "streamId" not in data:
            raise AmsProtocolError(f"AMS answered GET {path} without a Broadcast")
        return data

    def _list(self, offset: int, size: int) -> list[dict[str, Any]]:
        offset = max(0, int(offset))
        size = max(1, min(int(size), MAX_PAGE_SIZE))
        path = f"/broadcasts/list/{offset}/{size}"
        data = self._ok_json(self._send("GET", path), "GET", path)
        if not isinstance(data, list) or not all(isinstance(b, dict) for b in data):
            raise AmsProtocolError(f"AMS answered GET {path} without a list of Broadcasts")
        return data

    def _create(self, room_id: str, body: dict[str, Any]) -> dict[str, Any]:
        path = "/broadcasts/create"
        attempts = 1 + self._http.retries
        for i in range(attempts):
            try:
                resp = self._http.attempt("POST", path, json_body=body, headers=self._headers())
            except (AmsTimeout, AmsUnavailable) as exc:
                if exc.maybe_sent:
                    return self._probe_created(room_id, body, exc)
                if i + 1 >= attempts:
                    raise
                # The connection never opened: AMS cannot have acted, a retry is safe.
                time.sleep(self._http.delay(i))
                continue
            if resp.status_code >= 500:
                error = AmsUnavailable(
                    f"AMS answered POST {path} with HTTP {resp.status_code}",
                    status=resp.status_code,
                )
                return self._probe_created(room_id, body, error)
            self._raise_for_access(resp, "POST", path)
            data = self._ok_json(resp, "POST", path)
            if not isinstance(data, dict) or not isinstance(data.get("streamId"), str):
                raise AmsProtocolError(f"AMS answered POST {path} without a Broadcast")
            if room_id and data["streamId"] != room_id:
                raise AmsProtocolError(
                    f"AMS created {data['streamId']!r} when asked for {room_id!r}"
                )
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _probe_created(self, room_id: str, body: dict[str, Any], error: AmsError) -> dict[str, Any]:
        """After an ambiguous create, learn from a GET whether our room exists.

        Ours = same name, planned dates and metaData, and not a "zombi" that a
        joiner auto-created. Anything else re-raises the original error.
        """
        if not room_id:
            raise error
        log.warning(
            "AMS create of room %s is ambiguous (%s); checking whether it exists",
            room_id,
            error.kind,
        )
        try:
            room = self._get_room(room_id)
        except AmsNotFound:
            raise error from None
        except AmsError as probe_error:
            log.warning("AMS probe for room %s failed too (%s)", room_id, probe_error.kind)
            raise error from None
        if self._is_ours(room, body):
            log.info("AMS room %s was created despite the lost answer", room_id)
            return room
        log.warning("AMS has a room %s that does not match what we sent", room_id)
        raise error

    @staticmethod
    def _is_ours(room: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
        return (
            not room.get("zombi")
            and room.get("name") == body["name"]
            and room.get("plannedStartDate") == body["plannedStartDate"]
            and room.get("plannedEndDate") == body["plannedEndDate"]
            and (room.get("metaData") or None) == (body.get("metaData") or None)
        )


# --------------------------------------------------------------------------- management


#: Fields whose silent reset (AMS resets every field left out of a settings POST)
#: would open the rooms or lock the bot out. ``update_app_settings`` refuses a
#: dict without them unless ``allow_partial``.
_GUARDED_SETTINGS = (
    "publishJwtControlEnabled",
    "playJwtControlEnabled",
    "jwtStreamSecretKey",
    "jwtControlEnabled",
    "jwtSecretKey",
    "ipFilterEnabled",
    "remoteAllowedCIDR",
)


class AmsManagement:
    """The server management API (``{base_url}/rest/v2``), for application settings.

    Authenticates with ``server_jwt_secret`` (header ``ProxyAuthorization: <JWT>``,
    no ``Bearer``) when given, else with ``email``/``password`` (one login per
    session, cookie ``JSESSIONID``). A refused login raises AmsLoginFailed and makes
    this instance refuse further logins until :meth:`reset_login`, because AMS
    locks the user for 300 s after 3 failures and a scheduler would get there fast.
    """

    def __init__(
        self,
        base_url: str,
        *,
        email: str | None = None,
        password: str | None = None,
        server_jwt_secret: str | None = None,
        timeout: tuple[float, float] | float = DEFAULT_TIMEOUT,
        retries: int = 2,
        backoff: float = 0.2,
        session: requests.Session | None = None,
        observer: Observer | None = None,
    ) -> None:
        if not server_jwt_secret and not (email and password):
            raise ValueError("AmsManagement needs server_jwt_secret or email and password")
        self._email = email
        self._password = password
        self._server_jwt_secret = server_jwt_secret or None
        self._http = _Http(
            f"{base_url.rstrip('/')}/rest/v2",
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            session=session,
            observer=observer,
        )
        self._login_lock = threading.Lock()
        self._logged_in = False
        self._login_error: AmsLoginFailed | None = None

    def close(self) -> None:
        """Release pooled connections (a session passed in is left to its owner)."""
        self._http.close()

    def __enter__(self) -> AmsManagement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API

    def login(self) -> None:
        """Log in now (e.g. from ``meetbot doctor``); a no-op with a server JWT or a session."""
        with self._http.observed("login"):
            self._ensure_login()

    def reset_login(self) -> None:
        """Allow a new login after a refused one (once the credentials are fixed)."""
        with self._login_lock:
            self._login_error = None
            self._logged_in = False

    def get_app_settings(self, app: str) -> dict[str, Any]:
        """The application's whole AppSettings (secrets in clear text: never log it)."""
        with self._http.observed("get_app_settings"):
            path = f"/applications/settings/{quote(app, safe='')}"
            resp = self._authorized("GET", path, retry=True)
            if resp.status_code == 404 or not resp.content.strip():
                raise AmsNotFound(f"AMS has no application {app!r}", status=resp.status_code)
            self._expect_2xx(resp, "GET", path)
            data = _Http.json_of(resp, "GET", path)
            if not isinstance(data, dict):
                raise AmsProtocolError(f"AMS answered GET {path} without an AppSettings object")
            return data

    def update_app_settings(
        self, app: str, settings: Mapping[str, Any], *, allow_partial: bool = False
    ) -> None:
        """POST the *whole* settings object back; raises AmsRejected unless success.

        AMS resets every field left out to its default (JWT control off, IP filter
        reset...), so GET first, change fields, POST everything: see
        :meth:`patch_app_settings`. A dict missing a security field is refused
        here (ValueError, nothing sent) unless ``allow_partial``.
        """
        missing = [name for name in _GUARDED_SETTINGS if name not in settings]
        if missing and not allow_partial:
            raise ValueError(
                "refusing to POST partial AMS settings (AMS would reset "
                + ", ".join(missing)
                + " to defaults); GET them first or use patch_app_settings"
            )
        with self._http.observed("update_app_settings"):
            path = f"/applications/settings/{quote(app, safe='')}"
            resp = self._authorized("POST", path, retry=False, json_body=dict(settings))
            if resp.status_code == 404:
                raise AmsNotFound(f"AMS has no application {app!r}", status=404)
            if resp.status_code == 400:
                raise AmsRejected(
                    f"AMS refused the settings of {app!r}: {_result_message(resp)}",
                    status=400,
                )
            self._expect_2xx(resp, "POST", path)
            data = _Http.json_of(resp, "POST", path)
            if not isinstance(data, dict) or not isinstance(data.get("success"), bool):
                raise AmsProtocolError(f"AMS answered POST {path} without a Result")
            if not data["success"]:
                raise AmsRejected(
                    f"AMS refused the settings of {app!r}: {data.get('message') or 'no reason'}"
                )

    def patch_app_settings(self, app: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """GET the settings, apply ``changes``, POST everything back; returns what was sent.

        The safe way to change one field (e.g. rotate ``jwtStreamSecretKey``).
        """
        current = self.get_app_settings(app)
        current.update(changes)
        self.update_app_settings(app, current)
        return current

    # -- internals

    def _ensure_login(self) -> None:
        if self._server_jwt_secret:
            return
        with self._login_lock:
            if self._login_error is not None:
                raise AmsLoginFailed(
                    f"{self._login_error} (login not retried: fix the credentials, then "
                    "restart or call reset_login())",
                    status=self._login_error.status,
                )
            if self._logged_in:
                return
            path = "/users/authenticate"
            resp = self._http.send(
                "POST",
                path,
                retry=False,  # never: AMS locks the user after 3 failures
                json_body={"email": self._email, "password": self._password},
            )
            try:
                data = resp.json()
            except ValueError:
                data = None
            if resp.status_code == 200 and isinstance(data, dict) and data.get("success") is True:
                self._logged_in = True
                log.info("AMS management login as %s succeeded", self._email)
                return
            reason = (data or {}).get("message") if isinstance(data, dict) else None
            error = AmsLoginFailed(
                f"AMS refused the management login for {self._email!r} "
                f"(HTTP {resp.status_code}: {reason or 'no reason given'}). Check "
                "AMS_ADMIN_EMAIL and AMS_ADMIN_PASSWORD. Not retrying: AMS blocks the user "
                "for 300 s after 3 failed logins.",
                status=resp.status_code,
            )
            self._login_error = error
            log.error("AMS management login as %s refused; not retrying", self._email)
            raise error

    def _auth_headers(self) -> dict[str, str]:
        if self._server_jwt_secret:
            return {"ProxyAuthorization": _mint_jwt(self._server_jwt_secret)}
        return {}

    def _authorized(
        self, method: str, path: str, *, retry: bool, json_body: Any = None
    ) -> requests.Response:
        """Send with auth; on 401/403 with a cookie session, log in again once."""
        for fresh_login in (False, True):
            self._ensure_login()
            resp = self._http.send(
                method, path, retry=retry, json_body=json_body, headers=self._auth_headers
            )
            if resp.status_code not in (401, 403):
                return resp
            if self._server_jwt_secret:
                raise AmsLoginFailed(
                    f"AMS refused {method} /rest/v2{path} with HTTP {resp.status_code}: the "
                    "server JWT (ProxyAuthorization) is wrong; check AMS_SERVER_JWT_SECRET "
                    "against the server's jwtServerSecretKey and jwtServerControlEnabled.",
                    status=resp.status_code,
                )
            if fresh_login:
                raise AmsLoginFailed(
                    f"AMS refused {method} /rest/v2{path} with HTTP {resp.status_code} right "
                    f"after a successful login as {self._email!r}: the user may lack the "
                    "rights for this application.",
                    status=resp.status_code,
                )
            log.info("AMS management session expired; logging in again")
            with self._login_lock:
                self._logged_in = False
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _expect_2xx(resp: requests.Response, method: str, path: str) -> None:
        if not 200 <= resp.status_code < 300:
            raise AmsProtocolError(
                f"AMS answered {method} /rest/v2{path} with unexpected HTTP {resp.status_code}",
                status=resp.status_code,
            )
