"""Secret rotation inside the running bot: DMs renewed in place, one rotation across replicas."""

from __future__ import annotations

import time

from cryptography.fernet import Fernet

from bot.sim.ams import DEFAULT_ADMIN_EMAIL, DEFAULT_ADMIN_PASSWORD
from tests.conftest import ALICE, BOB, STREAM_SECRET, sender_for, wait_for
from tests.helpers import (
    db_exec,
    db_rows,
    dm_links,
    response_texts,
    settled,
    sweep_more,
    token_of,
)

SETTINGS_POST = r"^/rest/v2/applications/settings/Conference$"


def rotation_env(**extra: str) -> dict[str, str]:
    env = {
        "MEETBOT_SECRET_KEY": Fernet.generate_key().decode(),
        "AMS_ADMIN_EMAIL": DEFAULT_ADMIN_EMAIL,
        "AMS_ADMIN_PASSWORD": DEFAULT_ADMIN_PASSWORD,
        "MEETBOT_SECRET_MAX_AGE": "1h",
        "MEETBOT_SWEEP_INTERVAL": "1",
    }
    env.update(extra)
    return env


def age_the_secret(url: str) -> None:
    db_exec(url, "UPDATE stream_secrets SET activated_at = :t", t=int(time.time()) - 7200)


def test_rotation_renews_every_dm_in_place(start_bot, slack, ams):
    bot = start_bot(**rotation_env())
    url = bot.env["DATABASE_URL"]
    sender = sender_for(bot, slack)
    r = sender.command(f"sync <@{BOB}>", user_id=ALICE)
    wait_for(lambda: any("is open" in t for t in response_texts(slack, r.response_key)))
    (room,) = db_rows(url, "rooms")
    (old_link,) = dm_links(slack, BOB)
    assert ams.check_join(room["id"], token_of(old_link))[0]
    secrets_before = db_rows(url, "stream_secrets")
    assert len(secrets_before) == 1 and STREAM_SECRET not in str(secrets_before)

    age_the_secret(url)
    wait_for(lambda: ams.settings["jwtStreamSecretKey"] != STREAM_SECRET, timeout=10)
    new_secret = ams.settings["jwtStreamSecretKey"]
    assert len(new_secret) == 48
    # The old link is dead, the DM was edited in place with one that works.
    assert not ams.check_join(room["id"], token_of(old_link))[0]
    wait_for(lambda: dm_links(slack, BOB) and dm_links(slack, BOB) != [old_link], timeout=10)
    assert len(slack.dms_to(BOB)) == 1
    (new_link,) = dm_links(slack, BOB)
    assert ams.check_join(room["id"], token_of(new_link))[0]
    rows = db_rows(url, "stream_secrets")
    assert sorted(r["state"] for r in rows) == ["current", "retired"]
    assert new_secret not in str(rows) and new_secret not in bot.log()
    # Each grant records the secret its DM's link was minted with: the new one.
    newest = max(r["version"] for r in rows)
    wait_for(lambda: {g["secret_version"] for g in db_rows(url, "grants")} == {newest})


def test_a_dm_rendered_with_the_old_secret_is_edited_once_it_lands(start_bot, slack, ams):
    """The rotation window: Bob's invitation is rendered (its token signed with the
    old secret) and on its way to Slack when the secret rotates and the re-issue
    edits every DM it knows of. His lands after that, with a dead link; the next
    sweep finds it by the secret version it was rendered with and edits it."""
    bot = start_bot(**rotation_env())
    url = bot.env["DATABASE_URL"]
    in_flight = slack.hold("chat.postMessage", channel=BOB)
    r = sender_for(bot, slack).command(f"sync <@{BOB}>", user_id=ALICE)
    assert in_flight.arrived.wait(10)  # rendered with the old secret, not yet posted
    (room,) = db_rows(url, "rooms")
    (alice_link,) = wait_for(lambda: dm_links(slack, ALICE))

    age_the_secret(url)
    wait_for(lambda: ams.settings["jwtStreamSecretKey"] != STREAM_SECRET, timeout=10)
    assert not ams.check_join(room["id"], token_of(alice_link))[0]
    # The re-issue ran: Alice's DM (the one it knew of) now holds a working link.
    wait_for(lambda: dm_links(slack, ALICE) != [alice_link], timeout=10)
    assert ams.check_join(room["id"], token_of(dm_links(slack, ALICE)[0]))[0]

    in_flight.release()  # Bob's invitation lands now, after the re-issue
    (old_link,) = wait_for(lambda: dm_links(slack, BOB))
    assert not ams.check_join(room["id"], token_of(old_link))[0]
    wait_for(lambda: any("is open until" in t for t in response_texts(slack, r.response_key)))
    # A later sweep edits it in place with a link that works.
    wait_for(lambda: dm_links(slack, BOB) != [old_link], timeout=15)
    assert len(slack.dms_to(BOB)) == 1
    (new_link,) = dm_links(slack, BOB)
    assert ams.check_join(room["id"], token_of(new_link))[0]
    # And only once: further sweeps owe it nothing more.
    settled(bot)
    edits = len(slack.calls_to("chat.update"))
    sweep_more(bot, n=3)
    settled(bot)
    assert len(slack.calls_to("chat.update")) == edits


def test_three_replicas_rotate_once(start_bot, postgres_url, slack, ams):
    env = rotation_env()  # one MEETBOT_SECRET_KEY for all, as in a real deployment
    replicas = [start_bot(postgres_url, **env) for _ in range(3)]
    assert len(replicas) == 3
    ams.clear_requests()
    age_the_secret(postgres_url)
    wait_for(lambda: ams.settings["jwtStreamSecretKey"] != STREAM_SECRET, timeout=10)
    sweep_more(*replicas, n=3)  # every replica swept several more times
    assert ams.count("POST", SETTINGS_POST) == 1
    rotations = [a for a in db_rows(postgres_url, "audit") if a["action"] == "rotate_secret"]
    assert len(rotations) == 1


def test_a_wrong_admin_password_is_tried_once_not_in_a_loop(start_bot, ams, slack):
    bot = start_bot(**rotation_env(AMS_ADMIN_PASSWORD="wrong-password"))
    age_the_secret(bot.env["DATABASE_URL"])
    sweep_more(bot, n=4)  # four sweeps after the secret aged
    assert ams.count("POST", r"^/rest/v2/users/authenticate$") <= 1
    assert not ams.is_locked(DEFAULT_ADMIN_EMAIL)
    assert ams.settings["jwtStreamSecretKey"] == STREAM_SECRET
    assert "login" in bot.log().lower()
