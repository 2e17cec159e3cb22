"""SlackGateway against the Slack double: users.info asked once per person, replies."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.slack.gateway import SlackGateway, UnknownUser
from tests.conftest import BOB, BOT_TOKEN, CAROL


def _ask_at_once(gateway: SlackGateway, users: list[str]) -> list:
    """``user_info`` for each of ``users``, all at the same time; results or exceptions."""

    def one(user: str):
        try:
            return gateway.user_info(user)
        except Exception as e:  # noqa: BLE001 - the result under test
            return e

    with ThreadPoolExecutor(len(users)) as pool:
        return list(pool.map(one, users))


def test_ten_rooms_at_once_ask_slack_once_per_person(slack):
    slack.latency = 0.3  # every asker arrives while the first is waiting for Slack
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    answers = _ask_at_once(gateway, [BOB] * 10 + [CAROL] * 10)
    assert {a.id for a in answers[:10]} == {BOB} and {a.id for a in answers[10:]} == {CAROL}
    asked = [c.args["user"] for c in slack.calls_to("users.info")]
    assert sorted(asked) == [BOB, CAROL]
    # And the answer is kept: asking again later costs no call.
    assert gateway.user_info(BOB).id == BOB
    assert len(slack.calls_to("users.info")) == 2


def test_everyone_waiting_gets_the_one_error(slack):
    slack.latency = 0.3
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    answers = _ask_at_once(gateway, ["U0NOBODY"] * 5)
    assert all(isinstance(a, UnknownUser) for a in answers)
    assert len(slack.calls_to("users.info")) == 1
    # An error is not kept: the next asker asks Slack again.
    with pytest.raises(UnknownUser):
        gateway.user_info("U0NOBODY")
    assert len(slack.calls_to("users.info")) == 2


def test_a_lookup_pool_is_not_taken_by_waiters(slack):
    """With a pool of one thread, ten asks for one person and one for another
    still finish: waiters wait on the answer, not in the pool."""
    slack.latency = 0.2
    gateway = SlackGateway(BOT_TOKEN, slack.api_url)
    with ThreadPoolExecutor(1) as pool:
        asked = [gateway.ask_user(BOB, pool) for _ in range(10)] + [gateway.ask_user(CAROL, pool)]
        assert [f.result(timeout=10).id for f in asked] == [BOB] * 10 + [CAROL]
    assert len(slack.calls_to("users.info")) == 2


def test_replies_to_a_response_url_follow_the_environment_s_proxy_settings(slack, monkeypatch):
    """An admin behind a proxy sets HTTP(S)_PROXY, and NO_PROXY for what bypasses it:
    the replies to a /meet follow them, as requests does by default (they are read
    once per host, not once per reply)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]  # a proxy that is not there: nothing listens
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{nobody}")
    url = slack.make_response_url("proxied")
    assert SlackGateway(BOT_TOKEN, slack.api_url).respond(url, "via the proxy") is False
    assert slack.responses["proxied"] == []

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert SlackGateway(BOT_TOKEN, slack.api_url).respond(url, "straight to Slack") is True
    assert [r["text"] for r in slack.responses["proxied"]] == ["straight to Slack"]
