"""``make run``'s runner (scripts/run.py): SIGTERM or Ctrl-C stops the receiver and the sandbox,
waits for them, and leaves nothing listening."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import SECRET

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    """Something answers HTTP there (the sandbox's credits want a key: 401 will do)."""
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_receiver_and_the_sandbox(tmp_path: Path, signum: int) -> None:
    receiver_port, sandbox_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "BFL_"))},
        "PYTHONPATH": str(ROOT),
        "RECEIVER_PORT": str(receiver_port),
        "SANDBOX_PORT": str(sandbox_port),
        "RECEIVER_WEBHOOK_SECRET": SECRET,
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'receiver.db'}",
        "RECEIVER_STORAGE_URL": f"file://{tmp_path / 'data' / 'samples'}",
        "RECEIVER_LOG_LEVEL": "warning",
    }
    runner = subprocess.Popen(
        [sys.executable, "-m", "scripts.run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not (
            answers(f"http://127.0.0.1:{receiver_port}/healthz")
            and answers(f"http://127.0.0.1:{sandbox_port}/v1/credits")
        ):
            assert runner.poll() is None, runner.communicate()[0].decode()
            assert time.monotonic() < deadline, "make run did not come up"
            time.sleep(0.1)
        children = children_of(runner.pid)
        assert len(children) == 2  # the sandbox and the receiver
        runner.send_signal(signum)
        output = runner.communicate(timeout=60)[0].decode()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 0, output
    assert f"{signal.Signals(signum).name}: stopping" in output
    assert "Traceback" not in output
    assert "Aborted" not in output  # stopped gracefully, not interrupted
    assert not [pid for pid in children if alive(pid)]
    assert not listening(receiver_port)
    assert not listening(sandbox_port)
    assert not (tmp_path / ".env").exists()  # the secret came from the environment
