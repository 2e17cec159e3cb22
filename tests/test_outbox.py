"""The outbox worker against the Slack double: recovery, retries, pacing, hand-back."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.slack.gateway import SlackGateway
from bot.slack.outbox import OutboxWorker, Rendered
from bot.slack.pacing import Pacer
from bot.store import Grant, Outbox, OutboxState, Room, RoomState, SlackPace, Store, now
from tests.conftest import BOB, BOT_TOKEN, CAROL
from tests.helpers import pending_row

CAP = (600, 60)  # Slack's workspace cap, far above what these tests send


class Card:
    """Renders every row as one short message carrying its outbox id, like Rooms does."""

    def render(self, row: Outbox) -> Rendered:
        meta = {"event_type": "meetbot_outbox", "event_payload": {"outbox_id": row.id}}
        return Rendered(text=f"hello {row.id}", blocks=[], metadata=meta)

    def render_many(self, rows):
        return [self.render(r) for r in rows]


class EditCard(Card):
    """Renders like Card, and a DM edit as an edit of Bob's first DM."""

    def __init__(self, slack) -> None:
        self.slack = slack

    def render(self, row: Outbox) -> Rendered:
        if row.kind == "dm_update":
            (first,) = self.slack.dms_to(BOB)
            return Rendered(text="ended", blocks=[], edit_ts=first["ts"])
        return super().render(row)


@pytest.fixture
def store(sqlite_url):
    s = Store(sqlite_url)
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def worker(store, slack):
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=2, owner="w1", lease=1)
    yield w
    w.stop()


def add_row(store, channel, kind="dm_link"):
    with store.write() as tx:
        row = pending_row(channel, kind)
        tx.add(row)
        tx.flush()
        return row.id


def drain(worker, store):
    for _ in range(50):
        rows = store.claim_outbox(worker.owner, at=now() + 3600, lease=1, limit=10)
        if not rows:
            return
        for r in rows:
            worker.send(r)


def test_a_dm_posted_by_a_dead_worker_is_found_not_sent_again(store, worker, slack):
    row_id = add_row(store, BOB)
    # A first worker claimed the row, Slack accepted the post, then it died.
    (row,) = store.claim_outbox("dead", at=now(), lease=1, limit=1)
    SlackGateway(BOT_TOKEN, slack.api_url).post(
        BOB,
        "hello",
        [],
        metadata={"event_type": "meetbot_outbox", "event_payload": {"outbox_id": row_id}},
    )
    drain(worker, store)
    assert len(slack.dms_to(BOB)) == 1
    (done,) = [r for r in _all(store) if r.id == row_id]
    assert done.state == OutboxState.DONE and done.result_ts == slack.dms_to(BOB)[0]["ts"]


def _all(store):
    from sqlalchemy import select

    with store.read() as s:
        return list(s.scalars(select(Outbox)))


def test_a_first_attempt_does_not_read_history(store, worker, slack):
    add_row(store, CAROL)
    drain(worker, store)
    assert len(slack.dms_to(CAROL)) == 1
    assert slack.calls_to("conversations.history") == []


def test_permanent_errors_fail_the_row_and_transient_ones_retry(store, worker, slack):
    slack.fail("chat.postMessage", "cannot_dm_bot", channel=BOB, times=None)
    slack.fail("chat.postMessage", "internal_error", status=500, channel=CAROL, times=1)
    bob, carol = add_row(store, BOB), add_row(store, CAROL)
    drain(worker, store)
    rows = {r.id: r for r in _all(store)}
    assert rows[bob].state == OutboxState.FAILED and rows[bob].error == "cannot_dm_bot"
    assert rows[carol].state == OutboxState.DONE
    assert len(slack.dms_to(CAROL)) == 1


def test_stop_hands_back_claimed_rows(store, slack):
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w2", lease=600
    )
    add_row(store, BOB)
    store.claim_outbox("w2", at=now(), lease=600, limit=10)
    w.stop()
    (row,) = _all(store)
    assert row.state == OutboxState.PENDING and row.lease_owner is None


def counted_at(slack, channel: str) -> list[float]:
    """When Slack counted each post it accepted to ``channel``, in order."""
    return sorted(
        c.at for c in slack.calls_to("chat.postMessage") if c.ok and c.args["channel"] == channel
    )


def test_paced_posts_wait_off_the_workers_and_keep_to_the_channel_limit(store, slack):
    from tests.conftest import wait_for

    slack.per_channel_rate = 1.0  # one post per second per channel, 429 past it
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store,
        gateway,
        Card(),
        Pacer(store, cap=CAP),
        workers=1,
        owner="w3",
        lease=30,
        poll_interval=0.2,
    )
    w.start()
    try:
        for _ in range(3):
            add_row(store, BOB)
        w.kick()
        wait_for(lambda: len(slack.dms_to(BOB)) >= 1)
        add_row(store, CAROL)
        w.kick()
        # The only worker is not asleep on BOB's next slots: CAROL's DM goes out meanwhile.
        wait_for(lambda: len(slack.dms_to(CAROL)) == 1, timeout=0.9)
        assert len(slack.dms_to(BOB)) == 1
        wait_for(lambda: len(slack.dms_to(BOB)) == 3, timeout=10)
    finally:
        w.stop()
    assert slack.ratelimited_count == 0
    times = counted_at(slack, BOB)
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:]))
    assert times[-1] - times[0] < 2.5  # at their slots, not a whole poll or second later


