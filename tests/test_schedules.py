"""Team-room schedules against a real Store, the AMS double and the Slack double.

The exactly-once tests run on SQLite and on PostgreSQL (``db_url``): several
"replicas" (each its own engine, Rooms, outbox and Slack client) fire the
same schedules at once, and AMS and Slack must each see one room per run.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from bot.ams.client import AmsClient
from bot.ams.marker import ams_marker
from bot.ams.stream_secret import StaticSecret
from bot.config import Settings
from bot.ops.cli import main
from bot.rooms.links import Links
from bot.rooms.service import Rooms
from bot.schedules.service import (
    FIRE_LEASE_S,
    RETRY_BASE_S,
    OccurrenceState,
    ScheduleError,
    Schedules,
    cancel_schedule,
    schedules_report,
)
from bot.sim.ams import AmsDouble, ManualClock
from bot.sim.slack import SlackDouble
from bot.slack.gateway import SlackGateway
from bot.slack.outbox import OutboxWorker
from bot.slack.pacing import Pacer
from bot.store import Audit, Occurrence, Room, RoomState, Store
from tests.conftest import (
    ADMIN,
    ALICE,
    BOB,
    BOT_TOKEN,
    CAROL,
    SOMEBOT,
    STREAM_SECRET,
    TEAM,
    wait_for,
)

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY = date(2030, 6, 3)  # a Monday, in summer time (UTC+2 in Berlin)
CREATE = r"^/Conference/rest/v2/broadcasts/create$"


def local(day: date, hh: int, mm: int = 0, tz: ZoneInfo = BERLIN) -> int:
    return int(datetime.combine(day, time(hh, mm), tzinfo=tz).timestamp())


@dataclass
class Replica:
    store: Store
    rooms: Rooms
    schedules: Schedules
    outbox: OutboxWorker
    ams: AmsClient


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(local(MONDAY, 8))


@pytest.fixture
def make_replica(
    ams: AmsDouble, slack: SlackDouble, clock: ManualClock
) -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(url: str, *, max_room_ttl: int = 86400) -> Replica:
        settings = Settings(
            ams_url=ams.url,
            slack_bot_token=BOT_TOKEN,
            slack_api_url=slack.api_url,
            ams_jwt_secret=STREAM_SECRET,
            database_url=url,
            max_room_ttl=max_room_ttl,
            ams_timeout=2.0,
        )
        store = Store(url)
        if not made:
            store.migrate()
        client = AmsClient(ams.url, "Conference", timeout=(1.0, 2.0), retries=1, backoff=0.01)
        gateway = SlackGateway(BOT_TOKEN, slack.api_url)
        secret = StaticSecret(STREAM_SECRET)
        links = Links(settings, store, secret)
        outbox = OutboxWorker(
            store,
            gateway,
            links,
            Pacer(
                store, cap=(600, 60), gap=0.0
            ),  # the pace is tested elsewhere, workers=4, poll_interval=0.1
        )
        rooms = Rooms(
            settings, store, client, gateway, secret, links, outbox, owner="rooms", clock=clock
        )
        outbox.start()
        replica = Replica(
            store, rooms, Schedules(settings, store, rooms, gateway, clock=clock), outbox, client
        )
        made.append(replica)
        return replica

    yield make
    for r in made:
        r.outbox.stop()
        r.ams.close()
        r.store.dispose()


@pytest.fixture
def one(sqlite_url: str, make_replica) -> Replica:
    return make_replica(sqlite_url)


def channel_posts(slack: SlackDouble, channel: str = "C1") -> list:
    return [
        c for c in slack.calls_to("chat.postMessage") if c.args.get("channel") == channel and c.ok
    ]


def rooms_on_ams(ams: AmsDouble) -> list[dict]:
    return [b for b in ams.broadcasts.values() if not b.get("mainTrackStreamId")]


def standup(r: Replica, when: str = "every weekday at 09:30", **kw):
    args = dict(
        team_id=TEAM,
        channel_id="C1",
        creator_id=ALICE,
        name="standup",
        when_text=when,
        duration=900,
        invitees=[BOB],
    )
    args.update(kw)
    return r.schedules.create(**args)


# -- create, list, cancel ---------------------------------------------------------------


def test_create_list_and_cancel_with_permission_checks(one: Replica) -> None:
    s = standup(one)
    assert s.id and s.active and s.tz == "Europe/Berlin"
    assert s.next_run_at == local(MONDAY, 9, 30)
    assert [x.id for x in one.schedules.list_for_channel(TEAM, "C1")] == [s.id]
    assert one.schedules.list_for_channel(TEAM, "C2") == []
    text = one.schedules.channel_text(TEAM, "C1")
    assert "*standup*" in text and f"`{s.id}`" in text
    assert "every weekday at 09:30 (Europe/Berlin)" in text
    assert f"<!date^{local(MONDAY, 9, 30)}^" in text and f"<@{BOB}>" in text

    refused = one.schedules.cancel(TEAM, str(s.id), BOB)
    assert f"Only <@{ALICE}>" in refused
    assert one.schedules.get(s.id).active
    assert "don't know" in one.schedules.cancel("T_OTHER", str(s.id), ALICE)
    assert "not a schedule id" in one.schedules.cancel(TEAM, "abc", ALICE)

    assert "Stopped" in one.schedules.cancel(TEAM, str(s.id), ALICE)
    assert one.schedules.list_for_channel(TEAM, "C1") == []
    assert "not scheduled any more" in one.schedules.cancel(TEAM, str(s.id), ALICE)
    actions = [a.action for a in one.store.audit_rows()]
    assert actions.count("schedule") == 1 and actions.count("unschedule") == 1


def test_a_workspace_admin_may_cancel_and_the_cli_too(one: Replica) -> None:
    a = standup(one)
    b = standup(one, name="retro", when="every fri at 16:00")
    assert "Stopped" in one.schedules.cancel(TEAM, a.id, ADMIN)
    row = cancel_schedule(one.store, b.id, actor="cli", at=1)
    assert row is not None and row.name == "retro"
    assert cancel_schedule(one.store, b.id, actor="cli", at=2) is None
    with one.store.read() as s:
        audit = [x for x in s.query(Audit).all() if x.action == "unschedule"]
    assert sorted(x.actor for x in audit) == sorted([ADMIN, "cli"])
    assert "No active schedules." in schedules_report(one.store)
    report = schedules_report(one.store, include_inactive=True)
    assert "standup" in report and "retro" in report and "stopped" in report


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"invitees": [SOMEBOT]}, "is a bot"),
        ({"invitees": ["UNOBODY01"]}, "can't find"),
        ({"when_text": "at 25:00"}, "not a time of day"),
        ({"when_text": "at 2030-06-02 10:00"}, "in the past"),
        ({"when_text": 'cron "* * * * *"'}, "at most once every"),
        ({"duration": 90000}, "at most 1d"),
        ({"name": "  "}, "needs a name"),
    ],
)
def test_create_refuses_with_a_clear_message(one: Replica, kw: dict, fragment: str) -> None:
    with pytest.raises(ScheduleError) as err:
        standup(one, **kw)
    assert fragment in err.value.user_message
    assert one.schedules.list_all() == []


def test_time_zone_comes_from_users_info(one: Replica, slack: SlackDouble) -> None:
    slack.add_user("UNEWYORK1", "nina", tz="America/New_York")
    ny = standup(one, creator_id="UNEWYORK1", when="every day at 09:00", invitees=[])
    berlin = standup(one, when="every day at 09:00", invitees=[])
    assert ny.tz == "America/New_York"
    ny_local = datetime.fromtimestamp(ny.next_run_at, ZoneInfo("America/New_York"))
    assert (ny_local.hour, ny_local.minute) == (9, 0)
    assert berlin.next_run_at == local(MONDAY, 9)
    assert ny.next_run_at - berlin.next_run_at == 6 * 3600  # EDT vs CEST in June


def test_default_duration_is_the_room_ttl(one: Replica) -> None:
    s = standup(one, duration=None)
    assert s.duration == one.schedules.settings.room_ttl == 3600


# -- firing -----------------------------------------------------------------------------


def test_fire_due_opens_the_room_posts_the_card_and_dms_everyone(
    one: Replica, ams: AmsDouble, slack: SlackDouble, clock: ManualClock
) -> None:
    s = standup(one, invitees=[BOB, CAROL])
    assert one.schedules.fire_due("a") == 0  # 08:00: not due yet
    clock.set(local(MONDAY, 9, 30) + 5)
    assert one.schedules.fire_due("a") == 1
    (occ,) = one.schedules.occurrences(s.id)
    assert occ.state == OccurrenceState.FIRED and occ.run_at == local(MONDAY, 9, 30)
    room = one.store.room(occ.room_id)
    assert room.state == RoomState.ACTIVE and room.schedule_id == s.id
    assert room.owner_id == ALICE and room.channel_id == "C1" and room.topic == "standup"
    assert room.expires_at - room.created_at == 900
    assert [b["streamId"] for b in rooms_on_ams(ams)] == [occ.room_id]
    wait_for(lambda: len(channel_posts(slack)) == 1)
    for user in (ALICE, BOB, CAROL):
        wait_for(lambda u=user: slack.dms_to(u))
    assert one.schedules.get(s.id).next_run_at == local(MONDAY + timedelta(days=1), 9, 30)
    assert one.schedules.fire_due("a") == 0


def test_a_one_off_fires_once_and_then_is_finished(one: Replica, clock: ManualClock) -> None:
    s = standup(one, when="at 10:00")
    clock.set(local(MONDAY, 10))
    assert one.schedules.fire_due("a") == 1
    done = one.schedules.get(s.id)
    assert not done.active and done.next_run_at is None and done.cancelled_at is None
    clock.advance(86400)
    assert one.schedules.fire_due("a") == 0


def test_concurrent_replicas_fire_each_run_exactly_once(
    db_url: str,
    make_replica,
    ams: AmsDouble,
    slack: SlackDouble,
    clock: ManualClock,
) -> None:
    replicas = [make_replica(db_url) for _ in range(3)]
    made = [
        standup(replicas[0], name=name, when="every day at 09:00")
        for name in ("standup", "design", "ops", "sales", "infra")
    ]
    clock.set(local(MONDAY, 9) + 20)
    barrier = threading.Barrier(3)
    fired = [0, 0, 0]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(4):  # limit=1: the replicas interleave instead of one taking all
                fired[i] += replicas[i].schedules.fire_due(f"replica-{i}", limit=1)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sum(fired) == 5
    assert ams.count("POST", CREATE) == 5
    assert len(rooms_on_ams(ams)) == 5
    for s in made:
        (occ,) = replicas[0].schedules.occurrences(s.id)
        assert occ.state == OccurrenceState.FIRED
    wait_for(lambda: len(channel_posts(slack)) == 5)
    wait_for(lambda: len(slack.dms_to(BOB)) == 5 and len(slack.dms_to(ALICE)) == 5)
    for r in replicas:  # nothing left over for later passes either
        assert r.schedules.fire_due("late", now=local(MONDAY, 9, 10)) == 0
    assert ams.count("POST", CREATE) == 5
    assert len(channel_posts(slack)) == 5 and len(slack.dms_to(ALICE)) == 5


def test_missed_run_fires_within_one_room_length_and_is_skipped_after(
    one: Replica, ams: AmsDouble, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    short = standup(one, name="short", when="every day at 09:00", duration=900)
    long = standup(one, name="long", when="every day at 09:00", duration=1800)
    clock.set(local(MONDAY, 9, 20))  # the bot was down from 08:59 to 09:20
    with caplog.at_level(logging.WARNING, logger="meetbot.schedules"):
        assert one.schedules.fire_due("a") == 1
    (skipped,) = one.schedules.occurrences(short.id)
    (fired,) = one.schedules.occurrences(long.id)
    assert skipped.state == OccurrenceState.SKIPPED and fired.state == OccurrenceState.FIRED
    assert one.store.room(skipped.room_id) is None
    assert [b["streamId"] for b in rooms_on_ams(ams)] == [fired.room_id]
    assert any("missed" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # Both carry on with tomorrow's run.
    tomorrow = local(MONDAY + timedelta(days=1), 9)
    assert one.schedules.get(short.id).next_run_at == tomorrow
    assert one.schedules.get(long.id).next_run_at == tomorrow


def test_days_of_downtime_never_fire_a_burst(
    one: Replica, ams: AmsDouble, clock: ManualClock
) -> None:
    s = standup(one, when="every day at 09:00", duration=900)
    friday = MONDAY + timedelta(days=4)
    clock.set(local(friday, 9, 5))  # down since Monday 08:00
    assert one.schedules.fire_due("a") == 1
    states = [(o.run_at, o.state) for o in one.schedules.occurrences(s.id)]
    assert states == [
        (local(MONDAY, 9), OccurrenceState.SKIPPED),
        (local(friday, 9), OccurrenceState.FIRED),
    ]
    assert ams.count("POST", CREATE) == 1
    assert one.schedules.get(s.id).next_run_at == local(friday + timedelta(days=1), 9)
    assert one.schedules.fire_due("a") == 0

    # Down again, and this time even the newest run is older than a room-length.
    s2 = standup(one, name="late", when="every day at 09:00", duration=900)
    clock.set(local(friday + timedelta(days=3), 11))
    one.schedules.fire_due("a")
    assert [o.state for o in one.schedules.occurrences(s2.id)] == [OccurrenceState.SKIPPED]
    assert one.schedules.get(s2.id).next_run_at == local(friday + timedelta(days=4), 9)


def test_a_crash_between_claim_and_fire_is_fired_once_after_the_lease(
    db_url: str,
    make_replica,
    ams: AmsDouble,
    slack: SlackDouble,
    clock: ManualClock,
) -> None:
    dead, live = make_replica(db_url), make_replica(db_url)
    s = standup(live)
    t = local(MONDAY, 9, 30)
    clock.set(t)
    (occ_id,) = dead.schedules.claim_due("dead-replica")  # ... and then it died
    assert live.schedules.fire_due("live", now=t + 10) == 0  # the lease still holds
    assert ams.count("POST", CREATE) == 0
    clock.set(t + FIRE_LEASE_S + 1)
    assert live.schedules.fire_due("live") == 1
    (occ,) = live.schedules.occurrences(s.id)
    assert occ.id == occ_id and occ.state == OccurrenceState.FIRED
    assert [b["streamId"] for b in rooms_on_ams(ams)] == [occ.room_id]
    assert live.schedules.fire_due("live") == 0
    assert ams.count("POST", CREATE) == 1
    wait_for(lambda: len(channel_posts(slack)) == 1)


def test_a_retry_after_ams_created_the_room_makes_no_second_one(
    one: Replica, ams: AmsDouble, slack: SlackDouble, clock: ManualClock
) -> None:
    standup(one)
    t = local(MONDAY, 9, 30)
    clock.set(t)
    (occ_id,) = one.schedules.claim_due("dead")
    with one.store.read() as s:
        room_id = s.get(Occurrence, occ_id).room_id
    # The dead replica got as far as: room row written, AMS room created.
    with one.store.write() as tx:
        tx.add(
            Room(
                id=room_id,
                team_id=TEAM,
                owner_id=ALICE,
                channel_id="C1",
                topic="standup",
                state=RoomState.CREATING,
                created_at=t,
                expires_at=t + 900,
                attempts=0,
                next_attempt_at=0,
            )
        )
    marker = ams_marker(TEAM, one.store.deployment_id())
    one.ams.create_room(room_id, "standup", t, t + 900, metadata=marker)
    clock.set(t + FIRE_LEASE_S + 1)
    assert one.schedules.fire_due("live") == 1
    assert [b["streamId"] for b in rooms_on_ams(ams)] == [room_id]
    assert one.store.room(room_id).state == RoomState.ACTIVE
    assert {g.user_id for g in one.store.grants_of(room_id)} == {ALICE, BOB}
    wait_for(lambda: len(channel_posts(slack)) == 1)


def test_a_retry_after_the_room_opened_but_before_the_occurrence_was_marked(
    one: Replica, ams: AmsDouble, slack: SlackDouble, clock: ManualClock
) -> None:
    s = standup(one)
    t = local(MONDAY, 9, 30)
    clock.set(t)
    assert one.schedules.fire_due("first") == 1
    (occ,) = one.schedules.occurrences(s.id)
    with one.store.write() as tx:  # as if the process died before marking it fired
        tx.execute(
            update(Occurrence)
            .where(Occurrence.id == occ.id)
            .values(state=OccurrenceState.PENDING, lease_owner="first", lease_until=t + 5)
        )
    clock.set(t + 60)
    assert one.schedules.fire_due("second") == 1
    assert one.schedules.occurrences(s.id)[0].state == OccurrenceState.FIRED
    assert ams.count("POST", CREATE) == 1
    wait_for(lambda: len(channel_posts(slack)) == 1)
    assert len(one.store.grants_of(occ.room_id)) == 2


def test_ams_refusal_is_retried_with_backoff_within_the_window(
    one: Replica, ams: AmsDouble, clock: ManualClock
) -> None:
    s = standup(one)
    t = local(MONDAY, 9, 30)
    clock.set(t)
    ams.fail_next(1, status=500, path_regex="broadcasts/create")
    assert one.schedules.fire_due("a") == 0
    (occ,) = one.schedules.occurrences(s.id)
    assert occ.state == OccurrenceState.FAILED and occ.error and occ.attempts == 1
    first_room = occ.room_id
    assert one.store.room(first_room).state == RoomState.FAILED
    assert one.schedules.fire_due("a", now=t + RETRY_BASE_S - 5) == 0  # backing off
    clock.set(t + RETRY_BASE_S + 1)
    assert one.schedules.fire_due("a") == 1
    (occ,) = one.schedules.occurrences(s.id)
    assert occ.state == OccurrenceState.FIRED and occ.room_id != first_room
    assert [b["streamId"] for b in rooms_on_ams(ams)] == [occ.room_id]


def test_a_room_that_did_not_open_on_time_is_said_once_in_its_channel(
    one: Replica, ams: AmsDouble, slack: SlackDouble, clock: ManualClock
) -> None:
    """The team waits in the channel for the card: it hears the room is late, once."""
    from tests.conftest import wait_for

    s = standup(one)
    t = local(MONDAY, 9, 30)
    clock.set(t)
    ams.fail_next(2, status=500, path_regex="broadcasts/create")  # the first try and one retry
    assert one.schedules.fire_due("a") == 0
    (notice,) = channel_posts(slack)
    text = notice.args["text"]
    assert "*standup*" in text and "did not open" in text and "keep trying" in text
    assert ams.url not in text and "http" not in text  # a reason, not a link or a host
    clock.set(t + RETRY_BASE_S + 1)
    assert one.schedules.fire_due("a") == 0  # failed again: nothing more said
    assert len(channel_posts(slack)) == 1
    clock.set(t + 3 * RETRY_BASE_S + 2)
    assert one.schedules.fire_due("a") == 1
    (occ,) = one.schedules.occurrences(s.id)
    assert occ.state == OccurrenceState.FIRED
    wait_for(lambda: len(channel_posts(slack)) == 2)  # and then the room's card
    assert occ.room_id in json.dumps(channel_posts(slack)[1].args)


def test_a_failed_run_is_given_up_after_one_room_length(
    one: Replica, ams: AmsDouble, clock: ManualClock
) -> None:
    s = standup(one)
    t = local(MONDAY, 9, 30)
    clock.set(t)
    ams.fail_next(1, status=500, path_regex="broadcasts/create")
    one.schedules.fire_due("a")
    clock.set(t + 900 + 1)
    assert one.schedules.fire_due("a") == 0
    assert [o.state for o in one.schedules.occurrences(s.id)] == [OccurrenceState.FAILED]
    assert rooms_on_ams(ams) == []


def test_an_invitee_who_became_a_bot_does_not_cancel_the_room(
    one: Replica, slack: SlackDouble, clock: ManualClock
) -> None:
    s = standup(one, invitees=[BOB, CAROL])
    slack.add_user(CAROL, "carol", deleted=True)
    one.schedules.slack._users.clear()  # forget the cached users.info
    clock.set(local(MONDAY, 9, 30))
    assert one.schedules.fire_due("a") == 1
    (occ,) = one.schedules.occurrences(s.id)
    assert {g.user_id for g in one.store.grants_of(occ.room_id)} == {ALICE, BOB}


def test_a_stopped_schedule_does_not_fire_its_claimed_run(
    one: Replica, ams: AmsDouble, clock: ManualClock
) -> None:
    s = standup(one)
    t = local(MONDAY, 9, 30)
    clock.set(t)
    one.schedules.claim_due("dead")
    one.schedules.cancel(TEAM, s.id, ALICE)
    clock.set(t + FIRE_LEASE_S + 1)
    assert one.schedules.fire_due("live") == 0
    assert [o.state for o in one.schedules.occurrences(s.id)] == [OccurrenceState.SKIPPED]
    assert rooms_on_ams(ams) == []


def test_cli_lists_and_cancels(one: Replica, sqlite_url: str, ams: AmsDouble) -> None:
    s = standup(one)
    env = {
        "AMS_URL": ams.url,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": "x" * 32,
        "AMS_JWT_SECRET": STREAM_SECRET,
        "DATABASE_URL": sqlite_url,
    }
    runner = CliRunner()
    table = runner.invoke(main, ["schedules"], env=env)
    assert table.exit_code == 0, table.output
    assert "standup" in table.output and "every weekday at 09:30 (Europe/Berlin)" in table.output
    listed = json.loads(runner.invoke(main, ["schedules", "--json"], env=env).output)
    assert [(r["id"], r["name"], r["invitees"]) for r in listed] == [(s.id, "standup", [BOB])]
    done = runner.invoke(main, ["schedules", "cancel", str(s.id)], env=env)
    assert done.exit_code == 0 and "Stopped schedule" in done.output
    again = runner.invoke(main, ["schedules", "cancel", str(s.id)], env=env)
    assert again.exit_code == 1
    assert [a.actor for a in one.store.audit_rows() if a.action == "unschedule"] == ["cli"]
