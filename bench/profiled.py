"""Run ``meetbot`` under cProfile on every thread, counting CPU time, not waiting.

``python -m bench.profiled serve --host 127.0.0.1`` with ``MEETBOT_BENCH_PROFILE``
set to a directory: on exit it writes one pstats file per thread group
(``waitress``, ``work``, ``outbox``, ``users``, ``ams``, ``MainThread``, ...)
measured with ``time.thread_time``, so a function's ``tottime`` is the CPU it
used on that group's threads (time blocked on a socket or on a lock is not
counted; ``MEETBOT_BENCH_PROFILE_CLOCK=wall`` counts elapsed time instead).
``python -m bench --profile DIR`` starts the bot this way.
Read with ``python -m pstats DIR/work.pstats`` or ``bench.profiled.report``.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

_profiles: list[tuple[str, cProfile.Profile]] = []
_lock = threading.Lock()
#: ``MEETBOT_BENCH_PROFILE_CLOCK=wall`` counts elapsed time instead (where the time goes
#: when the process is not busy: waiting on AMS, on a database lock, on a pool).
_TIMER = (
    time.perf_counter
    if os.environ.get("MEETBOT_BENCH_PROFILE_CLOCK") == "wall"
    else time.thread_time
)


def _group(name: str) -> str:
    """``waitress-3`` -> ``waitress``, ``work_12`` -> ``work``, ``Thread-5 (run)`` -> ``Thread``."""
    return re.split(r"[-_ ]", name, maxsplit=1)[0] or name


def _on_thread_start(*_args: object) -> None:
    sys.setprofile(None)
    prof = cProfile.Profile(_TIMER)
    with _lock:
        _profiles.append((_group(threading.current_thread().name), prof))
    prof.enable()


def dump(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[cProfile.Profile]] = defaultdict(list)
    with _lock:
        for group, prof in _profiles:
            groups[group].append(prof)
    for group, profs in groups.items():
        stats: pstats.Stats | None = None
        for prof in profs:
            prof.disable()
            prof.create_stats()
            if not prof.stats:  # type: ignore[attr-defined]
                continue
            if stats is None:
                stats = pstats.Stats(prof)
            else:
                stats.add(prof)
        if stats is not None:
            stats.dump_stats(str(directory / f"{group}.pstats"))


def report(directory: Path, limit: int = 25) -> str:
    """CPU seconds per thread group, then the top functions of each by own time."""
    lines = []
    for path in sorted(directory.glob("*.pstats")):
        st = pstats.Stats(str(path))
        total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
        lines.append(f"== {path.stem}: {total:.2f} s CPU")
        ranked = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
        for (file, line, func), (_cc, nc, tt, ct, _) in ranked[:limit]:
            short = "/".join(Path(file).parts[-2:])
            lines.append(f"   {tt:7.3f} own {ct:7.3f} cum {nc:8d}x  {short}:{line} {func}")
    return "\n".join(lines)


def _profile(out: Path, run: Callable[[], object]) -> None:
    threading.setprofile(_on_thread_start)
    main_prof = cProfile.Profile(_TIMER)
    with _lock:
        _profiles.append(("MainThread", main_prof))
    main_prof.enable()
    try:
        run()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        dump(out)


def main() -> None:
    out = Path(os.environ["MEETBOT_BENCH_PROFILE"])
    from bot.ops.cli import main as cli

    _profile(out, lambda: cli(args=sys.argv[1:], standalone_mode=False))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        print(report(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 25))
    else:
        main()
