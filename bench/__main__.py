"""``python -m bench [--quick] [--only NAME,...] [--profile DIR]``.

Runs each benchmark against the real ``meetbot serve`` and the loopback
doubles and prints one line per measured figure: the figure, the limit it is
compared with (measured in the same run where it is a floor), their ratio and
the target. Full mode exits 1 when a target is missed or something was not
delivered/revoked exactly once; ``--quick`` runs small versions that check
only the latter (exit 1 on a correctness failure, never on speed).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import burst, fanout, footprint, harness, link, minting, replicas, sweep
from bench.harness import BenchFailure, Outcome

#: In the order they run; the figures of issue 15 (docs/benchmarks.md).
BENCHMARKS: dict[str, Callable[[bool], Outcome]] = {
    "tokens": minting.run,  # report only
    "footprint": footprint.run,  # 5. memory, and the list queries at 10,000 rooms
    "link": link.run,  # 1. time to link, alone
    "burst": burst.run,  # 2. the morning burst (and 1. during it)
    "fanout": fanout.run,  # 3. fan-out under the caps
    "replicas": replicas.run,  # 4. three replicas on one PostgreSQL
    "sweep": sweep.run,  # 6. the sweep, one replica
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu}; "
        f"Python {platform.python_version()} ({platform.python_implementation()}); "
        f"{platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small runs that check correctness, not speed"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each bot under bench.profiled and write per-thread CPU profiles to DIR",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="hard stop in seconds (default 300 / 900)"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    if args.profile:
        harness.PROFILE_DIR = args.profile.resolve()
    harness.start_watchdog(args.timeout or (300 if args.quick else 900))

    mode = "quick (correctness only)" if args.quick else "full"
    print(f"meetbot benchmarks, {mode}; {machine()}", flush=True)
    started = time.monotonic()
    failures: list[str] = []
    missed: list[str] = []
    for name in names:
        harness.PROFILE_TAG = name
        t = time.monotonic()
        try:
            outcome = BENCHMARKS[name](args.quick)
        except BenchFailure as e:
            outcome = Outcome(failures=[str(e)])
        except Exception:  # a crash is a failure to report, not a reason to skip the rest
            outcome = Outcome(failures=[traceback.format_exc()])
        finally:
            harness.cleanup()
        for line in outcome.lines:
            print(line.render(judged=not args.quick), flush=True)
            if not line.met:
                missed.append(line.name)
        for f in outcome.failures:
            print(f"FAILED {name}: {f}", flush=True)
            failures.append(f"{name}: {f}")
        print(f"  .. {name} took {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    total = time.monotonic() - started
    print(
        f"done in {total:.0f} s: {len(failures)} correctness failure(s), "
        f"{len(missed)} missed target(s)" + (" (not judged in --quick)" if args.quick else ""),
        flush=True,
    )
    if args.profile:
        print(f"profiles in {args.profile}: python -m bench.profiled report DIR/<bench>-<port>")
    if failures:
        return 1
    if missed and not args.quick:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
