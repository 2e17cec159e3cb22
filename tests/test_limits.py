"""Abuse limits and guest accounts, end to end over a real ``meetbot serve``.

Two bots for the whole module (starting one costs seconds): ``limited`` runs
with ``MEETBOT_MAX_OPEN_ROOMS_PER_USER=2`` as an operator would set it, and
``guests_allowed`` adds ``MEETBOT_ALLOW_GUESTS=1``. They share the AMS and
Slack doubles, so every test uses people of its own (``people``) and
measures AMS and Slack as differences. Each test sends Slack's signed requests
over HTTP and asserts what the requester was told and what AMS, Slack and the
database hold afterwards: a refused request leaves nothing anywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble, SlackSender
from bot.web.app import MAX_BODY_BYTES
from tests.conftest import BOT_TOKEN, STREAM_SECRET, TEAM, BotProcess, bot_env, sender_for, wait_for
from tests.helpers import (
    creates,
    db_rows,
    dm_links,
    response_texts,
    rooms_on_ams,
    settled,
    token_of,
)

OPENED = "is open until"
GUEST_CANNOT_OPEN = "can't open rooms"
GUEST_NOT_INVITED = "Guests can only join rooms they were invited to"


# -- one AMS, one Slack, two bots ------------------------------------------------------------
@pytest.fixture(scope="module")
def ams() -> Iterator[AmsDouble]:
    with AmsDouble(stream_secret=STREAM_SECRET) as double:
        yield double


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackDouble]:
    with SlackDouble(bot_token=BOT_TOKEN, team_id=TEAM) as double:
        yield double


def _start(ams: AmsDouble, slack: SlackDouble, directory: Path, **env: str) -> BotProcess:
    url = f"sqlite:///{directory / 'meetbot.db'}"
    return BotProcess(bot_env(ams, slack, url, **env), directory / "bot.log").start()


@pytest.fixture(scope="module")
def limited(ams, slack, tmp_path_factory) -> Iterator[BotProcess]:
    bot = _start(
        ams, slack, tmp_path_factory.mktemp("limited"), MEETBOT_MAX_OPEN_ROOMS_PER_USER="2"
    )
    yield bot
    bot.terminate()


@pytest.fixture(scope="module")
def guests_allowed(ams, slack, tmp_path_factory) -> Iterator[BotProcess]:
    bot = _start(
        ams,
        slack,
        tmp_path_factory.mktemp("guests"),
        MEETBOT_MAX_OPEN_ROOMS_PER_USER="2",
        MEETBOT_ALLOW_GUESTS="1",
    )
    yield bot
    bot.terminate()


@pytest.fixture
def sender(limited: BotProcess, slack: SlackDouble) -> SlackSender:
    return sender_for(limited, slack)


_ids = itertools.count(1)


@pytest.fixture
def people(slack: SlackDouble) -> Callable[..., str]:
    """Adds a person no other test has seen: ``people()`` a member, ``people("guest")``
    a guest (is_restricted), ``people("single-channel guest")`` (is_ultra_restricted)."""

    def add(kind: str = "member") -> str:
        uid = f"U{kind[0].upper()}{next(_ids):06d}"
        slack.add_user(
            uid,
            is_restricted=kind == "guest",
            is_ultra_restricted=kind == "single-channel guest",
        )
        return uid

    return add


# -- helpers ---------------------------------------------------------------------------------------
def open_room(sender, slack, text, user):
    """/meet that must succeed; waits for the requester's "is open until" reply."""
    r = sender.command(text, user_id=user)
    assert r.status_code == 200 and "Creating" in r.text, r.text
    wait_for(lambda: any(OPENED in t for t in response_texts(slack, r.response_key)))
    return r


def refused(sender, slack, text, user):
    """/meet acked, then refused after the ack: returns the one reply."""
    r = sender.command(text, user_id=user)
    assert r.status_code == 200 and "Creating" in r.text, r.text
    (reply,) = slack.wait_for_responses(r.response_key)
    return reply["text"]


def rooms_of(bot, owner):
    return sorted(
        r["id"] for r in db_rows(bot.env["DATABASE_URL"], "rooms") if r["owner_id"] == owner
    )


def grants_of(bot, user):
    return [
        g["room_id"] for g in db_rows(bot.env["DATABASE_URL"], "grants") if g["user_id"] == user
    ]


