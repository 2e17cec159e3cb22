"""A server as a child process, for the tests and the benchmarks.

Both run ``meetbot serve`` (and the benchmarks a bare Bolt app) exactly as an
operator would, on 127.0.0.1, with its output in a file, and need the same
three things from it: start it and wait until it answers, read its output
when something went wrong, and stop it (SIGTERM, then SIGKILL after a grace).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

__all__ = ["ServerFailed", "ServerProcess", "meetbot_argv"]


class ServerFailed(AssertionError):
    """The server exited or did not answer in time; the message ends with its output."""


def meetbot_argv(module: str = "bot.ops.cli") -> list[str]:
    """``meetbot serve`` on loopback, through this interpreter (no installed script needed)."""
    return [sys.executable, "-m", module, "serve", "--host", "127.0.0.1"]


class ServerProcess:
    """A child process serving HTTP on 127.0.0.1:``port``, output captured to ``log_path``.

    It is up once ``GET ready_path`` answers at all: ``/readyz`` may say 503
    on purpose (a test with AMS down), which still means it is serving.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        port: int,
        log_path: Path,
        *,
        ready_path: str = "/readyz",
        cwd: Path | None = None,
    ) -> None:
        self.argv = argv
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.ready_path = ready_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        with open(self.log_path, "ab") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd
            )
        self.started()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"{self.argv} exited {self.proc.returncode}:\n{self.log()}")
            try:
                requests.get(self.url + self.ready_path, timeout=5)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        raise ServerFailed(f"{self.argv} did not come up:\n{self.log()}")

    def started(self) -> None:
        """Called once the child exists (the benchmarks register it for clean-up)."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, and SIGKILL if it has not stopped within ``timeout``; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.terminate()
