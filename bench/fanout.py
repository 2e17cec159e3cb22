"""2. DM fan-out under Slack's rate limits.

``/meet`` with 30 invitees, ten times in a row from one channel, against a
Slack double that allows 1 chat.postMessage per second per channel (DM
channels included), 600 per minute workspace-wide (sliding window), answers
429 + Retry-After past either, and takes 50 ms per call.

"The time the caps allow" is the shortest time in which the delivered
messages fit under both caps, from the first post to the last:
``max over channels (posts in it - 1) / rate`` and
``60 s x floor((all posts - 1) / cap)``. Here: 10 posts in the channel and
10 DMs in each person's DM channel at 1/s give 9 s; 320 posts under 600/min
fit in one window, 0 s. So 9 s. The measured time runs from the moment the
first ``/meet`` is sent to the moment the double accepts the last post.

Targets: all 310 DMs and 10 channel posts delivered, none twice;
time <= 1.15 x 9 s; fewer than 5% of chat.postMessage calls answered 429.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

from bench.harness import (
    Line,
    Outcome,
    doubles,
    log,
    meetbot,
    sender_for,
    user_ids,
    wait_until,
    workdir,
)
from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble

CHANNEL = "C0FANOUT"
RATE_PER_CHANNEL = 1.0
CAP_PER_MINUTE = 600
LATENCY_S = 0.05
TIME_TARGET = 1.15
RATELIMITED_LIMIT = 0.05


def caps_time(per_channel: Counter[str], rate: float, cap: int) -> float:
    """Shortest first-to-last span that fits these posts under both caps."""
    channel_bound = max((n - 1) / rate for n in per_channel.values())
    total = sum(per_channel.values())
    window_bound = 60.0 * math.floor((total - 1) / cap)
    return max(channel_bound, window_bound)


def run(quick: bool = False) -> Outcome:
    with doubles(
        latency=LATENCY_S,
        per_channel_rate=RATE_PER_CHANNEL,
        workspace_cap_per_minute=CAP_PER_MINUTE,
    ) as (ams, slack):
        return measure(ams, slack, quick)


def measure(ams: AmsDouble, slack: SlackDouble, quick: bool) -> Outcome:
    invitees_n = 3 if quick else 30
    rooms_n = 3 if quick else 10
    out = Outcome()
    requester, *invitees = user_ids("FAN", invitees_n + 1)
    for u in [requester, *invitees]:
        slack.add_user(u, u.lower())
    slack.add_channel(CHANNEL, "fanout")
    people = [requester, *invitees]
    expected_dms = rooms_n * len(people)
    expected = expected_dms + rooms_n
    text = "standup " + " ".join(f"<@{u}|{u.lower()}>" for u in invitees)
    with workdir() as wd:
        bot = meetbot(wd, ams, slack, f"sqlite:///{wd / 'fanout.db'}")
        with bot, sender_for(bot, slack) as sender:
            sender.command("help", user_id=requester, channel_id=CHANNEL)  # warm connection
            slack.reset()
            t0 = time.monotonic()
            for _ in range(rooms_n):
                resp = sender.command(text, user_id=requester, channel_id=CHANNEL)
                out.check(
                    resp.status_code == 200 and "Creating" in resp.text,
                    f"/meet not acked: {resp.status_code} {resp.text[:200]}",
                )

            def posted() -> list:
                return [c for c in slack.calls_to("chat.postMessage") if c.status == 200]

            wait_until(
                lambda: len(posted()) >= expected,
                timeout=60 + 3 * expected,
                interval=0.05,
                what=f"{expected} messages delivered",
            )
            ok_calls = posted()
            elapsed = max(c.at for c in ok_calls) - t0
            first = min(c.at for c in ok_calls) - t0
            card_times = sorted(c.at for c in ok_calls if c.args.get("channel") == CHANNEL)
            gaps = [b - a for a, b in zip(card_times, card_times[1:], strict=False)]
            time.sleep(2.5)  # a duplicate would arrive within a paced slot or two
            ok_calls = posted()
            all_calls = slack.calls_to("chat.postMessage")
            limited = slack.ratelimited_count
            rooms = [r for r in ams.broadcasts if not ams.broadcasts[r].get("mainTrackStreamId")]
            per_channel: Counter[str] = Counter()
            out.check(len(rooms) == rooms_n, f"{len(rooms)} rooms on AMS, expected {rooms_n}")
            for u in people:
                check_channel(out, slack, "D" + u, rooms, f"DMs to {u}")
                per_channel["D" + u] = len(slack.dms_to(u))
            check_channel(out, slack, CHANNEL, rooms, "channel posts")
            per_channel[CHANNEL] = len(slack.messages(CHANNEL))
            out.check(
                len(ok_calls) == expected,
                f"{len(ok_calls)} successful chat.postMessage calls, expected {expected}",
            )
        out.check(bot.proc is not None and bot.proc.returncode == 0, "bot did not stop cleanly")
    allowed = caps_time(per_channel, RATE_PER_CHANNEL, CAP_PER_MINUTE)
    log(
        f"fan-out: {len(ok_calls)} posts in {elapsed:.2f} s (caps allow {allowed:.2f} s), "
        f"{limited} of {len(all_calls)} calls answered 429; first post after {first:.2f} s, "
        f"channel posts {', '.join(f'{g:.2f}' for g in gaps)} s apart"
    )
    out.lines.append(
        Line(
            f"fanout {rooms_n}x{len(people)} DMs time",
            elapsed,
            allowed,
            "s",
            "time the caps allow",
            TIME_TARGET,
            note=f"{expected_dms} DMs + {rooms_n} channel posts",
        )
    )
    share = limited / max(1, len(all_calls))
    out.lines.append(
        Line(
            "fanout 429 share",
            share * 100,
            RATELIMITED_LIMIT * 100,
            "%",
            "5% of calls",
            1.0,
            strict=True,
            note=f"{limited} of {len(all_calls)} chat.postMessage",
        )
    )
    return out


def check_channel(
    out: Outcome, slack: SlackDouble, channel: str, rooms: list[str], what: str
) -> None:
    """Exactly one message per room in ``channel``."""
    msgs = slack.messages(channel)
    seen = Counter(r for m in msgs for r in rooms if r in json.dumps(m))
    out.check(
        len(msgs) == len(rooms) and all(seen[r] == 1 for r in rooms),
        f"{what}: {len(msgs)} messages for {len(rooms)} rooms (per room: {dict(seen)})",
    )


if __name__ == "__main__":
    import sys

    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
    for f in result.failures:
        print("FAILED:", f)
