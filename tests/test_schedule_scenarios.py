"""Team-room schedules end to end: a real `meetbot serve`, the doubles, signed requests."""

from __future__ import annotations

from typing import Any

from bot.schedules.service import list_schedules
from bot.sim.slack import SlackDouble, SlackSender
from bot.store import Store
from tests.conftest import ALICE, BOB, CAROL, SOMEBOT, BotProcess, wait_for


def schedules_in(bot: BotProcess, **kw: Any) -> list:
    store = Store(bot.env["DATABASE_URL"])
    try:
        return list_schedules(store, **kw)
    finally:
        store.dispose()


def answers(slack: SlackDouble, response: Any, count: int = 1) -> list[str]:
    return [r.get("text", "") for r in slack.wait_for_responses(response.response_key, count)]


def form(
    *,
    name: str = "retro",
    channel: str | None = "C1",
    at: str = "16:00",
    repeat: str = "days",
    days: tuple[str, ...] = ("fri",),
    day: str | None = None,
    duration: int = 3600,
    people: tuple[str, ...] = (BOB,),
) -> dict[str, dict[str, Any]]:
    """``state.values`` as Slack sends them for the schedule modal."""
    values: dict[str, dict[str, Any]] = {
        "name": {"value": name},
        "channel": {"value": {"type": "conversations_select", "selected_conversation": channel}},
        "time": {"value": {"type": "timepicker", "selected_time": at}},
        "repeat": {"value": {"type": "static_select", "selected_option": {"value": repeat}}},
        "days": {
            "value": {
                "type": "checkboxes",
                "selected_options": [{"value": d} for d in days],
            }
        },
        "date": {"value": {"type": "datepicker", "selected_date": day}},
        "duration": {
            "value": {"type": "static_select", "selected_option": {"value": str(duration)}}
        },
        "invitees": {"value": list(people)},
    }
    return values


def test_schedule_list_and_unschedule_over_slash_commands(
    bot: BotProcess, sender: SlackSender, slack: SlackDouble
) -> None:
    r = sender.command(
        f"schedule standup every weekday at 09:30 for 15m <@{BOB}|bob>", user_id=ALICE
    )
    assert r.status_code == 200 and "Scheduling" in r.text
    (reply,) = answers(slack, r)
    (stored,) = schedules_in(bot)
    assert f"Scheduled *standup* (`{stored.id}`)" in reply
    assert "every weekday at 09:30 (Europe/Berlin)" in reply and f"<@{BOB}>" in reply
    assert (stored.kind, stored.spec, stored.tz) == ("cron", "30 9 * * mon-fri", "Europe/Berlin")
    assert stored.duration == 900 and stored.channel_id == "C1" and stored.creator_id == ALICE
    assert stored.invitees == f'["{BOB}"]' and stored.next_run_at

    r = sender.command("schedules", user_id=CAROL)
    assert r.status_code == 200
    (listing,) = answers(slack, r)
    assert "*standup*" in listing and f"`{stored.id}`" in listing

    r = sender.command(f"unschedule {stored.id}", user_id=BOB)
    assert r.status_code == 200
    (refusal,) = answers(slack, r)
    assert f"Only <@{ALICE}>" in refusal
    assert schedules_in(bot)

    r = sender.command(f"unschedule {stored.id}", user_id=ALICE)
    (done,) = answers(slack, r)
    assert "Stopped *standup*" in done
    assert schedules_in(bot) == []
    (after,) = answers(slack, sender.command("schedules", user_id=ALICE))
    assert "No team rooms" in after


def test_a_bad_time_or_a_bot_is_answered_and_nothing_is_stored(
    bot: BotProcess, sender: SlackSender, slack: SlackDouble
) -> None:
    (bad_time,) = answers(slack, sender.command("schedule standup at 25:00", user_id=ALICE))
    assert "not a time of day" in bad_time
    (bot_invited,) = answers(
        slack, sender.command(f"schedule standup every day at 09:00 <@{SOMEBOT}>", user_id=ALICE)
    )
    assert "is a bot" in bot_invited
    assert schedules_in(bot, include_inactive=True) == []


def test_the_schedule_modal_validates_and_creates(
    bot: BotProcess, sender: SlackSender, slack: SlackDouble
) -> None:
    r = sender.command("schedule", user_id=ALICE, channel_id="C1")
    assert r.status_code == 200
    (opened,) = slack.wait_for_calls("views.open")
    assert opened.ok and opened.args["trigger_id"] == r.trigger_id
    view = opened.args["view"]
    assert view["callback_id"] == "meet_schedule_modal"
    blocks = {b["block_id"]: b for b in view["blocks"]}
    assert blocks["channel"]["element"]["initial_conversation"] == "C1"
    assert {"name", "time", "repeat", "days", "date", "duration", "invitees"} <= set(blocks)

    bad = sender.view_submission(
        "meet_schedule_modal",
        form(name="", repeat="once", day="2020-01-06", people=(SOMEBOT,)),
        user_id=ALICE,
    )
    assert bad.status_code == 200
    body = bad.json()
    assert body["response_action"] == "errors"
    assert set(body["errors"]) == {"name", "date", "invitees"}
    assert "in the past" in body["errors"]["date"]
    assert "bot" in body["errors"]["invitees"]
    assert schedules_in(bot) == []

    ok = sender.view_submission("meet_schedule_modal", form(), user_id=ALICE)
    assert ok.status_code == 200 and not ok.text
    wait_for(lambda: any("Scheduled *retro*" in m.get("text", "") for m in slack.dms_to(ALICE)))
    (stored,) = schedules_in(bot)
    assert (stored.name, stored.spec, stored.duration) == ("retro", "0 16 * * fri", 3600)
    assert stored.channel_id == "C1" and stored.invitees == f'["{BOB}"]'


def test_the_global_shortcut_opens_the_modal_too(
    bot: BotProcess, sender: SlackSender, slack: SlackDouble
) -> None:
    r = sender.shortcut("meet_schedule_shortcut", user_id=CAROL)
    assert r.status_code == 200
    (opened,) = slack.wait_for_calls("views.open")
    assert opened.ok and opened.args["view"]["callback_id"] == "meet_schedule_modal"
    too_long = sender.view_submission(
        "meet_schedule_modal", form(duration=2 * 86400), user_id=CAROL
    )
    assert set(too_long.json()["errors"]) == {"duration"}
