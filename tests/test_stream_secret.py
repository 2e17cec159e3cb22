"""The AMS stream secret: encrypted storage, crash-safe rotation, exactly once, no lockout.

Everything runs against the AMS double over real loopback HTTP; the key tests
run on SQLite and on PostgreSQL (the ``db_url`` fixture), because the claim is
a conditional UPDATE whose concurrency differs between the two.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import select

import bot.ams.stream_secret as ss
from bot.ams.client import AmsClient, AmsLoginFailed, AmsManagement
from bot.ams.stream_secret import (
    JOB_NAME,
    NoCurrentSecret,
    RotatingSecret,
    StreamSecretError,
    bootstrap,
    build_management,
    rotate,
    settle,
)
from bot.config import Settings
from bot.ops.cli import main
from bot.sim.ams import DEFAULT_ADMIN_EMAIL, DEFAULT_ADMIN_PASSWORD, AmsDouble
from bot.store import Audit, Job, Store, StreamSecret
from bot.tokens import mint_join_token
from bot.vault import Vault, VaultError

OLD = "stream-secret-0123456789-0123456789-abcdef"
SERVER_SECRET = "server-secret-0123456789-0123456789-abcdef"
KEY = Fernet.generate_key().decode()
MAX_AGE = 86_400
KEYNAME = "jwtStreamSecretKey"
SETTINGS_PATH = "/rest/v2/applications/settings/Conference"
LOGIN_PATH = "/rest/v2/users/authenticate"
ROOM = "room-abc_123"
#: Non-default AppSettings, so a POST that dropped a field (reset to default) shows.
CUSTOM = {
    "mp4MuxingEnabled": True,
    "hlsListSize": "5",
    "webRTCFrameRate": 24,
    "remoteAllowedCIDR": "127.0.0.1,10.0.0.0/8",
    "acceptOnlyRoomsInDataStore": True,
    "webhookPlayAuthUrl": "http://127.0.0.1:9/play-hook-not-called",
    "stunServerURI": "stun:stun.example.org:3478",
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def double() -> Iterator[AmsDouble]:
    with AmsDouble(stream_secret=OLD, server_jwt_secret=SERVER_SECRET, settings=CUSTOM) as d:
        yield d


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """SQLite and PostgreSQL, migrated."""
    s = Store(db_url)
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Store]:
    """SQLite only, for the tests whose logic does not depend on the database."""
    s = Store(f"sqlite:///{tmp_path}/x.db")
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def vault() -> Vault:
    return Vault(KEY)


def make_settings(double: AmsDouble, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ams_url": double.url,
        "ams_jwt_secret": OLD,
        "ams_admin_email": DEFAULT_ADMIN_EMAIL,
        "ams_admin_password": DEFAULT_ADMIN_PASSWORD,
        "secret_max_age": MAX_AGE,
        "secret_key": KEY,
        "ams_timeout": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


def mgmt_for(settings: Settings) -> AmsManagement:
    m = build_management(settings)
    assert m is not None
    return m


def rows(store: Store) -> list[StreamSecret]:
    with store.read() as s:
        return list(s.scalars(select(StreamSecret).order_by(StreamSecret.version)))


def states(store: Store) -> dict[int, str]:
    return {r.version: r.state for r in rows(store)}


def job(store: Store) -> Job | None:
    with store.read() as s:
        return s.get(Job, JOB_NAME)


def add_pending(store: Store, vault: Vault, version: int, secret: str) -> None:
    """What a crash right after step 3 (pending committed) leaves behind."""
    with store.write() as s:
        s.add(
            StreamSecret(
                version=version,
                ciphertext=vault.encrypt(secret),
                state="pending",
                created_at=int(time.time()),
            )
        )


def token(secret: str) -> str:
    return mint_join_token(
        room_id=ROOM, user_id="U1", exp=int(time.time()) + 3600, jti="j1", secret=secret
    )


def joins(double: AmsDouble, secret: str) -> bool:
    """Does AMS's publish check take a token signed with ``secret``? (CUSTOM sets a play
    webhook that nobody serves, so the play check is not asked.)"""
    return double.check_join(ROOM, token(secret), "publish")[0]


def settings_posts(double: AmsDouble) -> int:
    return double.count("POST", SETTINGS_PATH)


def logins(double: AmsDouble) -> int:
    return double.count("POST", LOGIN_PATH)


def due(offset: int = 10) -> int:
    """A ``now`` at which the bootstrapped secret is older than MAX_AGE."""
    return int(time.time()) + MAX_AGE + offset


@pytest.fixture
def seeded(double: AmsDouble, store: Store, vault: Vault) -> Settings:
    settings = make_settings(double)
    bootstrap(settings, store, vault, None)
    # The room must exist on AMS: acceptOnlyRoomsInDataStore is on in CUSTOM.
    t = int(time.time())
    with AmsClient(double.url, double.app) as client:
        client.create_room(ROOM, "rotation test", t, t + 3600)
    double.clear_requests()
    return settings


# --------------------------------------------------------------------------- rotation


def test_rotation_changes_only_the_stream_secret(
    double: AmsDouble, store: Store, vault: Vault, seeded: Settings
) -> None:
    mgmt = mgmt_for(seeded)
    assert settle(seeded, store, vault, mgmt) == "in sync: AMS holds version 1"
    before = dict(double.settings)
    assert joins(double, OLD)

    early = rotate(seeded, store, vault, mgmt, owner="r1", now=int(time.time()))
    assert (early.rotated, early.version) == (False, 1)
    assert "old" in early.reason
    assert settings_posts(double) == 0

    seen: list[int] = []
    when = due()  # one instant: a second may pass before the last assertion
    result = rotate(seeded, store, vault, mgmt, owner="r1", now=when, on_rotated=seen.append)
    assert (result.rotated, result.version, seen) == (True, 2, [2])
    after = dict(double.settings)
    new = after.pop(KEYNAME)
    assert new != before.pop(KEYNAME)
    assert after == before, "a field other than jwtStreamSecretKey changed on AMS"
    assert re.fullmatch(r"[A-Za-z0-9_-]{48}", new)
    assert settings_posts(double) == 1

    assert RotatingSecret(store, vault).current() == (2, new)
    assert states(store) == {1: "retired", 2: "current"}
    assert joins(double, RotatingSecret(store, vault).current()[1])
    allowed, why = double.check_join(ROOM, token(OLD))
    assert not allowed and "signature" in why
    j = job(store)
    assert j is not None and j.lease_owner is None and j.last_error is None
    assert j.last_run_at == when


def test_rotation_is_off_without_a_max_age(double: AmsDouble, lite: Store, vault: Vault) -> None:
    settings = make_settings(double, secret_max_age=0)
    bootstrap(settings, lite, vault, None)
    result = rotate(settings, lite, vault, mgmt_for(settings), owner="r1", now=due(10**6))
    assert not result.rotated and "off" in result.reason
    assert double.requests == []


def test_secret_is_encrypted_at_rest_and_never_logged(
    double: AmsDouble, tmp_path: Path, vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = Store(f"sqlite:///{tmp_path}/x.db")
    store.migrate()
    settings = make_settings(double)
    bootstrap(settings, store, vault, None)
    result = rotate(settings, store, vault, mgmt_for(settings), owner="r1", now=due(), force=True)
    assert result.rotated
    new = double.settings[KEYNAME]
    stored = rows(store)
    assert [vault.decrypt(r.ciphertext) for r in stored] == [OLD, new]
    for r in stored:
        assert new not in r.ciphertext and OLD not in r.ciphertext
    with store.read() as s:
        audits = list(s.scalars(select(Audit)))
    assert {a.action for a in audits} == {"seed_secret", "rotate_secret"}
    for a in audits:
        assert new not in a.detail and OLD not in a.detail
    store.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("x.db*"))
    assert new.encode() not in raw and OLD.encode() not in raw
    assert new not in caplog.text and OLD not in caplog.text
    assert "Vault(key=***)" == repr(vault)


# --------------------------------------------------------------------------- crash safety


def test_crash_after_ams_accepted_is_promoted_by_reconcile(
    double: AmsDouble, store: Store, vault: Vault, seeded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("process died before recording the new secret")

    monkeypatch.setattr(ss, "_promote", crash)
    mgmt = mgmt_for(seeded)
    with pytest.raises(RuntimeError):
        rotate(seeded, store, vault, mgmt, owner="r1", now=due(), force=True)
    monkeypatch.undo()
    new = double.settings[KEYNAME]
    assert new != OLD
    assert states(store) == {1: "current", 2: "pending"}
    assert job(store).lease_owner is None  # type: ignore[union-attr]

    seen = RotatingSecret(store, vault)
    assert seen.current() == (1, OLD)  # links minted now would fail: reconcile fixes it
    description = settle(seeded, store, vault, mgmt_for(seeded))
    assert description.startswith("promoted pending version 2")
    assert states(store) == {1: "retired", 2: "current"}
    seen.invalidate()
    assert seen.current() == (2, new)
    assert joins(double, new)


def test_pending_that_ams_never_took_is_dropped(
    double: AmsDouble, store: Store, vault: Vault, seeded: Settings
) -> None:
    add_pending(store, vault, 2, ss.new_secret())
    description = settle(seeded, store, vault, mgmt_for(seeded))
    assert description == "dropped pending version 2: AMS kept version 1"
    assert states(store) == {1: "current"}
    assert double.settings[KEYNAME] == OLD
    assert settings_posts(double) == 0


def test_third_value_on_ams_is_adopted(
    double: AmsDouble,
    store: Store,
    vault: Vault,
    seeded: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_pending(store, vault, 2, ss.new_secret())
    by_hand = "set-by-hand-in-the-ams-console-0123456789"
    double.set_stream_secret(by_hand)
    caplog.set_level(logging.WARNING, logger="meetbot.stream_secret")
    description = settle(seeded, store, vault, mgmt_for(seeded))
    assert "adopted" in description and "version 3" in description
    assert states(store) == {1: "retired", 3: "current"}
    assert RotatingSecret(store, vault).current() == (3, by_hand)
    assert "changed by hand" in caplog.text and by_hand not in caplog.text
    assert settings_posts(double) == 0


def test_hand_change_without_pending_is_adopted(
    double: AmsDouble, lite: Store, vault: Vault
) -> None:
    settings = make_settings(double)
    bootstrap(settings, lite, vault, None)
    by_hand = "another-hand-made-secret-0123456789-xyz"
    double.set_stream_secret(by_hand)
    assert "adopted" in settle(settings, lite, vault, mgmt_for(settings))
    assert RotatingSecret(store=lite, vault=vault).current() == (2, by_hand)


def test_interrupted_rotation_under_a_dead_lease_is_finished_by_the_next_rotation(
    double: AmsDouble, lite: Store, vault: Vault
) -> None:
    settings = make_settings(double)
    bootstrap(settings, lite, vault, None)
    t = int(time.time())
    pending = ss.new_secret()
    add_pending(lite, vault, 2, pending)
    double.set_stream_secret(pending)  # AMS took it, then the replica died
    with lite.write() as s:
        s.add(Job(name=JOB_NAME, lease_owner="dead-replica", lease_until=t + 60, next_run_at=0))

    assert settle(settings, lite, vault, mgmt_for(settings), now=t).startswith("deferred:")
    assert states(lite) == {1: "current", 2: "pending"}
    # The scheduler's next sweep after the lease ran out settles it without a new secret.
    seen: list[int] = []
    result = rotate(
        settings, lite, vault, mgmt_for(settings), owner="r2", now=t + 61, on_rotated=seen.append
    )
    assert (result.rotated, result.version, seen) == (True, 2, [2])
    assert result.reason.startswith("finished an interrupted rotation")
    assert states(lite) == {1: "retired", 2: "current"}
    assert settings_posts(double) == 0


def test_lost_answer_leaves_pending_and_the_next_run_settles_it(
    double: AmsDouble, lite: Store, vault: Vault
) -> None:
    settings = make_settings(double)
    bootstrap(settings, lite, vault, None)
    double.hang_next(1, 0.0, path_regex="/applications/settings/")  # the GET passes
    double.reset_next(1, path_regex="/applications/settings/", after_processing=True)
    t = due()
    result = rotate(settings, lite, vault, mgmt_for(settings), owner="r1", now=t, force=True)
    assert not result.rotated and "may or may not" in result.reason
    assert states(lite) == {1: "current", 2: "pending"}
    assert double.settings[KEYNAME] != OLD  # AMS did take it
    assert job(lite).next_run_at == t + ss.ERROR_BACKOFF_S  # type: ignore[union-attr]
    assert not rotate(settings, lite, vault, mgmt_for(settings), owner="r1", now=t + 1).rotated

    later = rotate(settings, lite, vault, mgmt_for(settings), owner="r2", now=t + 61)
    assert (later.rotated, later.version) == (True, 2)
    assert RotatingSecret(lite, vault).current() == (2, double.settings[KEYNAME])
    assert settings_posts(double) == 1


def test_refused_settings_drop_the_pending_row(
    double: AmsDouble, lite: Store, vault: Vault
) -> None:
    settings = make_settings(double)
    bootstrap(settings, lite, vault, None)
    # Two publish token schemes on: AMS refuses the whole update with success=false.
    double.update_settings(publishTokenControlEnabled=True)
    result = rotate(settings, lite, vault, mgmt_for(settings), owner="r1", now=due(), force=True)
    assert not result.rotated and "did not take" in result.reason
    assert states(lite) == {1: "current"}
    assert double.settings[KEYNAME] == OLD
    assert job(lite).last_error.startswith("rejected:")  # type: ignore[union-attr]


# --------------------------------------------------------------------------- login lockout


def test_login_failure_tries_once_and_pauses_across_processes(
    double: AmsDouble, store: Store, vault: Vault
) -> None:
    settings = make_settings(double, ams_admin_password="wrong-password")
    bootstrap(settings, store, vault, None)
    t = due()
    result = rotate(settings, store, vault, mgmt_for(settings), owner="r1", now=t, force=True)
    assert not result.rotated and "login" in result.reason
    assert logins(double) == 1
    assert settings_posts(double) == 0
    assert states(store) == {1: "current"}  # the pending row was dropped: AMS never saw it
    j = job(store)
    assert j is not None and j.next_run_at == t + 310 and j.lease_owner is None
    assert j.last_error is not None and j.last_error.startswith("login_failed:")
    assert "wrong-password" not in j.last_error

    # A later sweep (or another replica, or a restart: a fresh client) before the
    # pause ends makes no login attempt at all, forced or not.
    for owner, now in (("r1", t + 15), ("r2", t + 300)):
        again = rotate(settings, store, vault, mgmt_for(settings), owner=owner, now=now, force=True)
        assert not again.rotated and "paused" in again.reason
    assert settle(settings, store, vault, mgmt_for(settings), now=t + 30).startswith("deferred")
    assert logins(double) == 1
    assert not double.is_locked(DEFAULT_ADMIN_EMAIL)

    # The same client never logs in again after a refusal (until rebuilt).
    same = mgmt_for(settings)
    with pytest.raises(AmsLoginFailed):
        same.login()
    assert logins(double) == 2
    again = rotate(settings, store, vault, same, owner="r1", now=t + 311)
    assert not again.rotated
    assert logins(double) == 2
    assert not double.is_locked(DEFAULT_ADMIN_EMAIL)


# --------------------------------------------------------------------------- replicas


def test_three_replicas_rotate_exactly_once(double: AmsDouble, store: Store, vault: Vault) -> None:
    settings = make_settings(double)
    bootstrap(settings, store, vault, None)
    t = due()
    start = threading.Barrier(3)
    results: dict[str, ss.RotationResult] = {}
    errors: list[BaseException] = []

    def replica(owner: str) -> None:
        mgmt = mgmt_for(settings)
        try:
            start.wait(5)
            results[owner] = rotate(settings, store, vault, mgmt, owner=owner, now=t)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            mgmt.close()

    threads = [threading.Thread(target=replica, args=(f"replica-{i}",)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert not errors
    assert settings_posts(double) == 1
    assert sorted(r.rotated for r in results.values()) == [False, False, True]
    assert states(store) == {1: "retired", 2: "current"}
    assert RotatingSecret(store, vault).current() == (2, double.settings[KEYNAME])


def test_forced_rotations_that_overlap_rotate_once(
    double: AmsDouble, lite: Store, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forced call that loses the race to another forced call does not rotate again."""
    settings = make_settings(double)
    bootstrap(settings, lite, vault, None)
    real_claim = ss._claim
    t = int(time.time())

    def claim_after_another_rotation(store: Store, owner: str, now: int, **kw: Any) -> bool:
        if owner == "slow":
            fast = rotate(
                settings, lite, vault, mgmt_for(settings), owner="fast", now=now, force=True
            )
            assert fast.rotated
        return real_claim(store, owner, now, **kw)

    monkeypatch.setattr(ss, "_claim", claim_after_another_rotation)
    slow = rotate(settings, lite, vault, mgmt_for(settings), owner="slow", now=t, force=True)
    assert not slow.rotated and "meanwhile" in slow.reason and slow.version == 2
    assert settings_posts(double) == 1
    assert job(lite).lease_owner is None  # type: ignore[union-attr]