def test_a_post_that_waited_for_a_worker_goes_at_its_slot_not_a_wait_later(store, slack):
    """A room's posts reserve their slots as they are written. One that then waits for
    a free worker (a burst) goes at its slot, not at its slot plus that wait."""
    from bot.slack.pacing import Pacer as PacerClass
    from tests.conftest import wait_for

    slack.latency = 1.0  # the only worker is busy with Carol's post for a second
    pacer = PacerClass(store, cap=CAP)
    pacer.reserve("T0001", BOB, horizon=5)  # Bob's channel: the next slot is a gap away
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(store, gateway, Card(), pacer, workers=1, owner="w19", poll_interval=0.1)
    w.start()
    try:
        written = slack.clock()  # the double's clock, which counts the posts
        _hand_over(store, w, [CAROL, BOB])  # Bob's slot about 1.01 s after this
        wait_for(lambda: len(slack.dms_to(BOB)) == 1, timeout=10)
    finally:
        w.stop()
    (bob,) = counted_at(slack, BOB)
    # Its slot (1.01 s) and Slack's second: 2 s. Waiting its whole reserved wait again
    # once the worker is free (after Carol's second) would make it 3 s.
    assert bob - written < 2.6


def test_a_held_post_whose_channel_floor_moved_waits_off_the_workers(store, slack):
    """A post held for its slot finds, when it comes, that its channel's floor moved
    (the post before it ended late, here or on another replica). It waits again in
    memory: the sending thread goes to the posts that can leave now."""
    from bot.slack.pacing import _channel_key
    from tests.conftest import wait_for

    pacer = Pacer(store, cap=CAP)
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(store, gateway, Card(), pacer, workers=1, owner="w20", poll_interval=0.1)
    w.start()
    try:
        _hand_over(store, w, [BOB, BOB])  # the second is held for a slot a gap later
        wait_for(lambda: len(slack.dms_to(BOB)) == 1, timeout=5)
        first = counted_at(slack, BOB)[0]
        # Another replica's late post moves Bob's channel floor past the held slot.
        pacer.raise_floors({_channel_key("T0001", BOB): pacer.clock() + 2.5})
        wait_for(lambda: slack.clock() > first + 1.2, timeout=5)  # the held slot has come
        add_row(store, CAROL)
        w.kick()
        wait_for(lambda: len(slack.dms_to(CAROL)) == 1, timeout=1.0)
        assert len(slack.dms_to(BOB)) == 1  # still waiting for the floor
        wait_for(lambda: len(slack.dms_to(BOB)) == 2, timeout=10)
    finally:
        w.stop()
    assert slack.ratelimited_count == 0


class FloorMovingCard(Card):
    """``Card``, but while it renders ``row_id`` another replica records a late post to
    the row's channel: the channel's floor moves ``by`` seconds past now."""

    def __init__(self, pacer: Pacer, slack, row_id: list[int], by: float) -> None:
        self.pacer, self.slack, self.row_id, self.by = pacer, slack, row_id, by
        self.floor: float | None = None  # on the Slack double's clock

    def render(self, row: Outbox) -> Rendered:
        from bot.slack.pacing import _channel_key

        if row.id in self.row_id and self.floor is None:
            self.floor = self.slack.clock() + self.by
            key = _channel_key(row.team_id, row.channel)
            self.pacer.raise_floors({key: self.pacer.clock() + self.by})
        return super().render(row)


def test_a_held_post_reads_its_channel_s_floor_after_it_is_rendered(store, slack):
    """While a held post is rendered at its release, another replica records a late
    post to the same channel, which moves the channel's floor. The floors are read
    after the render: the post sees that move and waits, and does not meet that
    post at Slack (a 429, and its retry goes to the end of the channel's queue).
    Read before it, as they were, a round's last posts went up to half a second
    after the read."""
    from tests.conftest import wait_for

    slack.per_channel_rate = 1.0
    pacer = Pacer(store, cap=CAP)
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    second: list[int] = []
    card = FloorMovingCard(pacer, slack, second, by=0.6)
    w = OutboxWorker(store, gateway, card, pacer, workers=2, owner="w21", poll_interval=0.1)
    w.start()
    try:
        second.extend(_hand_over(store, w, [BOB, BOB])[1:])  # the second is held a gap
        wait_for(lambda: len(slack.dms_to(BOB)) == 2, timeout=10)
    finally:
        w.stop()
    assert card.floor is not None  # the held post was rendered, and the floor moved then
    assert counted_at(slack, BOB)[1] >= card.floor
    assert slack.ratelimited_count == 0


class CountingCard(Card):
    """``Card``, noting which rows it rendered and when they were sent after."""

    def __init__(self) -> None:
        self.rendered: list[int] = []

    def render(self, row: Outbox) -> Rendered:
        self.rendered.append(row.id)
        return super().render(row)


