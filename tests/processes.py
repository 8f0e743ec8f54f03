"""A receiver in a process of its own, for tests that kill, stop or starve it for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers import base_url, loopback_socket
from tests.support import SECRET, eventually


class ReceiverProcess:
    """``bfl-receiver serve --fd N`` on a loopback socket that outlives restarts.

    The socket stays open in the test, so a restarted receiver answers at the same URL and
    requests sent while it is down wait in the backlog instead of being refused. Its log
    goes to ``log_path``, which tests read to see what it said.
    """

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, "RECEIVER_WEBHOOK_SECRET": SECRET, **env}
        self.log_path = log_path
        self.sock = loopback_socket()
        self.url = base_url(self.sock)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ReceiverProcess:
        fd = self.sock.fileno()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "receiver.cli", "serve", "--fd", str(fd)],
                env=self.env,
                pass_fds=(fd,),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        eventually(self.healthy, timeout=30)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> httpx.Response:
        return httpx.get(self.url + "/readyz", timeout=15)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot die of SIGKILL late
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def hold_sqlite_write_lock(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Another process that takes SQLite's write lock on ``path`` and holds it ``seconds``;
    returns once the lock is held."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n",
            str(path),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    if holder.stdout.readline() != b"locked\n":
        holder.kill()
        raise RuntimeError(f"could not lock {path}")
    return holder
