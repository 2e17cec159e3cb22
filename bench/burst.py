"""2. The morning burst: 300 ``/meet``s from 100 people within 10 s, AMS at 800 ms per call.

The workload. 100 people each open three rooms, 3.3 s apart: ``/meet`` number
i (0..299) comes from person ``i mod 100`` and is due ``i x 10 s / 300`` after
the start (open loop: Slack sends when people type, not when the bot is
ready), from a separate load-generator process (``bench/load.py``) on up to
32 connections at once (c=32). Each person posts in their team's channel: 25
channels of four people, so each channel gets a card every 0.83 s, faster
than the 1 post/s Slack allows there. The cards are where Slack's caps bind
(12 per channel need 11 s), the /meets' arrival and AMS's 800 ms set the
rest. No invitees: 300 DMs and 300 cards are the 600 posts Slack's workspace
cap lets through in a minute, so no DM has to wait for the cap and the time
to each DM is the bot's doing (with five invitees each it would be 2,100
posts, three and a half minutes of cap; figure 1 measures invitees alone).
The Slack double takes 50 ms per call and enforces 1 post/s per channel and
600 a minute; the bot runs on SQLite with its defaults.

Figures and targets:

* every ack under Slack's 3 s;
* ack p99 <= 2 x the p99 of the bare Bolt floor (``bench/floor.py``) sent the
  same schedule from the same load generator just before, in the same run;
* every room created once, every DM and card delivered exactly once;
* the whole fan-out, from the first ``/meet`` sent to the last post Slack
  accepted, <= 1.15 x the time Slack's caps allow: ``harness.earliest_finish``
  over the 600 posts, each available at its ``/meet``'s send time + an AMS
  create at 800 ms + a post (both timed in this run);
* time to link during the burst (figure 1): the requester's DM, p50 <= 1.15 x
  and p99 <= 1.5 x an AMS create (800 ms) + a post.
"""

from __future__ import annotations

import dataclasses
import sys

from bench.harness import (
    Line,
    Meet,
    Outcome,
    Server,
    call_floor,
    check_delivered,
    command_body,
    cpu_seconds,
    deliveries,
    doubles,
    earliest_finish,
    fire,
    free_port,
    link_times,
    log,
    meetbot,
    percentile,
    posted,
    posts_429,
    schedule_finish,
    settled,
    user_ids,
    wait_until,
    workdir,
)
from bench.link import SLACK_CAPS, SLACK_LATENCY_S, link_lines
from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble

AMS_LATENCY_S = 0.8
CONCURRENCY = 32
ACK_LIMIT_MS = 3000.0
ACK_P99_TARGET = 2.0
FANOUT_TARGET = 1.15
CREATE = r"^/Conference/rest/v2/broadcasts/create$"


@dataclasses.dataclass(frozen=True)
class Workload:
    meets: int = 300
    people: int = 100
    spread_s: float = 10.0
    channels: int = 25


FULL = Workload()
QUICK = Workload(meets=30, people=15, spread_s=1.0, channels=15)


def run(quick: bool = False) -> Outcome:
    with doubles(latency=SLACK_LATENCY_S, **SLACK_CAPS) as (ams, slack):
        return measure(ams, slack, QUICK if quick else FULL, samples=3 if quick else 5)


def plan(slack: SlackDouble, w: Workload, prefix: str) -> list[Meet]:
    people = user_ids(prefix, w.people)
    for u in people:
        slack.add_user(u, u.lower())
    channels = [f"C0{prefix}{j:04d}" for j in range(w.channels)]
    for c in channels:
        slack.add_channel(c, c.lower())
    return [
        Meet(
            f"{prefix.lower()}-{i:04d}",
            people[i % w.people],
            (),
            channels[(i % w.people) % w.channels],
        )
        for i in range(w.meets)
    ]


def bodies(slack: SlackDouble, meets: list[Meet]) -> list[str]:
    return [command_body(slack, m.requester, m.channel, m.text) for m in meets]