def test_a_post_held_for_its_slot_is_rendered_once_when_it_goes(store, slack):
    """Rendering reads the room and mints a link: not for a post that then waits."""
    from tests.conftest import wait_for

    slack.per_channel_rate = 1.0
    card = CountingCard()
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store,
        gateway,
        card,
        Pacer(store, cap=CAP),
        workers=2,
        owner="w5",
        lease=30,
        poll_interval=0.2,
    )
    w.start()
    try:
        ids = [add_row(store, BOB) for _ in range(3)]
        w.kick()
        wait_for(lambda: len(slack.dms_to(BOB)) == 3, timeout=10)
    finally:
        w.stop()
    assert sorted(card.rendered) == ids  # each once, though two waited for a slot
    assert slack.ratelimited_count == 0


# -- when to look for an earlier post (conversations.history can be 1/min) -----------------
def history_calls(slack) -> int:
    return len(slack.calls_to("conversations.history"))


def test_after_a_429_the_retry_posts_without_reading_history(store, worker, slack):
    """A 429 is a definite "not posted": no reason to spend a history call."""
    slack.fail("chat.postMessage", "ratelimited", channel=BOB, times=1, retry_after=1)
    row_id = add_row(store, BOB)
    drain(worker, store)
    assert len(slack.dms_to(BOB)) == 1
    assert history_calls(slack) == 0
    (row,) = [r for r in _all(store) if r.id == row_id]
    assert row.state == OutboxState.DONE and row.attempts == 2


def test_after_a_timeout_the_retry_finds_the_post_that_landed_anyway(store, slack):
    """Slack took the post but the answer came too late: the outcome was unknown."""
    from tests.conftest import wait_for

    gateway = SlackGateway(BOT_TOKEN, slack.api_url, timeout=1)
    w = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w6", lease=1)
    try:
        row_id = add_row(store, BOB)
        slack.latency = 1.5  # longer than the client's timeout; the post still lands
        (row,) = store.claim_outbox("w6", at=now(), lease=1, limit=1)
        w.send(row)
        wait_for(lambda: len(slack.dms_to(BOB)) == 1)
        slack.latency = 0.0
        (row,) = [r for r in _all(store) if r.id == row_id]
        assert row.state == OutboxState.PENDING and row.settled_attempts == 0
        drain(w, store)
    finally:
        w.stop()
    assert len(slack.dms_to(BOB)) == 1  # found, not sent twice
    assert history_calls(slack) == 1
    (row,) = [r for r in _all(store) if r.id == row_id]
    assert row.state == OutboxState.DONE and row.result_ts == slack.dms_to(BOB)[0]["ts"]


def test_a_crash_between_claim_and_answer_counts_as_unknown(store, worker, slack):
    """A worker died holding the row, before any answer: whoever takes it over looks
    first; finding nothing, it posts."""
    add_row(store, CAROL)
    store.claim_outbox("dead", at=now(), lease=1, limit=1)
    drain(worker, store)
    assert history_calls(slack) == 1
    assert len(slack.dms_to(CAROL)) == 1


def test_rows_handed_back_at_a_clean_stop_need_no_history_check(store, slack):
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w7", lease=600
    )
    add_row(store, BOB)
    store.claim_outbox("w7", at=now(), lease=600, limit=10)  # claimed, never started
    w.stop()
    (row,) = _all(store)
    assert (row.attempts, row.settled_attempts) == (1, 1)
    other = OutboxWorker(
        store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w8", lease=1
    )
    try:
        drain(other, store)
    finally:
        other.stop()
    assert len(slack.dms_to(BOB)) == 1 and history_calls(slack) == 0


def test_a_post_put_off_for_the_workspace_cap_is_due_before_its_slot_and_not_an_attempt(
    store, slack
):
    """Two posts per 30 s: the third's slot is beyond what a worker waits for, so it
    goes back to the database. It must come back in time for its slot (not a second
    or two after it), and, never having been sent, go out without first looking for
    itself in the DM's history as a retried DM does."""
    from bot.sim.ams import ManualClock

    clock = ManualClock(now())
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store, gateway, Card(), Pacer(store, cap=(2, 30), clock=clock), owner="w5", lease=60
    )
    try:
        ids = [add_row(store, user) for user in (BOB, CAROL, "U0DAVE")]
        slack.add_user("U0DAVE", "dave")
        drain(w, store)
        assert {len(slack.dms_to(u)) for u in (BOB, CAROL)} == {1}
        (third,) = [r for r in _all(store) if r.id == ids[2]]
        slot = clock() + 30  # a window after the first two
        assert third.state == OutboxState.PENDING and third.attempts == 0
        assert slot - 4 <= third.not_before < slot  # claimable before its slot
        clock.set(slot + 0.5)  # the slot has come
        drain(w, store)
    finally:
        w.stop()
    assert len(slack.dms_to("U0DAVE")) == 1
    assert slack.calls_to("conversations.history") == []


def test_telling_a_requester_does_not_hold_a_sending_thread(store, slack):
    """A burst of rooms each end with a reply to its requester (a Slack round trip):
    with that on the sending threads, every other room's DMs would wait behind it."""
    import threading

    from tests.conftest import wait_for

    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w6")
    w.start()
    told = threading.Event()
    release = threading.Event()

    def slow_reply(rows):
        told.set()
        release.wait(10)  # Slack's response_url taking its time

    try:
        with store.write() as tx:
            tx.add(
                Outbox(
                    team_id="T0001",
                    kind="dm_link",
                    room_id="ROOM1",
                    channel=BOB,
                    payload="{}",
                    state=OutboxState.PENDING,
                    attempts=0,
                    not_before=0,
                    created_at=now(),
                )
            )
        w.watch_room("ROOM1", slow_reply)
        w.kick()
        wait_for(lambda: told.is_set(), timeout=10)
        add_row(store, CAROL)  # another room's DM, while the reply is still going
        w.kick()
        wait_for(lambda: len(slack.dms_to(CAROL)) == 1, timeout=5)
    finally:
        release.set()
        w.stop()