def test_claim_honours_lease_and_pauses(store: Store) -> None:
    """The claim itself (not only rotate's read-only pre-check) enforces lease and pause."""
    t = 1_000
    assert ss._claim(store, "a", t, respect_schedule=True)
    assert not ss._claim(store, "b", t + ss.LEASE_S, respect_schedule=True)  # still held
    assert ss._claim(store, "b", t + ss.LEASE_S + 1, respect_schedule=True)  # ran out
    ss._release(store, "b", next_run_at=t + 500, last_error="unavailable: AMS down")
    assert not ss._claim(store, "c", t + 499, respect_schedule=True)
    assert ss._claim(store, "c", t + 499, respect_schedule=False)  # reconcile may ask AMS
    ss._release(store, "c", next_run_at=t + 900, last_error="login_failed: refused")
    assert not ss._claim(store, "d", t + 899, respect_schedule=False)  # but never log in
    ss._release(store, "c", next_run_at=t)  # not the owner any more: ignored
    assert job(store).next_run_at == t + 900  # type: ignore[union-attr]
    assert ss._claim(store, "d", t + 900, respect_schedule=True)


# --------------------------------------------------------------------------- auth, bootstrap


def test_server_jwt_path(double: AmsDouble, lite: Store, vault: Vault) -> None:
    settings = make_settings(
        double, ams_admin_email=None, ams_admin_password=None, ams_server_jwt_secret=SERVER_SECRET
    )
    bootstrap(settings, lite, vault, None)
    result = rotate(settings, lite, vault, mgmt_for(settings), owner="r1", now=due(), force=True)
    assert (result.rotated, result.version) == (True, 2)
    assert logins(double) == 0
    calls = [r for r in double.requests if r.path == SETTINGS_PATH]
    assert [r.method for r in calls] == ["GET", "POST"]
    assert all(r.header("ProxyAuthorization") for r in calls)
    assert all(not (r.header("ProxyAuthorization") or "").startswith("Bearer") for r in calls)

    wrong = make_settings(
        double, ams_admin_email=None, ams_admin_password=None, ams_server_jwt_secret="x" * 40
    )
    refused = rotate(wrong, lite, vault, mgmt_for(wrong), owner="r1", now=due(), force=True)
    assert not refused.rotated and "login" in refused.reason
    assert states(lite) == {1: "retired", 2: "current"}


