"""4. Replicas: three ``meetbot serve`` processes on one PostgreSQL.

A fresh database per workload (migrated once with ``meetbot db upgrade``, as
production's Job does, before the three start), and the ``/meet``s spread over
the replicas in turn, as a load balancer would. Slack's caps are shared by
every replica through the database (``bot/slack/pacing.py``).

* The two fan-outs of ``bench.fanout`` (10 x 31 at 600 a minute, and 300
  invitees with the cap at 60 per 10 s): each <= 1.15 x the time the caps
  allow (``harness.earliest_finish``), fewer than 5% of ``chat.postMessage``
  calls answered 429, every DM and card delivered exactly once.
* The sweep of ``bench.sweep``, 5,000 rooms, now by all three replicas: <= 1.15 x
  the ideal for their AMS concurrency together (5,000 x 2 x 20 ms / (3 x 8) =
  8.3 s), each room stopped and deleted exactly once (``sweep.REVOKE_CALLS``).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

from bench import fanout, sweep
from bench.harness import (
    Outcome,
    call_floor,
    doubles,
    meetbot,
    postgres_database,
    upgrade_database,
    workdir,
)

REPLICAS = 3
TIME_TARGET = 1.15
SHARE_TARGET = 0.05


def run(quick: bool = False) -> Outcome:
    out = Outcome()
    # --quick: the capped fan-out only, where sharing the caps between replicas matters.
    for s in fanout.scenarios(quick)[1:] if quick else fanout.scenarios(quick):
        with doubles(latency=fanout.SLACK_LATENCY_S, **s.double_caps()) as (ams, slack):
            floor = call_floor(ams, slack)
            meets = fanout.meets_for(slack, s, "REP")
            with postgres_database() as url, workdir() as wd, ExitStack() as stack:
                bots = [meetbot(wd, ams, slack, url, **s.bot_env()) for _ in range(REPLICAS)]
                upgrade_database(bots[0])
                for bot in bots:
                    stack.enter_context(bot)
                out.lines += fanout.fan_out(
                    out,
                    ams,
                    slack,
                    bots,
                    url,
                    meets,
                    s,
                    floor,
                    time_target=TIME_TARGET,
                    share_target=SHARE_TARGET,
                    tag="replicas",
                )
                stack.close()
                for i, bot in enumerate(bots):
                    code = bot.proc.returncode if bot.proc else None
                    out.check(code == 0, f"replica {i} exited {code}:\n{bot.tail()}")
    with doubles() as (ams, slack):
        out.lines.append(
            sweep.sweep_once(
                out,
                ams,
                slack,
                "postgresql",
                60 if quick else 5000,
                replicas=REPLICAS,
                target=TIME_TARGET,
                tag="replicas sweep",
            )
        )
    return out


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    for line in result.lines:
        print(line.render())
    for f in result.failures:
        print("FAILED:", f)