def _new_row(channel: str) -> Outbox:
    return pending_row(channel)


def test_rows_leased_as_they_are_written_go_out_in_order_without_a_claim(store, slack):
    """A room's invitations are leased to the running worker in the transaction that
    writes them and handed over at once (``adopt``): the requester's DM first, no
    claim, and no other worker can take them meanwhile."""
    from tests.conftest import ALICE, wait_for

    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    idle = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w7")
    assert not idle.lease_new([_new_row(BOB)], at=now())  # not running: nobody would send it
    w = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w8")
    w.start()
    claims = []
    real_claim = store.claim_outbox
    store.claim_outbox = lambda *a, **k: claims.append(rows := real_claim(*a, **k)) or rows
    try:
        rows = [_new_row(u) for u in (ALICE, BOB, CAROL)]
        with store.write() as tx:
            handover = w.lease_new(rows, at=now(), tx=tx)
            tx.add_all(rows)
        assert handover is not None
        # Leased to w8 in the database: another replica's claim finds nothing.
        assert real_claim("other", at=now(), lease=30, limit=10) == []
        # Their slots were reserved as they were written: nothing more to write first.
        with store.read() as s:
            reserved = s.scalars(select(SlackPace.key).where(SlackPace.next_at > 0)).all()
        assert {f"c:T0001:{u}" for u in (ALICE, BOB, CAROL)} <= set(reserved)
        w.adopt(handover)
        wait_for(lambda: all(len(slack.dms_to(u)) == 1 for u in (ALICE, BOB, CAROL)), timeout=10)
        order = [c.args["channel"] for c in slack.calls_to("chat.postMessage")]
        assert order == [ALICE, BOB, CAROL]  # one worker: exactly the written order
        assert all(not batch for batch in claims)  # the loop claimed none of them
        wait_for(lambda: {r.state for r in _all(store)} == {OutboxState.DONE}, timeout=5)
        assert {(r.attempts, r.lease_owner) for r in _all(store)} == {(1, None)}
    finally:
        store.claim_outbox = real_claim
        w.stop()


def test_sends_ending_do_not_make_the_loop_look_in_the_database(store, slack):
    """The loop wakes each time a send ends (a held post may take the freed worker),
    but it claims from the database only when something may be there: rows written
    here (``kick``), more than its last claim could take, or a poll. A claim is a
    write transaction; one per post would queue every room's opening behind it."""
    from tests.conftest import ALICE, DAVE, wait_for

    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store, gateway, Card(), Pacer(store, cap=CAP), workers=2, owner="w9", poll_interval=3600
    )
    claims: list[int] = []
    real_claim = store.claim_outbox
    store.claim_outbox = lambda *a, **k: claims.append(len(rows := real_claim(*a, **k))) or rows
    w.start()
    try:
        for user in (ALICE, BOB, CAROL, DAVE):  # one at a time: each send ends alone
            _hand_over(store, w, [user])
            wait_for(lambda u=user: len(slack.dms_to(u)) == 1, timeout=10)
            wait_for(lambda: {r.state for r in _all(store)} == {OutboxState.DONE}, timeout=5)
        # The first wake looks once (for rows a previous process left); the sends'
        # four ends, not at all.
        assert claims == [0]
        add_row(store, BOB)  # written here: the writer kicks
        w.kick()
        wait_for(lambda: len(slack.dms_to(BOB)) == 2, timeout=10)
        wait_for(lambda: {r.state for r in _all(store)} == {OutboxState.DONE}, timeout=5)
        assert claims == [0, 1]  # one look, and its row sent
    finally:
        store.claim_outbox = real_claim
        w.stop()


def test_a_claim_the_database_refused_is_tried_again_at_the_next_poll(store, slack):
    """A kicked claim that fails (the database away for a moment) is not lost: the
    loop survives it and the row goes out from the next poll's claim."""
    from sqlalchemy.exc import OperationalError

    from tests.conftest import wait_for

    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store, gateway, Card(), Pacer(store, cap=CAP), workers=2, owner="w11", poll_interval=0.2
    )
    real_claim = store.claim_outbox
    failures = [OperationalError("SELECT", {}, Exception("database is locked"))]

    def claim(*a, **k):
        if failures:
            raise failures.pop()
        return real_claim(*a, **k)

    store.claim_outbox = claim
    w.start()
    try:
        add_row(store, BOB)
        w.kick()
        wait_for(lambda: len(slack.dms_to(BOB)) == 1, timeout=10)
        assert not failures  # the first look failed, a later one sent it
    finally:
        store.claim_outbox = real_claim
        w.stop()


