"""scripts/test's machine set-up, run for real with stand-ins for the system's tools.

The script is run with a PATH that holds only bash, python3, a few coreutils
and stand-ins (``id``, ``apt-get``, PostgreSQL's tools) that record how they
were called and do what the real ones would: ``apt-get install tmux`` makes a
``tmux`` appear, ``pg_ctlcluster start`` makes a server answer on the port.
So the tests see exactly what the script would install and start on a fresh
Debian machine, as root and as anyone else, without touching this one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
#: Real tools: what a fresh Debian has (coreutils, grep), for the script and the stand-ins.
REAL = ("bash", "basename", "chmod", "cp", "dirname", "env", "grep", "sleep", "touch")

LOG = 'echo "$(basename "$0") $*" >>"$STUB_DIR/calls"'
STUBS = {
    "id": '[ "$1" = -u ] && echo "$STUB_UID"',
    "runuser": 'while [ "$1" != -- ]; do shift; done; shift; exec "$@"',
    "psql": textwrap.dedent(
        """\
        case "$*" in
          *hba_file*) echo "$STUB_DIR/pg_hba.conf" ;;
          *pg_database*) [ -e "$STUB_DIR/db" ] && echo 1 || true ;;
        esac"""
    ),
    "createdb": 'touch "$STUB_DIR/db"',
    "apt-get": textwrap.dedent(
        """\
        [ "$1" = install ] || exit 0
        for pkg in "$@"; do
          case "$pkg" in
            tmux|chromium) printf '#!/bin/sh\\n' >"$STUB_DIR/bin/$pkg" ;;
            chromium-driver) printf '#!/bin/sh\\n' >"$STUB_DIR/bin/chromedriver" ;;
            postgresql) cp "$STUB_DIR/pg/"* "$STUB_DIR/bin/" ;;
          esac
          chmod +x "$STUB_DIR/bin/"*
        done"""
    ),
}
# What installing PostgreSQL brings: a cluster that answers once started.
PG_TOOLS = {
    "pg_lsclusters": 'echo "15 main $STUB_PG_PORT down postgres /var/lib/x /var/log/x"',
    "pg_ctlcluster": textwrap.dedent(
        """\
        case "$*" in
          *start*) python3 -c '
        import socket, sys, time
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16); s.settimeout(0.2)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try: s.accept()[0].close()
            except OSError: pass
        ' "$STUB_PG_PORT" >/dev/null 2>&1 &
            echo $! >"$STUB_DIR/listener.pid" ;;
        esac"""
    ),
}


def write_stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/bash\n{LOG}\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path):
    """A fresh machine: no tmux, no Chromium, no PostgreSQL; returns a runner."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "pg").mkdir()
    for name in REAL:
        os.symlink(shutil.which(name), bin_dir / name)
    os.symlink(os.path.realpath(sys.executable), bin_dir / "python3")
    for name, body in STUBS.items():
        write_stub(bin_dir / name, body)
    for name, body in PG_TOOLS.items():
        write_stub(tmp_path / "pg" / name, body)
    (tmp_path / "calls").touch()
    port = free_port()

    class Machine:
        dir = tmp_path
        pg_port = port

        def run(self, uid: int) -> subprocess.CompletedProcess[str]:
            env = {
                "PATH": str(bin_dir),
                "HOME": str(tmp_path),
                "STUB_DIR": str(tmp_path),
                "STUB_UID": str(uid),
                "STUB_PG_PORT": str(port),
                "MEETBOT_TEST_POSTGRES_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/test",
            }
            return subprocess.run(
                ["bash", str(REPO / "scripts" / "test"), "--setup-only"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        def calls(self) -> list[str]:
            return (tmp_path / "calls").read_text().splitlines()

        def install(self, *names: str) -> None:
            for name in names:
                write_stub(bin_dir / name, "")

        def cluster(self) -> None:
            """An installed, stopped cluster (PostgreSQL's tools present)."""
            for name, body in PG_TOOLS.items():
                write_stub(bin_dir / name, body)

    yield Machine()
    pid_file = tmp_path / "listener.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_as_a_user_it_says_exactly_what_to_install(machine):
    result = machine.run(uid=1000)
    assert result.returncode == 1
    err = result.stderr
    assert "packages: tmux chromium chromium-driver" in err
    assert "sudo apt-get install -y tmux chromium chromium-driver" in err
    assert f"PostgreSQL answering at 127.0.0.1:{machine.pg_port}" in err
    assert "sudo apt-get install -y postgresql" in err
    assert "host all all 127.0.0.1/32 trust" in err
    assert "sudo -u postgres createdb test" in err
    assert not [c for c in machine.calls() if c.startswith(("apt-get", "pg_", "runuser"))]


def test_as_a_user_with_a_stopped_cluster_it_says_to_start_it(machine):
    machine.install("tmux", "chromium", "chromedriver")
    machine.cluster()
    result = machine.run(uid=1000)
    assert result.returncode == 1
    assert "packages:" not in result.stderr
    assert "sudo pg_ctlcluster 15 main start" in result.stderr
    assert "apt-get install -y postgresql" not in result.stderr


def test_as_root_on_a_fresh_machine_it_installs_and_starts_everything(machine):
    (machine.dir / "pg_hba.conf").write_text(
        "local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    result = machine.run(uid=0)
    assert result.returncode == 0, result.stderr
    calls = machine.calls()
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert installs == [
        "apt-get install -y -qq tmux chromium chromium-driver",
        "apt-get install -y -qq postgresql",
    ]
    assert calls.count("apt-get update -qq") == 1
    assert "pg_ctlcluster --skip-systemctl-redirect 15 main start" in calls
    assert "pg_ctlcluster --skip-systemctl-redirect 15 main reload" in calls
    hba = (machine.dir / "pg_hba.conf").read_text().splitlines()
    assert hba[:2] == ["host all all 127.0.0.1/32 trust", "host all all ::1/128 trust"]
    assert hba[2:] == ["local all postgres peer", "host all all 127.0.0.1/32 scram-sha-256"]
    assert "createdb test" in calls and (machine.dir / "db").exists()
    assert "the machine is ready" in result.stderr
    # Run again: nothing left to do.
    before = len(machine.calls())
    again = machine.run(uid=0)
    assert again.returncode == 0 and again.stderr == ""
    assert len(machine.calls()) == before


def test_as_root_an_installed_cluster_is_started_not_reinstalled(machine):
    machine.install("tmux", "chromium", "chromedriver")
    machine.cluster()
    (machine.dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 md5\n")
    (machine.dir / "db").touch()  # the test database exists already
    result = machine.run(uid=0)
    assert result.returncode == 0, result.stderr
    calls = machine.calls()
    assert not [c for c in calls if c.startswith("apt-get")]
    assert "pg_ctlcluster --skip-systemctl-redirect 15 main start" in calls
    assert not any("reload" in c or c.startswith("createdb") for c in calls)
    # Its authentication is the owner's business: not changed.
    assert (machine.dir / "pg_hba.conf").read_text() == "host all all 127.0.0.1/32 md5\n"


def test_everything_present_means_nothing_to_do(machine):
    machine.install("tmux", "chromium", "chromedriver")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        machine.pg_port = server.getsockname()[1]
        # The run's URL uses the machine's port: point it at this server.
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "test"), "--setup-only"],
            env={
                "PATH": str(machine.dir / "bin"),
                "STUB_DIR": str(machine.dir),
                "STUB_UID": "1000",
                "MEETBOT_TEST_POSTGRES_URL": (
                    f"postgresql+psycopg://postgres@127.0.0.1:{machine.pg_port}/test"
                ),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert not [c for c in machine.calls() if not c.startswith("id ")]


def test_readme_first_screen_is_the_demo_then_the_tests():
    """A newcomer's two commands: one shows the bot working with nothing configured
    (tests/test_demo.py runs that tour), the other is this script."""
    import re

    readme = (REPO / "README.md").read_text()
    first_screen = readme.split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", first_screen, re.S)
    assert len(blocks) == 2, blocks
    install_and_demo, tests = (b.strip() for b in blocks)
    assert install_and_demo.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert install_and_demo.endswith(".venv/bin/meetbot demo --script examples/demo.txt")
    assert (REPO / "examples" / "demo.txt").is_file()
    assert tests == "./scripts/test"
    assert "meetbot serve" not in install_and_demo
