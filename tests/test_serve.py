"""`meetbot serve` as one process: it stops cleanly and says why when it cannot start."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.conftest import ALICE, BOB, bot_env
from tests.helpers import db_rows, dm_links, rooms_on_ams


def test_sigterm_finishes_the_work_in_hand_then_stops(bot, sender, slack, ams, tmp_path):
    ams.latency = 0.5  # the create is still running when the signal comes
    r = sender.command(f"standup <@{BOB}>", user_id=ALICE)
    assert r.status_code == 200
    time.sleep(0.1)  # the signal must land while the create is in flight, not before the ack
    assert bot.terminate(timeout=30) == 0
    # Done before the stop, not left behind: the room is open, both DMs went out.
    assert len(rooms_on_ams(ams)) == 1
    (room,) = db_rows(f"sqlite:///{tmp_path / 'meetbot.db'}", "rooms")
    assert room["state"] == "active"
    assert dm_links(slack, ALICE) and dm_links(slack, BOB)


def test_a_port_in_use_stops_serve_with_one_line(ams, slack, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = bot_env(ams, slack, f"sqlite:///{tmp_path}/x.db", PORT=str(taken.getsockname()[1]))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bot.ops.cli", "serve", "--host", "127.0.0.1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
        )
    finally:
        taken.close()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "cannot listen on 127.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr
