"""`meetbot demo`: the offline tour runs the real bot and cleans up after itself.

Run as a newcomer would: the installed `meetbot` console script, no
configuration in the environment, once replaying `examples/demo.txt` and once
at the interactive prompt in a real terminal (tmux), because the prompt, the
colours and Ctrl-D/quit handling only exist there.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEETBOT = Path(sys.executable).parent / "meetbot"  # the console script next to this python


def _env() -> dict[str, str]:
    """The caller's environment without any meetbot configuration: the demo needs none."""
    return {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("SLACK_", "AMS_", "MEETBOT_")) or k in ("DATABASE_URL", "PORT"))
    }


def run_demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MEETBOT), "demo", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


def test_example_script_shows_dms_join_checks_and_ended_edits() -> None:
    r = run_demo("--script", "examples/demo.txt")
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    for person in ("alice", "bob", "carol", "dave"):
        assert f"DM to {person} " in out, person
    assert "✓ joins now" in out
    assert "✗" not in out  # no refused link, no failed line
    assert "POST /Conference/rest/v2/broadcasts/create" in out  # the AMS calls are shown
    # The scheduler ended the room: the DMs and the channel card were edited in place.
    assert re.search(r"DM to bob \(edited\)\s+○ standup has ended", out), out
    assert re.search(r"#general \(edited\)\s+○ standup has ended", out), out
    assert "\x1b[" not in out  # plain text when stdout is not a terminal
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "lines, complaint",
    [
        (["/meet list", "expect a room called narnia"], "expected 'a room called narnia'"),
        (["/meet list", "frobnicate"], "unknown command 'frobnicate'"),
    ],
    ids=["failing-expect", "unknown-command"],
)
def test_a_failing_line_stops_the_script_with_a_non_zero_exit(
    tmp_path: Path, lines: list[str], complaint: str
) -> None:
    script = tmp_path / "tour.txt"
    script.write_text("\n".join([*lines, "/meet standup @bob"]) + "\n", encoding="utf-8")
    r = run_demo("--script", str(script))
    assert r.returncode == 1, r.stdout + r.stderr
    assert complaint in r.stdout
    assert f"{script}:2: this line failed" in r.stdout
    assert "Creating your room" not in r.stdout  # nothing after the failing line ran


# -- the interactive prompt, in a real terminal ------------------------------------------
def _tmux(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tmux", "-L", sock, "-f", "/dev/null", *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def _screen(sock: str, *, escapes: bool = False) -> str:
    args = ["capture-pane", "-p", "-J", "-S", "-2000", "-t", "demo"]
    return _tmux(sock, *args, *(["-e"] if escapes else [])).stdout


def _wait_screen(sock: str, predicate, what: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = _screen(sock)
        if predicate(screen):
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"the terminal never showed {what}; it shows:\n{screen}")
        time.sleep(0.1)


def _processes_with(marker: str) -> list[int]:
    """Pids whose environment carries ``marker`` (the demo and anything it started)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_interactive_prompt_in_a_terminal_shows_dms_and_quits_cleanly() -> None:
    if shutil.which("tmux") is None:
        pytest.fail(
            "tmux is required to drive `meetbot demo` in a real terminal and is not installed; "
            "install it (`apt-get install -y tmux`); .ci/run does so on CI"
        )
    sock = f"meetbot-demo-test-{uuid.uuid4().hex[:8]}"
    marker = f"MEETBOT_DEMO_TEST_MARK={uuid.uuid4().hex}"
    # `env` puts the marker on the demo process only, not on the shell that stays behind.
    command = f'env {marker} {MEETBOT} demo; echo "[demo exited $?]"; exec sleep 120'
    started = _tmux(
        sock, "new-session", "-d", "-s", "demo", "-x", "220", "-y", "60", "-c", str(REPO), command
    )
    assert started.returncode == 0, started.stderr
    try:
        banner = _wait_screen(sock, lambda s: "alice> " in s, "the prompt")
        ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", banner)]
        assert len(ports) == 3, banner  # the bot, the Slack stand-in, the AMS stand-in
        assert all(_port_open(p) for p in ports)

        _tmux(sock, "send-keys", "-t", "demo", "-l", "/meet standup @bob for 15m")
        _tmux(sock, "send-keys", "-t", "demo", "Enter")
        screen = _wait_screen(
            sock,
            lambda s: "Personal links went by DM" in s and s.count("alice> ") >= 2,
            "the room's DMs",
        )
        bob = screen[screen.index("DM to bob") :]
        assert "invited you to standup" in bob
        assert "✓ joins now" in bob
        assert "\x1b[" in _screen(sock, escapes=True)  # colour on a terminal

        _tmux(sock, "send-keys", "-t", "demo", "-l", "quit")
        _tmux(sock, "send-keys", "-t", "demo", "Enter")
        _wait_screen(sock, lambda s: "[demo exited" in s, "the demo exiting")
        assert "[demo exited 0]" in _screen(sock)
        assert not [p for p in ports if _port_open(p)], "a port was left open"
        assert _processes_with(marker) == [], "a demo process was left behind"
    finally:
        _tmux(sock, "kill-server")
