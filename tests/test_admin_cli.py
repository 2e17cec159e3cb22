"""The operator CLI (`meetbot rooms | rooms end | link | db upgrade`) on a temp SQLite.

Rooms are made through the real `Rooms` against the AMS and Slack doubles, so
`rooms end` is checked end to end: gone from AMS, revoked in the database,
audited as "cli", and the DMs edited to say the room ended.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jwt
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from bot.config import load_settings
from bot.ops.admin import send_owed_edits
from bot.ops.cli import main
from bot.rooms.service import OpenRequest
from bot.services import Services
from bot.store import Audit, Grant, Room, RoomState, Store
from tests.conftest import (
    ADMIN,
    ALICE,
    BOB,
    BOT_TOKEN,
    CAROL,
    DAVE,
    SIGNING_SECRET,
    STREAM_SECRET,
    TEAM,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
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
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'meetbot.db'}"
    store = Store(url)
    store.migrate()
    store.dispose()
    return url


@pytest.fixture
def env(monkeypatch, ams, slack, db_url) -> dict:
    values = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "AMS_URL": ams.url,
        "AMS_JWT_SECRET": STREAM_SECRET,
        "AMS_TIMEOUT": "2",
        "DATABASE_URL": db_url,
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def ops(env):
    built = Services(load_settings(env), owner="cli:test")
    yield built
    built.stop()


_channels = iter(range(100, 10_000))


def open_room(ops, slack, topic: str, *invitees: str, owner: str = ALICE) -> str:
    """A room as /meet makes it, with its DMs and card actually sent.

    Each in a channel of its own (and tests vary the people): Slack's pace of
    one message a second per channel would otherwise make the test wait.
    """
    channel = f"C{next(_channels)}"
    slack.add_channel(channel, channel.lower(), members=[owner, *invitees])
    room = ops.rooms.open_room(
        OpenRequest(team_id=TEAM, user_id=owner, channel_id=channel, topic=topic, invitees=invitees)
    )
    assert room is not None
    send_owed_edits(ops, [room.id], progress=False)
    return room.id


def cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_rooms_lists_open_rooms_as_an_aligned_table(ops, slack):
    first = open_room(ops, slack, "standup", BOB)
    second = open_room(
        ops, slack, "a much longer topic for the planning meeting", DAVE, ADMIN, owner=CAROL
    )
    result = cli("rooms")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = lines[0]
    assert header.split()[:5] == ["ROOM", "STATE", "OWNER", "CHANNEL", "PEOPLE"]
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert set(rows) == {first, second}
    # Columns line up: every row's STATE starts where the header's does.
    col = header.index("STATE")
    assert all(line[col:].startswith("active") for line in rows.values())
    assert "3" in rows[second].split() and "2 room(s)" in result.stdout


def test_rooms_json_for_scripts(ops, slack):
    room_id = open_room(ops, slack, "standup", BOB)
    result = cli("rooms", "--json")
    assert result.exit_code == 0
    (row,) = json.loads(result.stdout)
    assert row["id"] == room_id and row["state"] == "active" and row["people"] == 2
    assert row["owner_id"] == ALICE and row["expires"].endswith("+00:00")


def test_rooms_end_revokes_audits_and_edits_the_dms(ops, ams, slack):
    room_id = open_room(ops, slack, "standup", BOB)
    updates_before = len(slack.calls_to("chat.update"))
    result = cli("rooms", "end", room_id)
    assert result.exit_code == 0, result.output
    assert f"✓ {room_id}: ended" in result.stdout
    assert room_id not in ams.broadcasts
    assert ops.store.room(room_id).state == RoomState.REVOKED
    audit = [a for a in ops.store.audit_rows(room_id) if a.action == "revoke"]
    assert [a.actor for a in audit] == ["cli"]
    # The two DMs and the channel card now say the room ended.
    updates = slack.calls_to("chat.update")[updates_before:]
    assert len(updates) == 3 and all(c.ok for c in updates)
    for user in (ALICE, BOB):
        assert "ended" in slack.dms_to(user)[-1]["text"].lower()
    # And `rooms --all` shows it, `rooms` no longer does.
    assert room_id not in cli("rooms").stdout
    assert room_id in cli("rooms", "--all").stdout


def test_rooms_end_unknown_or_ended_room_exits_1(ops, slack):
    room_id = open_room(ops, slack, "standup")
    assert cli("rooms", "end", room_id).exit_code == 0
    again = cli("rooms", "end", room_id, "nosuchroom")
    assert again.exit_code == 1
    assert "not active (state revoked)" in again.stdout and "no such room" in again.stdout


def test_rooms_end_when_ams_is_down_keeps_the_room_due(ops, slack, ams):
    room_id = open_room(ops, slack, "standup")
    # 503s rather than a stopped double: a freed port may be taken by another process.
    ams.fail_next(100, status=503, path_regex=rf"/broadcasts/{room_id}")
    result = cli("rooms", "end", room_id)
    assert result.exit_code == 1, result.output
    assert "AMS did not confirm" in result.stdout
    assert ops.store.room(room_id).state == RoomState.ACTIVE
    assert room_id in ams.broadcasts


def test_rooms_end_all_expired_with_a_progress_bar(ops, ams, slack):
    expired = [open_room(ops, slack, f"old {u}", owner=u) for u in (ALICE, CAROL, DAVE)]
    fresh = open_room(ops, slack, "still running", owner=BOB)
    with ops.store.write() as tx:
        tx.execute(sa.update(Room).where(Room.id.in_(expired)).values(expires_at=1000))
    result = cli("rooms", "end", "--all-expired")
    assert result.exit_code == 0, result.output
    assert "Ending rooms" in result.stderr
    for room_id in expired:
        assert ops.store.room(room_id).state == RoomState.REVOKED
        assert room_id not in ams.broadcasts
    assert ops.store.room(fresh).state == RoomState.ACTIVE


def test_rooms_end_all_asks_first(ops, slack):
    room_id = open_room(ops, slack, "standup")
    refused = cli("rooms", "end", "--all", input="n\n")
    assert refused.exit_code == 1
    assert ops.store.room(room_id).state == RoomState.ACTIVE
    done = cli("rooms", "end", "--all", "--yes", "--json")
    assert done.exit_code == 0
    assert json.loads(done.stdout)["results"] == [
        {"room_id": room_id, "ok": True, "message": "ended"}
    ]


def test_rooms_end_needs_exactly_one_selection(env):
    assert cli("rooms", "end").exit_code == 2
    assert cli("rooms", "end", "abc", "--all-expired").exit_code == 2


def test_link_reuses_the_grant_and_audits(ops, slack, caplog):
    room_id = open_room(ops, slack, "standup", BOB)
    (grant,) = [g for g in ops.store.grants_of(room_id) if g.user_id == BOB]
    caplog.set_level(logging.DEBUG)
    result = cli("link", room_id, "--user", BOB)
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith(f"{ops.settings.ams_url}/Conference/{room_id}?token=")
    token = url.split("token=", 1)[1].split("&", 1)[0]
    claims = jwt.decode(token, STREAM_SECRET, algorithms=["HS256"])
    assert claims["sub"] == BOB and claims["jti"] == grant.jti and claims["exp"] == grant.exp
    assert token not in result.stderr and token not in caplog.text
    links = [a for a in ops.store.audit_rows(room_id) if a.action == "link"]
    assert [a.actor for a in links] == ["cli"]
    assert json.loads(links[0].detail)["user"] == BOB


def test_link_creates_a_grant_for_someone_new(ops, slack):
    room_id = open_room(ops, slack, "standup")
    slack.join_channel(ops.store.room(room_id).channel_id, DAVE)  # a member of its channel
    result = cli("link", room_id, "--user", DAVE.lower(), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["user"] == DAVE
    grants = {g.user_id: g for g in ops.store.grants_of(room_id)}
    assert DAVE in grants
    token = data["link"].split("token=", 1)[1].split("&", 1)[0]
    claims = jwt.decode(token, STREAM_SECRET, algorithms=["HS256"])
    assert claims["jti"] == grants[DAVE].jti


def test_link_refusals(ops, slack):
    room_id = open_room(ops, slack, "standup", BOB)
    with ops.store.write() as tx:
        tx.execute(
            sa.update(Grant)
            .where(Grant.room_id == room_id, Grant.user_id == BOB)
            .values(revoked_at=1)
        )
    removed = cli("link", room_id, "--user", BOB)
    assert removed.exit_code == 1 and "was removed" in removed.output
    assert cli("link", "nosuchroom", "--user", BOB).exit_code == 1
    assert cli("link", room_id, "--user", "bob").exit_code == 2
    cli("rooms", "end", room_id)
    ended = cli("link", room_id, "--user", ALICE)
    assert ended.exit_code == 1 and "not active" in ended.output
    with ops.store.read() as s:
        assert s.scalar(sa.select(sa.func.count()).where(Audit.action == "link")) == 0


def test_db_upgrade_creates_and_is_idempotent(monkeypatch, tmp_path, env):
    from alembic.script import ScriptDirectory

    from bot.store import alembic_config

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = sa.create_engine(url)
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    engine.dispose()
    for _ in range(2):
        result = cli("db", "upgrade")
        assert result.exit_code == 0, result.output
        assert f"at {head} (head)" in result.stdout


def test_commands_refuse_a_missing_sqlite_file(monkeypatch, tmp_path, env):
    missing = tmp_path / "typo.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")
    result = cli("rooms")
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not missing.exists()


def test_commands_need_a_valid_configuration(monkeypatch, env):
    monkeypatch.delenv("AMS_URL")
    result = cli("rooms")
    assert result.exit_code == 2
    assert "AMS_URL is required" in result.output


def test_link_signs_with_the_stored_secret_when_secrets_are_stored(monkeypatch, ops, slack):
    """With MEETBOT_SECRET_KEY the bot signs with the stored current secret, so must `link`."""
    from cryptography.fernet import Fernet

    from bot.ams.stream_secret import Vault

    room_id = open_room(ops, slack, "standup")
    key = Fernet.generate_key().decode()
    stored = "rotated-stream-secret-0123456789-0123456789"
    with ops.store.engine.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO stream_secrets (version, ciphertext, state, created_at, activated_at)"
                " VALUES (7, :c, 'current', 1, 1)"
            ),
            {"c": Vault(key).encrypt(stored)},
        )
    monkeypatch.setenv("MEETBOT_SECRET_KEY", key)
    result = cli("link", room_id, "--user", ALICE)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().split("token=", 1)[1].split("&", 1)[0]
    assert jwt.decode(token, stored, algorithms=["HS256"])["sub"] == ALICE
    assert stored not in result.output


def test_reconcile_command_removes_a_stray_bot_room(tmp_path, ams, slack):
    """`meetbot reconcile` does now what the bot does every few minutes."""
    from click.testing import CliRunner

    from bot.ams.client import AmsClient
    from bot.ams.marker import ams_marker
    from bot.ops.cli import main
    from bot.store import Store
    from tests.conftest import bot_env

    env = bot_env(ams, slack, f"sqlite:///{tmp_path}/x.db")
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    deployment = Store(env["DATABASE_URL"]).deployment_id(create=False)
    assert deployment  # made by the migration, once
    client = AmsClient(ams.url, "Conference")
    client.create_room("stray-room", "left behind", 0, 0, metadata=ams_marker("T0001", deployment))
    client.create_room("not-ours", "someone else's", 0, 0)
    # Another meetbot's stray, and one from before deployments had an identity: not ours.
    client.create_room("staging-room", "theirs", 0, 0, metadata=ams_marker("T0001", "0" * 16))
    client.create_room("legacy-room", "old", 0, 0, metadata='{"meetbot":1,"team":"T0001"}')
    result = runner.invoke(main, ["reconcile", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"removed": ["stray-room"]' in result.output
    assert set(ams.broadcasts) == {"not-ours", "staging-room", "legacy-room"}