def test_a_dm_that_lands_as_its_room_ends_is_edited_without_waiting_for_a_poll(store, slack):
    """The room ended while its DM was on its way, so the revoke could not edit it
    (its ts was unknown). Recording the post owes the "ended" edit, and the
    outbox sends it then, not at its next look at the database."""
    from tests.conftest import wait_for

    t = now()
    with store.write() as tx:
        tx.add(
            Room(
                id="roomended001",
                team_id="T0001",
                owner_id=BOB,
                channel_id="C0ENDED",
                topic="retro",
                state=RoomState.REVOKED,  # ended while the DM was under way
                created_at=t - 60,
                expires_at=t - 1,
                attempts=0,
                next_attempt_at=0,
            )
        )
        tx.flush()  # the room before its grant
        grant = Grant(
            room_id="roomended001",
            team_id="T0001",
            user_id=BOB,
            jti="jti-ended",
            exp=t + 60,
            created_at=t - 60,
        )
        tx.add(grant)
        tx.flush()
        grant_id = grant.id
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store,
        gateway,
        EditCard(slack),
        Pacer(store, cap=CAP),
        workers=2,
        owner="w10",
        poll_interval=3600,
    )
    w.start()
    try:
        row = _new_row(BOB)
        row.room_id, row.grant_id = "roomended001", grant_id
        with store.write() as tx:
            handover = w.lease_new([row], at=now(), tx=tx)
            tx.add(row)
        assert handover is not None
        w.adopt(handover)
        wait_for(lambda: len(slack.calls_to("chat.update")) == 1, timeout=10)
    finally:
        w.stop()
    assert [(r.kind, r.state) for r in _all(store)] == [
        ("dm_link", OutboxState.DONE),
        ("dm_update", OutboxState.DONE),
    ]


class HandOverCard(Card):
    """Renders like Card, numbering each render (``#n`` in the text), and records how
    it was asked: ``("one", id)`` per render, ``("many", [ids])`` per render_many."""

    def __init__(self, *, fail_many: bool = False) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail_many = fail_many
        self.n = 0

    def _one(self, row: Outbox) -> Rendered:
        self.n += 1
        card = Card.render(self, row)
        return Rendered(f"{card.text} #{self.n}", card.blocks, metadata=card.metadata)

    def render(self, row: Outbox) -> Rendered:
        self.calls.append(("one", row.id))
        return self._one(row)

    def render_many(self, rows):
        self.calls.append(("many", [r.id for r in rows]))
        if self.fail_many:
            raise RuntimeError("the database went away")
        return [self._one(r) for r in rows]


def _hand_over(store, worker, channels, room_id=None):
    """Write DMs to ``channels`` (of ``room_id``) leased to ``worker`` and hand them
    over; their ids."""
    rows = [_new_row(c) for c in channels]
    for r in rows:
        r.room_id = room_id
    with store.write() as tx:
        handover = worker.lease_new(rows, at=now(), tx=tx)
        tx.add_all(rows)
    assert handover is not None
    worker.adopt(handover)
    return [r.id for r in rows]


def _texts_to(slack, user):
    return [c.args["text"] for c in slack.calls_to("chat.postMessage") if c.args["channel"] == user]


def test_invitations_that_leave_at_once_are_rendered_together_and_each_once(store, slack):
    """The posts of a hand-over whose slot is now are rendered in one ``render_many``
    (one read of their room and grants, not two reads each on their sending threads),
    and sent as rendered; a post that must wait for its channel's slot is rendered
    when it goes, from the state then (with any others whose slot came then)."""
    from tests.conftest import ALICE, wait_for

    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    card = HandOverCard()
    w = OutboxWorker(store, gateway, card, Pacer(store, cap=CAP), workers=3, owner="w11")
    w.start()
    try:
        # Bob's second DM waits a second for his channel's slot.
        alice, bob, bob_again = _hand_over(store, w, [ALICE, BOB, BOB])
        wait_for(lambda: len(slack.dms_to(BOB)) == 2 and len(slack.dms_to(ALICE)) == 1, timeout=10)
        wait_for(lambda: {r.state for r in _all(store)} == {OutboxState.DONE}, timeout=5)
    finally:
        w.stop()
    assert card.calls == [("many", [alice, bob]), ("many", [bob_again])]
    assert _texts_to(slack, ALICE) == [f"hello {alice} #1"]
    assert _texts_to(slack, BOB) == [f"hello {bob} #2", f"hello {bob_again} #3"]


def test_held_posts_whose_slot_comes_together_are_rendered_together_and_sent_once(store, slack):
    """A stand-up's second round: each person's DM waits a second for its channel, and
    they all come at once. They are rendered from one read, and their floors read
    once, not one read each on busy sending threads: with three replicas on two
    cores that was nearly half of a post's CPU, and the round's last post went late."""
    from tests.conftest import ALICE, wait_for

    slack.per_channel_rate = 1.0
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    card = HandOverCard()
    pacer = Pacer(store, cap=CAP)
    reads = []
    until_floors = pacer.until_floors
    pacer.until_floors = lambda slots: reads.append(len(slots)) or until_floors(slots)
    w = OutboxWorker(store, gateway, card, pacer, workers=4, owner="w22", poll_interval=0.1)
    w.start()
    try:
        a1, b1, c1, a2, b2, c2 = _hand_over(store, w, [ALICE, BOB, CAROL] * 2)
        wait_for(lambda: len(posted_ok(slack)) == 6, timeout=10)
        wait_for(lambda: {r.state for r in _all(store)} == {OutboxState.DONE}, timeout=5)
    finally:
        w.stop()
    (first_how, first), (second_how, second) = card.calls  # two renders, no more
    assert (first_how, first) == ("many", [a1, b1, c1])
    assert second_how == "many" and sorted(second) == [a2, b2, c2]
    assert reads == [3]
    for who, first, second in ((ALICE, a1, a2), (BOB, b1, b2), (CAROL, c1, c2)):
        assert [t.split(" #")[0] for t in _texts_to(slack, who)] == [
            f"hello {first}",
            f"hello {second}",
        ]
    assert slack.ratelimited_count == 0