def measure(ams: AmsDouble, slack: SlackDouble, w: Workload, samples: int) -> Outcome:
    out = Outcome()
    ams.latency = AMS_LATENCY_S
    floor_calls = call_floor(ams, slack, samples=samples)
    log(f"burst: {floor_calls.label()} (medians, this run)")
    meets = plan(slack, w, "BRS")
    floor_meets = plan(slack, w, "FLR")
    offsets = [i * w.spread_s / w.meets for i in range(w.meets)]
    warm = [command_body(slack, m.requester, m.channel, "help") for m in meets[:20]]
    with workdir() as wd:
        url = f"sqlite:///{wd / 'burst.db'}"
        bot = meetbot(wd, ams, slack, url)
        floor_port = free_port()
        floor = Server(
            [sys.executable, "-m", "bench.floor", str(floor_port)],
            bot.env,
            floor_port,
            wd / "floor.log",
        )
        floor.ready_path = "/healthz"
        with bot, floor:
            # The floor first, while the bot is idle: the same schedule, the same client.
            fl = fire(
                floor.url + "/slack/events",
                bodies(slack, floor_meets),
                concurrency=CONCURRENCY,
                warmup=warm,
                offsets=offsets,
            )
            out.check(all(s.status == 200 for s in fl), "floor: a request was not answered 200")
            floor_p99 = percentile([s.latency * 1000 for s in fl], 0.99)
            cpu = cpu_seconds(bot.pid)
            res = fire(
                bot.url + "/slack/events",
                bodies(slack, meets),
                concurrency=CONCURRENCY,
                warmup=warm,
                offsets=offsets,
            )
            sent = [dataclasses.replace(m, sent=s.due) for m, s in zip(meets, res, strict=True)]
            acks = [s.latency * 1000 for s in res]
            bad = [s for s in res if s.status != 200 or "Creating" not in s.text]
            out.check(not bad, f"{len(bad)} /meets not acked 'Creating…', e.g. {bad[:2]}")
            lag = max(s.started - s.due for s in res)
            log(
                f"burst: acks p50 {percentile(acks, 0.5):.1f} ms p99 {percentile(acks, 0.99):.1f} "
                f"ms max {max(acks):.1f} ms (floor p50 "
                f"{percentile([s.latency * 1000 for s in fl], 0.5):.1f} p99 {floor_p99:.1f} ms); "
                f"sent at most {lag * 1000:.1f} ms late"
            )
            expected = 2 * w.meets
            wait_until(
                lambda: len(posted(slack)) >= expected,
                timeout=120,
                interval=0.2,
                what=f"{expected} posts of the burst",
            )
            settled(url)
            cpu = cpu_seconds(bot.pid) - cpu
            creates = ams.count("POST", CREATE)
            out.check(creates == w.meets, f"{creates} AMS creates for {w.meets} /meets")
            check_delivered(out, slack, sent, "burst")
            requester, _ = link_times(slack, sent)
            got = deliveries(slack)
            last_post = max(at for m in sent for ats in got[m.topic].values() for at in ats)
            limited, calls = posts_429(slack)
        out.check(bot.stop() == 0, f"meetbot serve did not stop cleanly:\n{bot.tail()}")
    t0 = min(m.sent for m in sent)
    posts = [p for m in sent for p in m.posts(floor_calls.link_s)]
    caps = {
        "rate": SLACK_CAPS["per_channel_rate"],
        "cap": (SLACK_CAPS["workspace_cap_per_minute"], 60.0),
    }
    allowed = earliest_finish(posts, **caps) - t0
    schedule = schedule_finish(posts, **caps) - t0
    log(
        f"burst: last post {last_post - t0:.2f} s after the first /meet, caps allow "
        f"{allowed:.2f} s (a schedule under both caps ends at {schedule:.2f} s, the last "
        f"/meet's posts exist at {max(m.sent for m in sent) - t0 + floor_calls.link_s:.2f} s); "
        f"{limited} of {calls} chat.postMessage answered 429; meetbot used {cpu:.1f} s of CPU "
        f"from the first /meet to the last post ({cpu / max(1e-9, last_post - t0):.0%} of a core)"
    )
    out.lines += [
        Line(
            "burst ack max",
            max(acks),
            ACK_LIMIT_MS,
            "ms",
            "Slack's 3 s",
            1.0,
            note=f"{w.meets} /meets in {w.spread_s:.0f} s, c={CONCURRENCY}",
        ),
        Line(
            "burst ack p99",
            percentile(acks, 0.99),
            floor_p99,
            "ms",
            "floor p99, same load",
            ACK_P99_TARGET,
            note=f"p50 {percentile(acks, 0.5):.1f} ms",
        ),
        Line(
            "burst fan-out time",
            last_post - t0,
            allowed,
            "s",
            "time the caps allow",
            FANOUT_TARGET,
            note=f"{w.meets} DMs + {w.meets} cards in {w.channels} channels, "
            f"{limited} of {calls} answered 429",
        ),
    ]
    out.lines += link_lines("burst", requester, [], floor_calls)
    return out


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
    for f in result.failures:
        print("FAILED:", f)
