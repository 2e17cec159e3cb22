"""1. Time to link, alone: from sending ``/meet`` to the requester's DM and to the last invitee's.

40 ``/meet``s, one at a time (c=1: each is sent once the previous one's work
is over: its six DMs landed, its requester was told how they went, the
outbox owes nothing), each with five invitees and its own channel, against an AMS
double that takes 200 ms per call and a Slack double that takes 50 ms (with
Slack's caps on: 1 post/s per channel, 600 a minute; nothing here comes near
them). Every ``/meet`` is six people the bot has never seen, so each one
asks Slack who they are (``users.info``): the first ``/meet`` of someone's
morning, the common case with a five-minute cache.

The limit is the least time any bot could take: the calls that must follow
one another before a DM can exist, an AMS create and then the post, each timed
from this process against the doubles just before the run
(``harness.call_floor``, medians of seven). Targets: p50 <= 1.15 x and p99 <=
1.5 x the limit, for the requester's DM and for the last of the five
invitees' DMs (by nearest rank, the p99 of 40 is the slowest).
Afterwards every DM and card must have been delivered exactly once.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from bench.harness import (
    CallFloor,
    Line,
    Meet,
    Outcome,
    call_floor,
    check_delivered,
    doubles,
    link_times,
    log,
    meetbot,
    percentile,
    sender_for,
    settled,
    user_ids,
    wait_until,
    workdir,
)
from bot.sim.ams import AmsDouble
from bot.sim.slack import SlackDouble

AMS_LATENCY_S = 0.2
SLACK_LATENCY_S = 0.05
INVITEES = 5
P50_TARGET = 1.15
P99_TARGET = 1.5
CREATE = r"^/Conference/rest/v2/broadcasts/create$"
#: Slack's caps, as everywhere in the benchmarks: 1 post/s per channel, 600 a minute.
SLACK_CAPS = {"per_channel_rate": 1.0, "workspace_cap_per_minute": 600}


def run(quick: bool = False) -> Outcome:
    with doubles(latency=SLACK_LATENCY_S, **SLACK_CAPS) as (ams, slack):
        return measure(ams, slack, 5 if quick else 40, samples=3 if quick else 7)


def link_lines(tag: str, requester: list[float], last: list[float], floor: CallFloor) -> list[Line]:
    """p50 and p99 of both times against ``floor.link_s`` (used by the burst too)."""
    lines = []
    for who, values in (("requester", requester), (f"last of {INVITEES} invitees", last)):
        if not values:
            continue
        for q, target in ((0.50, P50_TARGET), (0.99, P99_TARGET)):
            lines.append(
                Line(
                    f"link {tag} {who} p{int(q * 100)}",
                    percentile(values, q) * 1000,
                    floor.link_s * 1000,
                    "ms",
                    floor.label(),
                    target,
                    note=f"{len(values)} /meets, max {max(values) * 1000:.0f} ms",
                )
            )
    return lines


def measure(ams: AmsDouble, slack: SlackDouble, n: int, samples: int) -> Outcome:
    out = Outcome()
    ams.latency = AMS_LATENCY_S
    floor = call_floor(ams, slack, samples=samples)
    log(f"link: {floor.label()} (medians, this run)")
    people = user_ids("LNK", n * (INVITEES + 1))
    for u in people:
        slack.add_user(u, u.lower())
    meets = []
    for i in range(n):
        group = people[i * (INVITEES + 1) : (i + 1) * (INVITEES + 1)]
        channel = f"C0LINK{i:04d}"
        slack.add_channel(channel, f"link-{i}")
        meets.append(Meet(f"link-{i:04d}", group[0], tuple(group[1:]), channel))
    with workdir() as wd:
        url = f"sqlite:///{wd / 'link.db'}"
        bot = meetbot(wd, ams, slack, url)
        with bot, sender_for(bot, slack) as sender:
            sender.command("help", user_id=people[0])  # a warm connection, as Slack keeps
            sent = []
            for m in meets:

                def arrived(m: Meet = m) -> bool:
                    done = {c.args.get("channel") for c in slack.calls_to("chat.postMessage")}
                    return all(u in done for u in m.people)

                t = time.monotonic()
                resp = sender.command(m.text, user_id=m.requester, channel_id=m.channel)
                m = dataclasses.replace(m, sent=t)
                sent.append(m)
                out.check(
                    resp.status_code == 200 and "Creating" in resp.text,
                    f"/meet not acked: {resp.status_code} {resp.text[:200]}",
                )
                wait_until(arrived, timeout=30, interval=0.01, what=f"the DMs of {m.topic}")
                # Alone: the next /meet waits until this one's work is over (the
                # requester told how the invitations went, nothing owed to Slack),
                # not only until its DMs landed.
                slack.wait_for_responses(resp.response_key, 1, timeout=30)
                settled(url)
            settled(url)
            creates = ams.count("POST", CREATE)
            out.check(creates == n, f"{creates} AMS creates for {n} /meets")
            check_delivered(out, slack, sent, "link")
            requester, last = link_times(slack, sent)
        out.check(bot.stop() == 0, f"meetbot serve did not stop cleanly:\n{bot.tail()}")
    log(
        "link: requester "
        + ", ".join(f"{v * 1000:.0f}" for v in sorted(requester))
        + " ms; last invitee p50 "
        f"{percentile(last, 0.5) * 1000:.0f} ms"
    )
    out.lines += link_lines("c=1", requester, last, floor)
    return out


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
    for f in result.failures:
        print("FAILED:", f)