def posted_ok(slack):
    return [c for c in slack.calls_to("chat.postMessage") if c.ok]


def test_invitations_handed_over_while_every_worker_is_busy_are_rendered_when_they_go(store, slack):
    """Rows that wait for a free worker are not rendered at the hand-over: they would
    be rendered twice, or sent as they were seconds ago. Each renders as it goes."""
    from tests.conftest import ALICE, DAVE, wait_for

    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    card = HandOverCard()
    w = OutboxWorker(store, gateway, card, Pacer(store, cap=CAP), workers=1, owner="w12")
    w.start()
    held = slack.hold("chat.postMessage", channel=DAVE)
    try:
        (dave,) = _hand_over(store, w, [DAVE])
        assert held.arrived.wait(10)  # the only worker is busy with Dave's post
        alice, bob = _hand_over(store, w, [ALICE, BOB])
        assert card.calls == [("many", [dave])]  # nothing rendered for Alice and Bob yet
        held.release()
        wait_for(lambda: len(slack.dms_to(BOB)) == 1 and len(slack.dms_to(ALICE)) == 1, timeout=10)
        wait_for(lambda: {r.state for r in _all(store)} == {OutboxState.DONE}, timeout=5)
    finally:
        held.release()
        w.stop()
    assert card.calls == [("many", [dave]), ("one", alice), ("one", bob)]
    assert _texts_to(slack, ALICE) == [f"hello {alice} #2"]
    assert _texts_to(slack, BOB) == [f"hello {bob} #3"]


def test_invitations_whose_joint_render_failed_are_each_rendered_as_they_go(store, slack):
    """A failed ``render_many`` (the database, say) costs no invitation: each post is
    rendered on its sending thread as a claimed one is."""
    from tests.conftest import ALICE, wait_for

    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    card = HandOverCard(fail_many=True)
    w = OutboxWorker(store, gateway, card, Pacer(store, cap=CAP), workers=2, owner="w13")
    w.start()
    try:
        alice, bob = _hand_over(store, w, [ALICE, BOB])
        wait_for(lambda: len(slack.dms_to(BOB)) == 1 and len(slack.dms_to(ALICE)) == 1, timeout=10)
        wait_for(lambda: {r.state for r in _all(store)} == {OutboxState.DONE}, timeout=5)
    finally:
        w.stop()
    assert sorted(card.calls[1:]) == [("one", alice), ("one", bob)]


def test_a_held_post_whose_render_with_others_failed_renders_itself_and_keeps_its_slot(
    store, slack
):
    """When the render of the held posts whose slot came fails, each renders itself on
    its sending thread, reads its own floors, and still waits for its slot."""
    from tests.conftest import wait_for

    slack.per_channel_rate = 1.0
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    card = HandOverCard(fail_many=True)
    w = OutboxWorker(store, gateway, card, Pacer(store, cap=CAP), workers=2, owner="w23")
    w.start()
    try:
        _, again = _hand_over(store, w, [BOB, BOB])  # the second is held a gap
        wait_for(lambda: len(slack.dms_to(BOB)) == 2, timeout=10)
        wait_for(lambda: {r.state for r in _all(store)} == {OutboxState.DONE}, timeout=5)
    finally:
        w.stop()
    assert card.calls[-2:] == [("many", [again]), ("one", again)]
    one, two = counted_at(slack, BOB)
    assert two - one >= 1.0
    assert slack.ratelimited_count == 0


def test_a_room_whose_last_invitation_another_replica_sent_is_still_reported(
    store, slack, monkeypatch
):
    """A retried row may be claimed by any replica. When another one sends a room's
    last invitation, the replica that opened the room (and watches it) still tells
    its requester how the invitations went, at its next look."""
    from bot.slack import outbox
    from tests.conftest import ALICE, wait_for

    monkeypatch.setattr(outbox, "WATCH_RECHECK_S", 0.1)
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    for user in (ALICE, BOB):
        row = _new_row(user)
        row.room_id = "roomwatched1"
        with store.write() as tx:
            tx.add(row)
    other = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w14")
    claimed = store.claim_outbox(other.owner, at=now(), lease=30, limit=10)
    assert len(claimed) == 2
    opener = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w15")
    opener.start()
    reports: list[list[Outbox]] = []
    try:
        opener.watch_room("roomwatched1", reports.append, check=False)
        for row in claimed:
            other.send(row)  # the other replica sends both; the opener finishes none
        wait_for(lambda: reports, timeout=10)
    finally:
        opener.stop()
    (rows,) = reports
    assert sorted(r.channel for r in rows) == sorted([ALICE, BOB])
    assert {r.state for r in rows} == {OutboxState.DONE}