def posts_to(slack, *users):
    return [c for c in slack.calls_to("chat.postMessage") if c.args.get("channel") in users]


# -- open rooms per person ---------------------------------------------------------------------
def test_a_third_open_room_is_refused_and_nothing_reaches_ams(limited, sender, slack, ams, people):
    alice, bob, carol = people(), people(), people()
    open_room(sender, slack, f"one <@{bob}>", alice)
    open_room(sender, slack, f"two <@{bob}>", alice)
    first, second = rooms_of(limited, alice)
    made, on_ams = creates(ams), len(rooms_on_ams(ams))

    text = refused(sender, slack, f"three <@{carol}>", alice)
    assert "You already have 2 open rooms" in text and "/meet end" in text
    settled(limited)
    assert creates(ams) == made and len(rooms_on_ams(ams)) == on_ams
    assert rooms_of(limited, alice) == [first, second]  # not even a failed row
    assert not posts_to(slack, carol) and grants_of(limited, carol) == []

    # The limit counts rooms a person opened: bob, invited twice, may open his own.
    open_room(sender, slack, "bob's", bob)
    # Ending one of alice's frees a place.
    r = sender.command(f"end {first}", user_id=alice)
    wait_for(lambda: any("Ended" in t for t in response_texts(slack, r.response_key)))
    open_room(sender, slack, f"three <@{carol}>", alice)
    assert creates(ams) == made + 2


# -- people per room ------------------------------------------------------------------------------
def test_51_invitees_are_refused_in_the_ack_and_nothing_is_created(
    limited, sender, slack, ams, people
):
    alice = people()
    invitees = [people() for _ in range(51)]
    made = creates(ams)
    r = sender.command("crowd " + " ".join(f"<@{u}>" for u in invitees), user_id=alice)
    assert r.status_code == 200
    assert "At most 50 people per room (you mentioned 51)" in r.text
    assert "Get my link" in r.text  # and what to do instead
    settled(limited)
    assert creates(ams) == made and rooms_of(limited, alice) == []
    assert slack.responses[r.response_key] == []  # nothing after the ack either
    assert not posts_to(slack, alice, *invitees)


def test_50_invitees_are_fine(limited, sender, slack, ams, people):
    alice = people()
    invitees = [people() for _ in range(50)]
    made = creates(ams)
    open_room(sender, slack, "town hall " + " ".join(f"<@{u}>" for u in invitees), alice)
    assert creates(ams) == made + 1
    (room,) = rooms_of(limited, alice)
    assert all(grants_of(limited, u) == [room] for u in [alice, *invitees])
    assert all(dm_links(slack, u) for u in [alice, *invitees])


# -- request size -----------------------------------------------------------------------
def big_command(sender, user):
    body = urlencode([("team_id", TEAM), ("user_id", user), ("command", "/meet")]).encode()
    body += b"&text=" + b"x" * (MAX_BODY_BYTES + 1 - len(body) - 6)
    assert len(body) == MAX_BODY_BYTES + 1
    return body, {"Content-Type": "application/x-www-form-urlencoded", **sender.sign(body)}


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_a_body_over_1_mib_is_413_and_never_parsed(limited, sender, slack, ams, people, transfer):
    alice = people()
    body, headers = big_command(sender, alice)
    if transfer == "chunked":  # no Content-Length: the server must count
        data = (body[i : i + 65536] for i in range(0, len(body), 65536))
    else:
        data = body
    made, log_size = creates(ams), len(limited.log())
    try:
        r = requests.post(limited.url + "/slack/events", data=data, headers=headers, timeout=10)
    except requests.ConnectionError as e:
        pytest.fail(f"the bot hung up without answering 413: {e}")
    assert r.status_code == 413
    settled(limited)
    assert creates(ams) == made and rooms_of(limited, alice) == []
    assert not posts_to(slack, alice)
    log = limited.log()[log_size:]
    assert "Traceback" not in log and "Unhandled request" not in log  # Bolt never saw it
    assert "/meet" in sender.command("help", user_id=alice).text  # and the bot is fine


# -- guests -----------------------------------------------------------------------------
@pytest.fixture(params=["guest", "single-channel guest"])
def guest(request, people) -> str:
    return people(request.param)


