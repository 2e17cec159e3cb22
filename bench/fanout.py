"""3. Fan-out under Slack's caps: how close the bot gets to the time the caps allow.

Two workloads, each on one ``meetbot serve`` (SQLite), against a Slack double
that takes 50 ms per call, counts a post when it answers, allows 1
``chat.postMessage`` per second per channel (DM channels included) and a
workspace cap (a sliding window), and answers 429 + Retry-After past either.
The AMS double answers at once.

* **10 x 31**: ``/meet`` with 30 invitees, ten times in a row from one channel
  (the same 31 people each time). Cap 600 a minute, which never binds here:
  each person's DM channel and the channel get ten posts, 9 s at 1/s.
* **300 invitees, the cap binding**: six ``/meet``s of 50 invitees each (50 is
  the most one ``/meet`` takes, ``handlers.grammar.MAX_INVITEES``), 300
  different people, from one channel: 306 DMs and 6 cards. The double allows
  60 posts per 10 s (``workspace_window=10``) and the bot is told so
  (``MEETBOT_SLACK_POST_CAP=60/10s``): five full windows, about 50 s.

The time is measured from sending the first ``/meet`` to the last post Slack
accepted. The limit, "the time the caps allow", is ``harness.earliest_finish``:
the earliest the last post could be counted given both caps and when each post
could first exist (its ``/meet``'s send time + an AMS create + a post, timed
against the doubles in this run). Targets: <= 1.10 x that, fewer than 1% of
``chat.postMessage`` calls answered 429, every DM and card delivered exactly
once. ``bench.replicas`` runs the same two over three replicas.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.harness import (
    CallFloor,
    Line,
    Meet,
    Outcome,
    Server,
    call_floor,
    check_delivered,
    cpu_seconds,
    doubles,
    earliest_finish,
    log,
    meetbot,
    posted,
    posts_429,
    schedule_finish,
    sender_for,
    settled,
    user_ids,
    wait_until,
    workdir,
)
from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble

SLACK_LATENCY_S = 0.05
CHANNEL = "C0FANOUT"
RATE_PER_CHANNEL = 1.0


@dataclass(frozen=True)
class Scenario:
    """A fan-out workload: ``rooms`` ``/meet``s of ``invitees`` each, under a workspace cap."""

    name: str
    rooms: int
    invitees: int
    same_people: bool  # every room the same people, or different ones each time
    cap: tuple[int, int]  # posts per window (seconds), the double's and the bot's

    def double_caps(self) -> dict[str, float]:
        return {
            "per_channel_rate": RATE_PER_CHANNEL,
            "workspace_cap_per_minute": self.cap[0],
            "workspace_window": float(self.cap[1]),
        }

    def bot_env(self) -> dict[str, str]:
        return {"MEETBOT_SLACK_POST_CAP": f"{self.cap[0]}/{self.cap[1]}s"}


STANDUPS = Scenario("10x31", rooms=10, invitees=30, same_people=True, cap=(600, 60))
CAPPED = Scenario("300 invitees", rooms=6, invitees=50, same_people=False, cap=(60, 10))
QUICK_STANDUPS = Scenario("3x4", rooms=3, invitees=3, same_people=True, cap=(600, 60))
QUICK_CAPPED = Scenario("20 invitees", rooms=2, invitees=10, same_people=False, cap=(10, 2))


def scenarios(quick: bool) -> tuple[Scenario, Scenario]:
    return (QUICK_STANDUPS, QUICK_CAPPED) if quick else (STANDUPS, CAPPED)


def meets_for(slack: SlackDouble, s: Scenario, prefix: str) -> list[Meet]:
    requester = user_ids(prefix + "R", 1)[0]
    pool = user_ids(prefix, s.invitees if s.same_people else s.invitees * s.rooms)
    for u in [requester, *pool]:
        slack.add_user(u, u.lower())
    slack.add_channel(CHANNEL, "fanout")
    meets = []
    for i in range(s.rooms):
        who = pool if s.same_people else pool[i * s.invitees : (i + 1) * s.invitees]
        meets.append(Meet(f"{prefix.lower()}-{i:04d}", requester, tuple(who), CHANNEL))
    return meets


def run(quick: bool = False) -> Outcome:
    out = Outcome()
    for s in scenarios(quick):
        with doubles(latency=SLACK_LATENCY_S, **s.double_caps()) as (ams, slack):
            floor = call_floor(ams, slack)
            meets = meets_for(slack, s, "FAN")
            with workdir() as wd:
                url = f"sqlite:///{wd / 'fanout.db'}"
                bot = meetbot(wd, ams, slack, url, **s.bot_env())
                with bot:
                    out.lines += fan_out(out, ams, slack, [bot], url, meets, s, floor)
                out.check(bot.stop() == 0, f"meetbot serve did not stop cleanly:\n{bot.tail()}")
    return out


def fan_out(
    out: Outcome,
    ams: AmsDouble,
    slack: SlackDouble,
    bots: Sequence[Server],
    url: str,
    meets: list[Meet],
    s: Scenario,
    floor: CallFloor,
    *,
    time_target: float = 1.10,
    share_target: float = 0.01,
    tag: str = "fanout",
) -> list[Line]:
    """Send ``meets`` back to back, spread over ``bots`` in turn as a load balancer
    would; wait for every post; check each landed once; the time and 429 lines."""
    senders = [sender_for(b, slack) for b in bots]
    cpu = sum(cpu_seconds(b.pid) for b in bots)
    try:
        for i, sender in enumerate(senders):  # a warm connection each, as Slack keeps
            sender.command("help", user_id=meets[0].requester, channel_id=f"C0WARM{i}")
        sent = []
        for i, m in enumerate(meets):
            t = time.monotonic()
            resp = senders[i % len(senders)].command(
                m.text, user_id=m.requester, channel_id=m.channel
            )
            sent.append(dataclasses.replace(m, sent=t))
            out.check(
                resp.status_code == 200 and "Creating" in resp.text,
                f"/meet not acked: {resp.status_code} {resp.text[:200]}",
            )
    finally:
        for sender in senders:
            sender.close()
    expected = sum(len(m.people) + 1 for m in meets)
    allowed_at = earliest_finish(
        [p for m in sent for p in m.posts(floor.link_s)], rate=RATE_PER_CHANNEL, cap=s.cap
    )
    wait_until(
        lambda: len(posted(slack)) >= expected,
        timeout=120 + 3 * (allowed_at - sent[0].sent),
        interval=0.1,
        what=f"{expected} posts",
    )
    settled(url)
    cpu = sum(cpu_seconds(b.pid) for b in bots) - cpu
    ok_calls = posted(slack)
    last = max(c.at for c in ok_calls)
    first = min(c.at for c in ok_calls)
    check_delivered(out, slack, sent, f"{tag} {s.name}")
    creates = ams.count("POST", r"^/Conference/rest/v2/broadcasts/create$")
    out.check(creates == len(meets), f"{tag} {s.name}: {creates} AMS creates for {len(meets)}")
    limited, calls = posts_429(slack)
    t0 = sent[0].sent
    schedule = schedule_finish(
        [p for m in sent for p in m.posts(floor.link_s)], rate=RATE_PER_CHANNEL, cap=s.cap
    )
    log(
        f"{tag} {s.name}: {len(ok_calls)} posts, the last {last - t0:.2f} s after the first "
        f"/meet (caps allow {allowed_at - t0:.2f} s; a schedule under both caps ends at "
        f"{schedule - t0:.2f} s); first post after {first - t0:.2f} s; "
        f"{limited} of {calls} chat.postMessage answered 429; {floor.label()}; meetbot "
        f"used {cpu:.1f} s of CPU ({1000 * cpu / len(ok_calls):.1f} ms per post)"
    )
    cap = f"{s.cap[0]}/{s.cap[1]}s"
    return [
        Line(
            f"{tag} {s.name} time",
            last - t0,
            allowed_at - t0,
            "s",
            f"time the caps allow, {cap}",
            time_target,
            note=f"{expected - len(meets)} DMs + {len(meets)} cards, {len(bots)} replica(s)",
        ),
        Line(
            f"{tag} {s.name} 429 share",
            100 * limited / max(1, calls),
            100 * share_target,
            "%",
            f"{share_target:.0%} of calls",
            1.0,
            strict=True,
            note=f"{limited} of {calls} chat.postMessage",
        ),
    ]


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
    for f in result.failures:
        print("FAILED:", f)