def _pending_looks(store, monkeypatch, room_id):
    """Count the database reads of ``room_id``'s invitations (whether any is still to
    send, and how they went)."""
    looks: list[str] = []
    pending, rows = store.rooms_with_pending, store.outbox_rows

    def counted_pending(room_ids, kinds):
        if room_id in room_ids:
            looks.append("pending")
        return pending(room_ids, kinds)

    def counted_rows(room):
        if room == room_id:
            looks.append("rows")
        return rows(room)

    monkeypatch.setattr(store, "rooms_with_pending", counted_pending)
    monkeypatch.setattr(store, "outbox_rows", counted_rows)
    return looks


def test_a_room_whose_invitations_were_all_sent_here_is_reported_after_one_look(
    store, slack, monkeypatch
):
    """The opener knows which invitations it was handed: until the last of them is
    sent it needs no query to know the room is not done. Then one read says both
    that none is pending and how they went."""
    from tests.conftest import ALICE, DAVE, wait_for

    looks = _pending_looks(store, monkeypatch, "roomfour0001")
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=4, owner="w16")
    w.start()
    reports: list[list[Outbox]] = []
    try:
        w.watch_room("roomfour0001", reports.append, check=False)
        _hand_over(store, w, [ALICE, BOB, CAROL, DAVE], room_id="roomfour0001")
        wait_for(lambda: reports, timeout=10)
    finally:
        w.stop()
    (rows,) = reports
    assert sorted(r.channel for r in rows) == sorted([ALICE, BOB, CAROL, DAVE])
    assert {r.state for r in rows} == {OutboxState.DONE}
    assert looks == ["rows"]


def test_a_room_whose_retried_invitation_another_replica_sent_is_reported(
    store, slack, monkeypatch
):
    """An invitation that goes back to the database for a retry is no longer one the
    opener knows it will finish: any replica may send it. Once another one has, the
    opener still tells the requester, with every invitation sent."""
    from tests.conftest import ALICE, wait_for

    monkeypatch.setattr("bot.slack.outbox.WATCH_RECHECK_S", 0.1)
    slack.fail("chat.postMessage", "internal_error", status=500, channel=BOB, times=1)
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store, gateway, Card(), Pacer(store, cap=CAP), workers=2, owner="w17", poll_interval=0.1
    )
    other = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w18")
    w.start()
    reports: list[list[Outbox]] = []
    try:
        w.watch_room("roomretry001", reports.append, check=False)
        _hand_over(store, w, [ALICE, BOB], room_id="roomretry001")
        wait_for(
            lambda: {r.state for r in _all(store)} == {OutboxState.DONE, OutboxState.PENDING},
            timeout=10,
        )
        wait_for(lambda: all(r.lease_owner is None for r in _all(store)), timeout=10)
        assert reports == []  # Bob's invitation is still to go
        drain(other, store)  # due in two seconds; the other replica takes it now
        wait_for(lambda: reports, timeout=10)
    finally:
        w.stop()
    (rows,) = reports
    assert {r.channel: r.state for r in rows} == {ALICE: OutboxState.DONE, BOB: OutboxState.DONE}
    assert len(slack.dms_to(BOB)) == 1


def test_rows_leased_to_a_worker_that_dies_before_sending_are_claimed_after_the_lease(store, slack):
    """Should the process die between writing and handing over, the lease runs out and
    any replica sends the row, as with a claimed row."""
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    dead = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w9")
    dead._thread = object()  # looks started; it never sends (it "died")
    row = _new_row(BOB)
    with store.write() as tx:
        assert dead.lease_new([row], at=now() - 60)  # written a minute ago
        tx.add(row)
    other = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w10")
    drain(other, store)
    assert len(slack.dms_to(BOB)) == 1
    (done,) = _all(store)
    assert done.state == OutboxState.DONE and done.attempts == 2


class ClaimingCard(Card):
    """Renders like Card, but first lets another replica try to claim the row as if
    ``later`` seconds had passed (mid-send); what each claim took is in ``claims``."""

    def __init__(self, store: Store, *, later: int) -> None:
        self.store, self.later = store, later
        self.claims: list[list[Outbox]] = []

    def render(self, row: Outbox) -> Rendered:
        self.claims.append(
            self.store.claim_outbox("other", at=now() + self.later, lease=30, limit=1)
        )
        return super().render(row)


def test_a_copy_that_outwaited_its_lease_is_not_sent_again_once_claimed_anew(store, slack):
    """On a starved process a row can wait in memory (for a worker, for its slot)
    longer than its lease; the loop then claims it again and sends it from that
    claim. The copy that waited must not post it a second time (seen in the burst
    under a profiler: two cards posted twice) nor touch what the claim recorded."""
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w11")
    add_row(store, BOB)
    (stale,) = store.claim_outbox("w11", at=now() - 60, lease=30, limit=1)  # ran out 30 s ago
    (fresh,) = store.claim_outbox("w11", at=now(), lease=30, limit=1)  # the loop, same owner
    w.send(fresh)
    w.send(stale)
    assert len(slack.dms_to(BOB)) == 1
    (row,) = _all(store)
    assert (row.state, row.attempts) == (OutboxState.DONE, 2)
    assert row.result_ts == slack.dms_to(BOB)[0]["ts"]