def test_a_guest_cannot_open_a_room(limited, sender, slack, ams, people, guest):
    bob = people()
    before = len(rooms_on_ams(ams))
    text = refused(sender, slack, f"sync <@{bob}>", guest)
    assert GUEST_CANNOT_OPEN in text and "invite you" in text
    settled(limited)
    # Made on AMS while Slack said who the guest is, and deleted before the reply.
    assert len(rooms_on_ams(ams)) == before and rooms_of(limited, guest) == []
    assert not posts_to(slack, bob, guest)


def test_an_invited_guest_gets_a_working_link_and_no_other(
    limited, sender, slack, ams, people, guest
):
    alice, bob = people(), people()
    open_room(sender, slack, f"with guest <@{guest}>", alice)
    (invited,) = rooms_of(limited, alice)
    (link,) = dm_links(slack, guest)
    ok, why = ams.check_join(invited, token_of(link))
    assert ok, why

    open_room(sender, slack, f"members only <@{bob}>", alice)
    (other,) = set(rooms_of(limited, alice)) - {invited}
    r = sender.block_action("meet_get_link", other, user_id=guest)
    assert r.status_code == 200
    (reply,) = slack.wait_for_responses(r.response_key)
    assert GUEST_NOT_INVITED in reply["text"]
    settled(limited)
    assert len(posts_to(slack, guest)) == 1  # still only the invitation
    assert grants_of(limited, guest) == [invited]
    assert not ams.check_join(other, token_of(link))[0]  # one room's link opens no other

    # "Get my link" on the room they were invited to is not refused.
    r = sender.block_action("meet_get_link", invited, user_id=guest)
    (reply,) = slack.wait_for_responses(r.response_key)
    assert "Your link is in your DMs" in reply["text"]


def test_with_allow_guests_a_guest_may_open_a_room(guests_allowed, slack, ams, people, guest):
    bob = people()
    open_room(sender_for(guests_allowed, slack), slack, f"guest's room <@{bob}>", guest)
    (room,) = rooms_of(guests_allowed, guest)
    for user in (guest, bob):
        (link,) = dm_links(slack, user)
        assert ams.check_join(room, token_of(link))[0]


def test_get_my_link_still_refuses_a_guest_when_slack_cannot_say_who_they_are(
    limited, sender, slack, people
):
    alice, bob, guest = people(), people(), people("guest")  # the guest: never looked up
    open_room(sender, slack, f"members only <@{bob}>", alice)
    (room,) = rooms_of(limited, alice)
    slack.fail("users.info", "fatal_error", times=None)  # Slack has a bad minute
    try:
        r = sender.block_action("meet_get_link", room, user_id=guest)
        slack.wait_for_responses(r.response_key)
        settled(limited)
    finally:
        slack.clear_faults()
    assert not posts_to(slack, guest)
    assert grants_of(limited, guest) == []


# -- the limit on PostgreSQL ---------------------------------------------------------------------
def test_concurrent_meets_from_one_person_open_exactly_the_limit_on_postgresql(
    start_bot, postgres_url, slack, ams, people
):
    """READ COMMITTED lets two transactions count the same rooms: the count and the
    insert are one step per person, so twelve /meets sent together open three."""
    from concurrent.futures import ThreadPoolExecutor

    bot = start_bot(postgres_url, MEETBOT_MAX_OPEN_ROOMS_PER_USER="3")
    alice, bob = people(), people()
    sender = sender_for(bot, slack)
    creates_before = creates(ams)
    n = 12
    with ThreadPoolExecutor(n) as pool:
        sent = list(
            pool.map(lambda i: sender.command(f"race {i} <@{bob}>", user_id=alice), range(n))
        )
    assert all(r.status_code == 200 and "Creating" in r.text for r in sent)
    replies = [slack.wait_for_responses(r.response_key, timeout=30)[0]["text"] for r in sent]
    opened = [t for t in replies if OPENED in t]
    refused = [t for t in replies if "You already have 3 open rooms" in t]
    assert (len(opened), len(refused)) == (3, n - 3), replies
    rooms = [r for r in db_rows(postgres_url, "rooms") if r["owner_id"] == alice]
    assert sorted(r["state"] for r in rooms) == ["active"] * 3
    assert creates(ams) - creates_before == 3
    settled(postgres_url)
    assert len(slack.dms_to(bob)) == 3