def test_bootstrap_seeds_from_ams_once(double: AmsDouble, lite: Store, vault: Vault) -> None:
    settings = make_settings(double, ams_jwt_secret=None)
    with pytest.raises(StreamSecretError, match="AMS_JWT_SECRET"):
        bootstrap(settings, lite, vault, None)
    with pytest.raises(NoCurrentSecret):
        RotatingSecret(lite, vault).current()
    bootstrap(settings, lite, vault, mgmt_for(settings))
    bootstrap(settings, lite, vault, mgmt_for(settings))  # not empty: no-op, no AMS call
    assert RotatingSecret(lite, vault).current() == (1, OLD)
    assert double.count("GET", SETTINGS_PATH) == 1


def test_cache_and_versions(double: AmsDouble, lite: Store, vault: Vault) -> None:
    settings = make_settings(double)
    bootstrap(settings, lite, vault, None)
    clock = [0.0]
    source = RotatingSecret(lite, vault, cache_ttl=1.0, clock=lambda: clock[0])
    assert source.current() == (1, OLD)
    assert rotate(settings, lite, vault, mgmt_for(settings), owner="r", now=due(), force=True)
    clock[0] = 0.5
    assert source.current() == (1, OLD)  # cached
    clock[0] = 1.0
    assert source.current() == (2, double.settings[KEYNAME])  # seen within a second
    assert source.get(1) == OLD and source.get(99) is None