def test_a_copy_whose_lease_runs_short_renews_it_and_is_sent(store, slack):
    """A copy with less lease left than a send may take, which nobody claimed since,
    keeps the row: it renews the lease (no other claim can take it mid-send) and sends."""
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w12")
    add_row(store, CAROL)
    (row,) = store.claim_outbox("w12", at=now() - 25, lease=30, limit=1)  # 5 s left
    # Another replica's claim, as if ten seconds later, mid-send (Slack slow):
    # the old lease would have run out by then.
    w.renderer = card = ClaimingCard(store, later=10)
    w.send(row)
    assert card.claims == [[]]  # the renewed lease kept the row from the other replica
    assert len(slack.dms_to(CAROL)) == 1
    (done,) = _all(store)
    assert (done.state, done.attempts, done.lease_owner) == (OutboxState.DONE, 1, None)


def test_a_dm_that_looks_in_history_first_keeps_its_lease_for_both_calls(store, slack):
    """A DM whose earlier attempt may have posted looks in the channel before it
    posts: two Slack calls, each up to the client's timeout. Its lease must cover
    both, or another claim could send it while the post is still under way."""
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(store, gateway, Card(), Pacer(store, cap=CAP), workers=1, owner="w14")
    add_row(store, BOB)
    store.claim_outbox("dead", at=now() - 60, lease=30, limit=1)  # outcome never known
    (row,) = store.claim_outbox("w14", at=now() - 10, lease=30, limit=1)  # 20 s left
    assert row.attempts == 2
    # Another replica's claim 21 s on: after a history read and a post that each
    # took nearly the whole timeout.
    w.renderer = card = ClaimingCard(store, later=21)
    w.send(row)
    assert card.claims == [[]]
    assert len(slack.dms_to(BOB)) == 1
    assert len(slack.calls_to("conversations.history")) == 1


def test_a_post_that_starts_late_is_not_caught_up_by_the_next_one_to_its_channel(store, slack):
    """Posts start late when the interpreter is busy or Slack answers slowly. The
    channel's next post must then wait for it and keep Slack's second after it,
    not go at its own slot: two posts inside a second draw a 429, and a 429 pauses
    every post to the workspace (the burst's 429s, seen 0.002 s apart)."""
    from tests.conftest import wait_for

    slack.per_channel_rate = 1.0
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    w = OutboxWorker(
        store, gateway, Card(), Pacer(store, cap=CAP), workers=2, owner="w15", lease=30
    )
    slow = slack.hold("chat.postMessage", channel=BOB)  # Slack answers the first one late
    w.start()
    try:
        add_row(store, BOB)
        add_row(store, BOB)
        w.kick()
        assert slow.arrived.wait(10)
        # The second post's slot (a second after the first's start) comes and goes
        # while the first is still with Slack.
        first_arrived = slack.clock()
        wait_for(lambda: slack.clock() > first_arrived + 1.5, timeout=5)
        slow.release()
        wait_for(lambda: len(slack.dms_to(BOB)) == 2, timeout=10)
    finally:
        w.stop()
    assert slack.ratelimited_count == 0
    counted = counted_at(slack, BOB)
    assert counted[1] - counted[0] >= 1.0


def test_a_late_post_records_itself_and_its_channel_s_floor_in_one_transaction(store, slack):
    """Every post ends in a write: its outcome, and when it started late, the pacing
    floors it moves for every replica. On SQLite writes take turns, and in a burst
    the writer's lock is busy most of the time: those are one transaction, not two."""
    from bot.sim.ams import ManualClock
    from bot.slack.pacing import CHANNEL_GAP_S
    from tests.helpers import write_transactions

    clock = ManualClock(now())

    class LateCard(Card):  # the interpreter was busy: the post starts half a second late
        def render(self, row: Outbox) -> Rendered:
            clock.advance(0.5)
            return super().render(row)

    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    pacer = Pacer(store, cap=CAP, clock=clock)
    w = OutboxWorker(store, gateway, LateCard(), pacer, workers=1, owner="w16", lease=30)
    add_row(store, BOB)
    (row,) = store.claim_outbox("w16", at=now(), lease=30, limit=1)
    with write_transactions(store) as writes:
        w.send(row)
    assert len(slack.dms_to(BOB)) == 1
    assert len(writes) == 2  # the post's slot, then its outcome with the floors it moved
    # Another replica's next post to BOB keeps Slack's second after this one's count.
    slot, _ = Pacer(store, cap=CAP, clock=clock).reserve("T0001", BOB, horizon=10)
    assert slot is not None and slot.start >= clock() + CHANNEL_GAP_S - 0.001


def test_an_edit_is_sent_and_recorded(store, worker, slack):
    """Edits (a DM or card updated in place) are not paced and move no floor, but
    are recorded like any post: a room that ends must not leave its edits pending."""

    worker.renderer = EditCard(slack)
    add_row(store, BOB)
    drain(worker, store)
    add_row(store, "D" + BOB, kind="dm_update")  # an edit names the DM channel
    drain(worker, store)
    assert len(slack.calls_to("chat.update")) == 1
    assert {r.state for r in _all(store)} == {OutboxState.DONE}
