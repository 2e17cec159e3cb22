"""The AMS stream secret (``jwtStreamSecretKey``): stored encrypted, versioned, rotated.

Every join link is a JWT signed with the application's stream secret, and
rotating that secret is the one lever that kills every outstanding link at once
(``shared/docs/ams.md``). Why the code looks like this:

* **Encrypted at rest.** Secrets are kept with Fernet under
  ``MEETBOT_SECRET_KEY`` (:class:`~bot.vault.Vault`): a database dump or backup is not a
  credential. Plaintext never goes to logs, audit rows, errors or the database.
* **Versioned.** Rows are ``pending`` → ``current`` → ``retired``. Grants record
  the version their link was minted with, and the bot re-issues links when the
  current version changes.
* **Crash-safe.** AMS and the database cannot change in one transaction, so
  :func:`rotate` writes the new secret as ``pending`` and *commits* before it
  tells AMS. If the process dies between AMS accepting it and the database
  recording it, :func:`settle` (at start, or the next rotation) asks AMS
  which secret it holds and settles the row from that answer.
* **Exactly once across replicas.** Every replica runs the scheduler; the
  ``rotate_secret`` job row is claimed with a conditional UPDATE (a lease),
  and only the claimant touches AMS.
* **Never lock the admin out.** AMS locks a user for 300 s after 3 failed
  logins. A refused login pauses the job (``next_run_at``) for longer than
  that, in the shared database, so neither this replica nor any other tries
  again in a loop. :class:`~bot.ams.client.AmsManagement` also refuses to log in again
  after a refusal until it is rebuilt (a restart), so a wrong password costs
  one attempt per process start, not one per sweep.
* **Settings are patched, not replaced.** AMS resets every field left out of a
  settings POST, so the whole object is read, one field changed and all of it
  posted back (:meth:`~bot.ams.client.AmsManagement.patch_app_settings`).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import and_, func, not_, select, update
from sqlalchemy.orm import Session

from bot import leases
from bot.ams.client import (
    AmsError,
    AmsLoginFailed,
    AmsManagement,
    AmsNotFound,
    AmsRejected,
    AmsTimeout,
    AmsUnavailable,
)
from bot.config import Settings
from bot.durations import format_duration
from bot.store import Job, Store, StreamSecret
from bot.vault import Vault

__all__ = [
    "ERROR_BACKOFF_S",
    "JOB_NAME",
    "LEASE_S",
    "LOGIN_BACKOFF_S",
    "SECRET_LENGTH",
    "NoCurrentSecret",
    "RotatingSecret",
    "RotationResult",
    "SecretSource",
    "SecretState",
    "StaticSecret",
    "StreamSecretError",
    "bootstrap",
    "build_management",
    "new_secret",
    "rotate",
    "settle",
]

log = logging.getLogger("meetbot.stream_secret")

#: The ``jobs`` row that replicas claim before rotating.
JOB_NAME = "rotate_secret"
#: How long a claim holds. Longer than one rotation's AMS calls with timeouts.
LEASE_S = 60
#: Pause after a refused login: AMS blocks the user for 300 s after 3 failures.
LOGIN_BACKOFF_S = 310
#: Pause after any other failure, so a broken AMS is not hammered every sweep.
ERROR_BACKOFF_S = 60
#: Length of a generated secret (AMS wants 32+ characters).
SECRET_LENGTH = 48
#: ``Job.last_error`` starts with the error kind; this one gates every login.
_LOGIN_PAUSE_PREFIX = AmsLoginFailed.kind + ":"
_SETTING = "jwtStreamSecretKey"


class SecretState:
    """Lifecycle of a stored secret: pending → current → retired (pending may be dropped)."""

    PENDING = "pending"
    CURRENT = "current"
    RETIRED = "retired"


class StreamSecretError(Exception):
    """A stream-secret problem an operator must fix. Messages never contain a secret."""


class NoCurrentSecret(StreamSecretError):
    """The database holds no ``current`` stream secret, so no link can be minted."""


class SecretSource(Protocol):
    """Where the current AMS stream secret comes from: ``(version, secret)``."""

    def current(self) -> tuple[int | None, str]: ...


@dataclass
class StaticSecret:
    """``AMS_JWT_SECRET`` as it is, when the bot does not store and rotate the secret."""

    secret: str

    def current(self) -> tuple[int | None, str]:
        return None, self.secret


def new_secret() -> str:
    """48 URL-safe characters (288 random bits) from ``secrets``."""
    return secrets.token_urlsafe(SECRET_LENGTH * 3 // 4)


# --------------------------------------------------------------------------- reading


class RotatingSecret:
    """The current stream secret from the database, for minting links (a ``SecretSource``).

    ``current()`` is cached for ``cache_ttl`` seconds: every DM would otherwise
    cost a query and a decryption, yet a replica must pick up another replica's
    rotation within about a second (links minted with a retired secret fail).
    Thread-safe.
    """

    def __init__(
        self,
        store: Store,
        vault: Vault,
        *,
        cache_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.vault = vault
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._current: tuple[int, str] | None = None
        self._current_at = 0.0
        # Only current/retired versions: their ciphertext never changes. A pending
        # version number may be dropped, so it is never cached.
        self._by_version: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"RotatingSecret(cache_ttl={self.cache_ttl})"

    def current(self) -> tuple[int, str]:
        """``(version, secret)`` of the ``current`` row; NoCurrentSecret when there is none."""
        with self._lock:
            if self._current is not None and self._clock() - self._current_at < self.cache_ttl:
                return self._current
        with self.store.read() as s:
            row = _current_row(s)
        if row is None:
            raise NoCurrentSecret(
                "the database holds no current AMS stream secret: run bootstrap() (meetbot "
                "serve and meetbot rotate-secret do it at start) with AMS_JWT_SECRET set or "
                "AMS management credentials configured"
            )
        value = (row.version, self.vault.decrypt(row.ciphertext))
        with self._lock:
            self._current = value
            self._current_at = self._clock()
            self._by_version[row.version] = value[1]
        return value

    def get(self, version: int) -> str | None:
        """The secret of one version (e.g. to check an old link), or None if unknown."""
        with self._lock:
            if version in self._by_version:
                return self._by_version[version]
        with self.store.read() as s:
            row = s.get(StreamSecret, version)
        if row is None:
            return None
        secret = self.vault.decrypt(row.ciphertext)
        if row.state != SecretState.PENDING:
            with self._lock:
                self._by_version[version] = secret
        return secret

    def invalidate(self) -> None:
        """Forget the cached current secret (e.g. in an ``on_rotated`` callback)."""
        with self._lock:
            self._current = None


# --------------------------------------------------------------------------- management


def build_management(settings: Settings) -> AmsManagement | None:
    """The management client from the settings, or None when none is configured.

    A server JWT (``AMS_SERVER_JWT_SECRET``) is preferred over the admin login:
    it has no session and no lockout to trip over.
    """
    timeout = (min(3.05, settings.ams_timeout), settings.ams_timeout)
    if settings.ams_server_jwt_secret:
        return AmsManagement(
            settings.ams_url, server_jwt_secret=settings.ams_server_jwt_secret, timeout=timeout
        )
    if settings.ams_admin_email and settings.ams_admin_password:
        return AmsManagement(
            settings.ams_url,
            email=settings.ams_admin_email,
            password=settings.ams_admin_password,
            timeout=timeout,
        )
    return None


# --------------------------------------------------------------------------- bootstrap


def bootstrap(settings: Settings, store: Store, vault: Vault, mgmt: AmsManagement | None) -> None:
    """Seed version 1 when the table is empty: from AMS_JWT_SECRET, else from AMS.

    Once seeded, AMS_JWT_SECRET is never read again (rotation owns the secret);
    a stale value only earns an INFO line. Replicas may race here: the insert
    is "do nothing on conflict", so exactly one seed wins.
    """
    t = _now()
    with store.read() as s:
        existing = _current_row(s)
        empty = existing is None and s.scalar(select(func.count()).select_from(StreamSecret)) == 0
    if not empty:
        if existing is not None and settings.ams_jwt_secret:
            if not _same(vault.decrypt(existing.ciphertext), settings.ams_jwt_secret):
                log.info(
                    "AMS_JWT_SECRET differs from the current stream secret (version %d); it "
                    "only seeds an empty database and can be removed",
                    existing.version,
                )
        return
    source = "AMS_JWT_SECRET"
    secret = settings.ams_jwt_secret
    if not secret:
        if mgmt is None:
            raise StreamSecretError(
                "cannot seed the AMS stream secret: set AMS_JWT_SECRET, or AMS management "
                "credentials (AMS_ADMIN_EMAIL/AMS_ADMIN_PASSWORD or AMS_SERVER_JWT_SECRET)"
            )
        paused = _login_pause(store, t)
        if paused is not None:
            raise StreamSecretError(
                f"cannot seed the AMS stream secret from AMS: management login paused until "
                f"{_when(paused.next_run_at)} after: {paused.last_error}"
            )
        try:
            secret = _ams_secret(settings, mgmt)
        except AmsLoginFailed as e:
            _note_login_failure(store, None, e, settings, t)
            raise
        source = "AMS"
    with store.write() as s:
        if s.scalar(select(func.count()).select_from(StreamSecret)):
            return  # another replica seeded first
        inserted = s.execute(
            leases.insert_ignore(store, StreamSecret).values(
                version=1,
                ciphertext=vault.encrypt(secret),
                state=SecretState.CURRENT,
                created_at=t,
                activated_at=t,
            )
        ).rowcount
        if inserted != 1:
            return  # a concurrent replica's seed won (PostgreSQL)
        Store.audit(s, "seed_secret", actor="bootstrap", version=1, source=source)
    log.info("AMS stream secret seeded as version 1 from %s", source)


# --------------------------------------------------------------------------- settle


def settle(
    settings: Settings,
    store: Store,
    vault: Vault,
    mgmt: AmsManagement | None,
    *,
    owner: str | None = None,
    now: int | None = None,
) -> str:
    """Make the database agree with the secret AMS holds; returns what it did.

    Run at start. A ``pending`` row means a rotation stopped between writing
    it and recording AMS's answer: if AMS holds it, it becomes current; if AMS
    kept the current one, it is dropped; if AMS holds something else, that is
    adopted as a new version with a warning (someone changed it by hand). With
    no pending row, a differing AMS value is adopted too.

    It takes the rotation lease first, so it never settles a pending row that a
    live rotation on another replica is about to confirm; then it answers
    "deferred" and that rotation (or the next one) settles it. AMS errors do not
    raise: the bot can still serve with the stored secret, so they are logged
    and described.
    """
    t = _now() if now is None else now
    owner = (owner or f"reconcile:{uuid.uuid4().hex[:8]}")[:64]  # Job.lease_owner is 64 wide
    if mgmt is None:
        with store.read() as s:
            pending = _pending_rows(s)
        if pending:
            log.warning(
                "a pending AMS stream secret (version %d) cannot be settled: no AMS "
                "management credentials to ask which secret AMS holds",
                pending[-1].version,
            )
        return "skipped: no AMS management credentials"
    if not _claim(store, owner, t, respect_schedule=False):
        return "deferred: " + _why_not_claimed(store, t)
    try:
        try:
            ams_value = _ams_secret(settings, mgmt)
        except AmsLoginFailed as e:
            _note_login_failure(store, owner, e, settings, t)
            return f"failed: {_short(e)}"
        except (AmsError, StreamSecretError) as e:
            log.warning("could not ask AMS which stream secret it holds: %s", _short(e))
            return f"failed: {_short(e)}"
        description, _changed = _settle(store, vault, ams_value, actor=owner, now=t)
        log.info("stream secret reconcile: %s", description)
        return description
    finally:
        _release(store, owner)


# --------------------------------------------------------------------------- rotate


@dataclass(frozen=True)
class RotationResult:
    """What :func:`rotate` did. ``version`` is the current version afterwards (if known)."""

    rotated: bool
    version: int | None
    reason: str


def rotate(
    settings: Settings,
    store: Store,
    vault: Vault,
    mgmt: AmsManagement | None,
    *,
    owner: str,
    now: int,
    force: bool = False,
    on_rotated: Callable[[int], None] | None = None,
) -> RotationResult:
    """Rotate the stream secret if it is due (or ``force``), at most once across replicas.

    Steps: claim the ``rotate_secret`` job (a lease, only when ``next_run_at``
    has come); finish an interrupted rotation if a pending row is left; unless
    ``force``, stop when the current secret is younger than
    MEETBOT_SECRET_MAX_AGE; write the new secret as ``pending`` and commit;
    patch AMS; then in one transaction make it current, retire the old one,
    audit, release the lease. Finally ``on_rotated(version)`` so the caller
    re-issues every active room's links (its exceptions are logged, not raised:
    the rotation itself is done).

    A call that finds the current version changed between its first look and
    its claim stops: another process just rotated, and one rotation serves both.
    ``force`` skips only the age check, never the lease or a pause after an
    error: a pause after a refused login is what keeps AMS from locking the
    admin user, and an operator's command must not defeat it.

    A refused login pauses the job for max(sweep interval, 310 s); other AMS
    errors for max(sweep interval, 60 s). The pending row is deleted only when
    AMS certainly did not take it; otherwise it stays for :func:`settle` or
    the next rotation to settle. Unexpected exceptions (database down) release
    the lease and propagate.
    """
    owner = owner[:64]  # Job.lease_owner is 64 wide
    with store.read() as s:
        job = s.get(Job, JOB_NAME)
        current = _current_row(s)
        has_pending = bool(_pending_rows(s))
    current_version = current.version if current is not None else None
    if mgmt is None:
        return RotationResult(
            False,
            current_version,
            "no AMS management credentials (AMS_ADMIN_EMAIL/AMS_ADMIN_PASSWORD or "
            "AMS_SERVER_JWT_SECRET)",
        )
    # Cheap read-only exits first, so a sweep on every replica costs no write.
    if job is not None and (job.next_run_at > now or (job.lease_until or 0) >= now):
        return RotationResult(False, current_version, _why_not_claimed(store, now))
    if not force and not has_pending:
        not_due = _not_due(settings, current, now)
        if not_due:
            return RotationResult(False, current_version, not_due)
    if not _claim(store, owner, now, respect_schedule=True):
        return RotationResult(False, current_version, _why_not_claimed(store, now))
    try:
        return _rotate_claimed(
            settings,
            store,
            vault,
            mgmt,
            owner=owner,
            now=now,
            force=force,
            seen=current_version,
            on_rotated=on_rotated,
        )
    except BaseException as e:
        try:
            _release(store, owner, next_run_at=now + _error_backoff(settings), last_error=_short(e))
        except Exception:  # the database may be what failed: the lease runs out anyway
            log.exception("could not release the rotation lease")
        raise


def _rotate_claimed(
    settings: Settings,
    store: Store,
    vault: Vault,
    mgmt: AmsManagement,
    *,
    owner: str,
    now: int,
    force: bool,
    seen: int | None,
    on_rotated: Callable[[int], None] | None,
) -> RotationResult:
    with store.read() as s:
        has_pending = bool(_pending_rows(s))
    if has_pending:
        # A rotation stopped half-way (crash, or AMS's answer was lost). Settle it
        # from what AMS holds before anything else: links may be failing right now.
        try:
            ams_value = _ams_secret(settings, mgmt)
        except AmsLoginFailed as e:
            return _login_failed(store, owner, e, settings, now)
        except (AmsError, StreamSecretError) as e:
            return _failed(store, owner, e, settings, now, "could not settle a pending secret")
        description, changed = _settle(store, vault, ams_value, actor=owner, now=now)
        log.info("stream secret: %s", description)
        if changed is not None:
            _release(store, owner, last_run_at=now, last_error=None)
            _call(on_rotated, changed)
            return RotationResult(True, changed, f"finished an interrupted rotation: {description}")

    with store.read() as s:
        current = _current_row(s)
    previous = current.version if current is not None else None
    if previous != seen:
        # Another process rotated between our first look and our claim. Both asked
        # for "a secret newer than version <seen>", so one rotation serves both
        # (three replicas or operators asking at once must not rotate three times).
        _release(store, owner)
        return RotationResult(
            False, previous, f"another process rotated the secret to version {previous} meanwhile"
        )
    if not force:
        not_due = _not_due(settings, current, now)
        if not_due:  # another replica rotated while we waited for the lease
            _release(store, owner)
            return RotationResult(False, previous, not_due)

    secret = new_secret()
    with store.write() as s:
        version = _max_version(s) + 1
        s.add(
            StreamSecret(
                version=version,
                ciphertext=vault.encrypt(secret),
                state=SecretState.PENDING,
                created_at=now,
            )
        )
    # Committed: from here a crash leaves a pending row that reconcile settles.

    try:
        mgmt.patch_app_settings(settings.ams_app, {_SETTING: secret})
    except AmsLoginFailed as e:
        _delete_pending(store, version)  # refused before any settings were written
        return _login_failed(store, owner, e, settings, now, previous)
    except AmsError as e:
        if _certainly_not_applied(e):
            _delete_pending(store, version)
            what = f"AMS did not take the new secret; dropped pending version {version}"
        else:
            what = (
                f"AMS may or may not have taken the new secret; pending version {version} "
                "is left for reconcile or the next rotation to settle"
            )
        return _failed(store, owner, e, settings, now, what, previous)
    except ValueError as e:  # AMS's settings lack a security field: nothing was sent
        _delete_pending(store, version)
        return _failed(store, owner, e, settings, now, "AMS's settings look incomplete", previous)

    version = _promote(store, vault, version, secret, owner=owner, now=now, force=force)
    log.info("AMS stream secret rotated: version %s is current", version)
    _call(on_rotated, version)
    return RotationResult(True, version, f"rotated: version {version} replaces {previous}")


def _promote(
    store: Store, vault: Vault, version: int, secret: str, *, owner: str, now: int, force: bool
) -> int:
    """Record that AMS holds ``secret``: pending → current, old current → retired, audit."""
    with store.write() as s:
        row = s.get(StreamSecret, version)
        previous = _current_row(s)
        previous_version = previous.version if previous is not None else None
        if row is None:
            # Our lease ran out and a reconcile dropped the pending row before AMS
            # took it. AMS holds it now, so record it again under a fresh version.
            version = _max_version(s) + 1
            log.warning(
                "the pending stream secret was dropped while AMS accepted it; recording it "
                "again as version %d",
                version,
            )
            row = StreamSecret(
                version=version,
                ciphertext=vault.encrypt(secret),
                state=SecretState.PENDING,
                created_at=now,
            )
            s.add(row)
        _make_current(s, row, now)
        Store.audit(
            s,
            "rotate_secret",
            actor=owner,
            version=version,
            previous=previous_version if previous_version != version else None,
            forced=force,
        )
        s.execute(update(Job).where(Job.name == JOB_NAME).values(last_run_at=now, last_error=None))
        s.execute(
            update(Job)
            .where(Job.name == JOB_NAME, Job.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )
    return version


# --------------------------------------------------------------------------- internals


def _now() -> int:
    return int(time.time())


def _when(t: int | None) -> str:
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(e: BaseException) -> str:
    """``kind: message`` on one line, cut to fit ``Job.last_error`` (no secrets in it)."""
    kind = getattr(e, "kind", type(e).__name__)
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{kind}: {text}"[:300]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _current_row(s: Session) -> StreamSecret | None:
    q = (
        select(StreamSecret)
        .where(StreamSecret.state == SecretState.CURRENT)
        .order_by(StreamSecret.version.desc())
        .limit(1)
    )
    return s.scalars(q).first()


def _pending_rows(s: Session) -> list[StreamSecret]:
    q = (
        select(StreamSecret)
        .where(StreamSecret.state == SecretState.PENDING)
        .order_by(StreamSecret.version)
    )
    return list(s.scalars(q))


def _max_version(s: Session) -> int:
    return int(s.scalar(select(func.max(StreamSecret.version))) or 0)


def _make_current(s: Session, row: StreamSecret, now: int) -> None:
    row.state = SecretState.CURRENT
    row.activated_at = now
    s.flush()
    s.execute(
        update(StreamSecret)
        .where(StreamSecret.state == SecretState.CURRENT, StreamSecret.version != row.version)
        .values(state=SecretState.RETIRED)
    )


def _delete_pending(store: Store, version: int) -> None:
    with store.write() as s:
        row = s.get(StreamSecret, version)
        if row is not None and row.state == SecretState.PENDING:
            s.delete(row)


def _claim(store: Store, owner: str, now: int, *, respect_schedule: bool) -> bool:
    """Take the rotation lease; True when this owner got it (``bot.leases``).

    ``respect_schedule`` (rotations) also requires ``next_run_at <= now``;
    reconcile only honours a pause after a refused login.
    """
    if respect_schedule:
        due = Job.next_run_at <= now
    else:
        due = not_(
            and_(
                Job.next_run_at > now,
                func.coalesce(Job.last_error, "").like(_LOGIN_PAUSE_PREFIX + "%"),
            )
        )
    return leases.claim(store, JOB_NAME, owner, now=now, lease=LEASE_S, due=due)


def _release(store: Store, owner: str, **values: Any) -> None:
    """Give the rotation lease back (only if still ours) and record ``values`` on the job."""
    leases.release(store, JOB_NAME, owner, **values)


def _why_not_claimed(store: Store, now: int) -> str:
    with store.read() as s:
        job = s.get(Job, JOB_NAME)
    if job is None:
        return "the rotation job does not exist"
    if job.lease_until is not None and job.lease_until >= now:
        return (
            f"another process ({job.lease_owner}) is rotating the secret "
            f"(lease until {_when(job.lease_until)})"
        )
    if job.next_run_at > now:
        return f"rotation paused until {_when(job.next_run_at)} after: {job.last_error}"
    return "the rotation job was just claimed by another process"


def _login_pause(store: Store, now: int) -> Job | None:
    with store.read() as s:
        job = s.get(Job, JOB_NAME)
    if (
        job is not None
        and job.next_run_at > now
        and (job.last_error or "").startswith(_LOGIN_PAUSE_PREFIX)
    ):
        return job
    return None


def _not_due(settings: Settings, current: StreamSecret | None, now: int) -> str | None:
    """Why a scheduled rotation should not happen now, or None when it is due."""
    if settings.secret_max_age <= 0:
        return "rotation is off (MEETBOT_SECRET_MAX_AGE is 0)"
    if current is None:
        return None
    activated = current.activated_at or current.created_at
    age = max(0, now - activated)
    if age < settings.secret_max_age:
        return (
            f"version {current.version} is {format_duration(age)} old; it rotates at "
            f"{format_duration(settings.secret_max_age)}"
        )
    return None


def _ams_secret(settings: Settings, mgmt: AmsManagement) -> str:
    """What AMS holds as ``jwtStreamSecretKey`` (never logged)."""
    value = mgmt.get_app_settings(settings.ams_app).get(_SETTING)
    if not isinstance(value, str) or not value:
        raise StreamSecretError(
            f"AMS reports no {_SETTING} for application {settings.ams_app!r}: turn on JWT "
            "control for publish and play and set a stream secret there"
        )
    return value


def _settle(
    store: Store, vault: Vault, ams_value: str, *, actor: str, now: int
) -> tuple[str, int | None]:
    """Make the rows agree with ``ams_value``. Returns (description, new current version or None).

    Runs under the rotation lease, in one write transaction, after the AMS call
    (a slow AMS never holds a database lock).
    """
    with store.write() as s:
        pending = _pending_rows(s)
        current = _current_row(s)
        match = next((p for p in pending if _same(vault.decrypt(p.ciphertext), ams_value)), None)
        if match is not None:
            for p in pending:
                if p is not match:
                    s.delete(p)
            _make_current(s, match, now)
            Store.audit(
                s, "reconcile_secret", actor=actor, outcome="promoted", version=match.version
            )
            return f"promoted pending version {match.version}: AMS had accepted it", match.version
        if current is not None and _same(vault.decrypt(current.ciphertext), ams_value):
            if not pending:
                return f"in sync: AMS holds version {current.version}", None
            dropped = [p.version for p in pending]
            for p in pending:
                s.delete(p)
            Store.audit(s, "reconcile_secret", actor=actor, outcome="dropped", versions=dropped)
            return (
                f"dropped pending version {', '.join(map(str, dropped))}: AMS kept "
                f"version {current.version}"
            ), None
        # AMS holds a secret we never wrote: someone set it by hand. It is what AMS
        # checks links against, so it has to become ours.
        version = _max_version(s) + 1
        for p in pending:
            s.delete(p)
        row = StreamSecret(
            version=version,
            ciphertext=vault.encrypt(ams_value),
            state=SecretState.PENDING,
            created_at=now,
        )
        s.add(row)
        _make_current(s, row, now)
        Store.audit(s, "reconcile_secret", actor=actor, outcome="adopted", version=version)
    log.warning(
        "AMS holds a stream secret this bot did not set (changed by hand?); adopted it as "
        "version %d%s",
        version,
        f", dropping pending version(s) {[p.version for p in pending]}" if pending else "",
    )
    if len(ams_value) < 32:
        log.warning("the stream secret AMS holds is shorter than 32 characters")
    return f"adopted the secret AMS holds as version {version} (it was changed by hand)", version


def _certainly_not_applied(e: AmsError) -> bool:
    """True only when AMS cannot have taken the settings POST."""
    if isinstance(e, AmsLoginFailed | AmsRejected | AmsNotFound):
        return True  # refused with an answer
    if isinstance(e, AmsTimeout | AmsUnavailable):
        return not e.maybe_sent  # the connection never opened
    return False


def _error_backoff(settings: Settings) -> int:
    return max(settings.sweep_interval, ERROR_BACKOFF_S)


def _note_login_failure(
    store: Store, owner: str | None, e: AmsLoginFailed, settings: Settings, now: int
) -> int:
    """Pause every AMS login (all replicas) past AMS's 300 s lockout; returns the end."""
    until = now + max(settings.sweep_interval, LOGIN_BACKOFF_S)
    if owner is not None:
        _release(store, owner, next_run_at=until, last_error=_short(e))
    else:
        with store.write() as s:
            s.execute(leases.insert_ignore(store, Job).values(name=JOB_NAME, next_run_at=0))
            job = s.get(Job, JOB_NAME)
            assert job is not None
            job.next_run_at = max(until, job.next_run_at or 0)
            job.last_error = _short(e)
    log.warning(
        "AMS refused the management login, so the stream secret is not rotated; no new "
        "login before %s (AMS locks the user for 300 s after 3 failed logins): %s",
        _when(until),
        e,
    )
    return until


def _login_failed(
    store: Store,
    owner: str,
    e: AmsLoginFailed,
    settings: Settings,
    now: int,
    version: int | None = None,
) -> RotationResult:
    until = _note_login_failure(store, owner, e, settings, now)
    return RotationResult(
        False, version, f"AMS refused the management login; not retrying before {_when(until)}"
    )


def _failed(
    store: Store,
    owner: str,
    e: Exception,
    settings: Settings,
    now: int,
    what: str,
    version: int | None = None,
) -> RotationResult:
    until = now + _error_backoff(settings)
    _release(store, owner, next_run_at=until, last_error=_short(e))
    log.warning(
        "AMS stream secret rotation failed (%s): %s; next try after %s",
        _short(e),
        what,
        _when(until),
    )
    return RotationResult(False, version, f"{what} ({_short(e)}); next try after {_when(until)}")


def _call(on_rotated: Callable[[int], None] | None, version: int) -> None:
    if on_rotated is None:
        return
    try:
        on_rotated(version)
    except Exception:
        # The rotation is done; the bot notices the new version on its next sweep.
        log.exception("on_rotated(%d) failed", version)