def test_vault_refuses_bad_and_wrong_keys(vault: Vault) -> None:
    with pytest.raises(VaultError):
        Vault("not-a-key")
    other = Vault(Fernet.generate_key().decode())
    with pytest.raises(VaultError) as e:
        other.decrypt(vault.encrypt(OLD))
    assert OLD not in str(e.value)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(
    double: AmsDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment of ``meetbot rotate-secret``; root logging restored afterwards."""
    import os

    for name in list(os.environ):
        if name.startswith(("SLACK_", "AMS_", "MEETBOT_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield {
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": "signing-secret-0123456789",
        "AMS_URL": double.url,
        "AMS_JWT_SECRET": OLD,
        "AMS_ADMIN_EMAIL": DEFAULT_ADMIN_EMAIL,
        "AMS_ADMIN_PASSWORD": DEFAULT_ADMIN_PASSWORD,
        "AMS_TIMEOUT": "2",
        "MEETBOT_SECRET_KEY": KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        "MEETBOT_LOG_LEVEL": "DEBUG",
    }
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_rotate_secret(double: AmsDouble, cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["rotate-secret"], env=cli_env)
    assert result.exit_code == 0, result.output
    assert "version 2 is current" in result.stdout
    assert "next sweep" in result.stdout
    new = double.settings[KEYNAME]
    assert new != OLD and new not in result.output and OLD not in result.output
    assert settings_posts(double) == 1

    again = CliRunner().invoke(main, ["rotate-secret"], env=cli_env)
    assert again.exit_code == 0, again.output
    assert "version 3 is current" in again.stdout


def test_cli_seeds_from_ams_without_ams_jwt_secret(
    double: AmsDouble, cli_env: dict[str, str]
) -> None:
    env = dict(cli_env, MEETBOT_SECRET_MAX_AGE="30d")
    del env["AMS_JWT_SECRET"]
    result = CliRunner().invoke(main, ["rotate-secret"], env=env)
    assert result.exit_code == 0, result.output
    assert "version 2 is current" in result.stdout


def test_cli_wrong_password(double: AmsDouble, cli_env: dict[str, str]) -> None:
    env = dict(cli_env, AMS_ADMIN_PASSWORD="wrong-password")
    result = CliRunner().invoke(main, ["rotate-secret"], env=env)
    assert result.exit_code == 1
    assert "not rotated" in result.stderr and "login" in result.stderr
    assert "wrong-password" not in result.output
    assert logins(double) == 1
    assert double.settings[KEYNAME] == OLD
    # Running it again at once does not try to log in again: the pause is shared.
    second = CliRunner().invoke(main, ["rotate-secret"], env=env)
    assert second.exit_code == 1 and "paused" in second.stderr
    assert logins(double) == 1
    assert not double.is_locked(DEFAULT_ADMIN_EMAIL)
