"""``make run``: the receiver on http://127.0.0.1:8000, with SQLite and images under ./data.

Without ``BFL_API_KEY`` the local sandbox (a BFL-compatible API) is started beside it on
http://127.0.0.1:8001 (``SANDBOX_PORT``), and the receiver is told to accept samples from it and
poll it. A fresh clone has no webhook secret: one is generated into .env (mode 600) and never
printed. ``.env`` is the one the settings find (this folder or a parent), else ``./.env``.

SIGTERM and SIGINT (Ctrl-C) are passed on, as SIGTERM, to the receiver and the sandbox, which
run in process groups of their own: a Ctrl-C reaches them once, through this runner, and they
shut down gracefully instead of being interrupted twice. The runner waits for both before it
exits, so nothing is left listening.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx
from dotenv import dotenv_values

from receiver.envfile import ENV_FILE_NAME, find_env_file
from receiver.settings import BFL_DELIVERY_HOSTS
from sandbox.settings import SandboxSettings

#: A child that has not stopped this long after the signal is killed.
STOP_TIMEOUT = 20.0


class Children:
    """The processes this runner started, and the signal that asked them to stop (if any)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping: int | None = None

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # A group of its own: the terminal's Ctrl-C goes to this runner only, which passes it
        # on once (uvicorn treats a second one as "exit now, skip the graceful shutdown").
        proc = subprocess.Popen(args, env=env, process_group=0)
        self.procs.append(proc)
        return proc

    def forward(self, signum: int, frame: FrameType | None = None) -> None:
        """The signal handler: ask every child still running to stop (SIGTERM: uvicorn's
        graceful shutdown, without the KeyboardInterrupt a SIGINT raises after it)."""
        if self.stopping is None:
            print(f"make run: {signal.Signals(signum).name}: stopping", flush=True)
        self.stopping = signum
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop_all(self) -> None:
        """Stop every child still running and wait for it (killing it after STOP_TIMEOUT)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def env_file() -> Path:
    return find_env_file() or Path(ENV_FILE_NAME)


def ensure_secret(path: Path) -> None:
    if os.environ.get("RECEIVER_WEBHOOK_SECRET") or (
        path.exists() and dotenv_values(path).get("RECEIVER_WEBHOOK_SECRET")
    ):
        return
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    path.touch(mode=0o600)
    path.write_text(text + f"RECEIVER_WEBHOOK_SECRET={secrets.token_urlsafe(32)}\n")
    print(f"make run: wrote a new RECEIVER_WEBHOOK_SECRET to {path} (kept out of git)", flush=True)


def has_api_key(path: Path) -> bool:
    if os.environ.get("BFL_API_KEY"):
        return True
    return path.exists() and bool(dotenv_values(path).get("BFL_API_KEY"))


def start_sandbox(children: Children, host: str, port: int) -> subprocess.Popen[bytes] | None:
    """The sandbox, once it answers; None if a signal came first."""
    url = f"http://{host}:{port}"
    sandbox_cli = [sys.executable, "-c", "from sandbox.cli import main; main()"]
    proc = children.start(
        [*sandbox_cli, "serve", "--host", host, "--port", str(port)],
        # Polling and delivery URLs on this exact host, however a client addressed the
        # sandbox (localhost or 127.0.0.1): it is the one host the receiver allowlists.
        env={**os.environ, "SANDBOX_PUBLIC_URL": url},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and children.stopping is None:
        if proc.poll() is not None:
            raise SystemExit(f"make run: the sandbox did not start (is port {port} free?)")
        try:
            httpx.get(f"{url}/v1/credits", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    children.stop_all()
    if children.stopping is not None:
        return None
    raise SystemExit("make run: the sandbox did not answer within 20 s")


def main() -> None:
    children = Children()
    signal.signal(signal.SIGTERM, children.forward)
    signal.signal(signal.SIGINT, children.forward)
    path = env_file()
    ensure_secret(path)
    env = dict(os.environ)
    if not has_api_key(path):
        sandbox = SandboxSettings()
        url = f"http://{sandbox.host}:{sandbox.port}"
        print(f"make run: no BFL_API_KEY, so the local sandbox serves the BFL API at {url}")
        if start_sandbox(children, sandbox.host, sandbox.port) is None:
            return
        hosts = os.environ.get("RECEIVER_SAMPLE_HOSTS") or ",".join(BFL_DELIVERY_HOSTS)
        env |= {
            # The sandbox's delivery URLs live on its own host, named exactly (http allowed).
            "RECEIVER_SAMPLE_HOSTS": f"{hosts},{sandbox.host}:{sandbox.port}",
            "BFL_API_URL": url,
            "BFL_API_KEY": "sandbox",  # the sandbox takes any key; only this process sees it
        }
    receiver = children.start([sys.executable, "-m", "receiver.cli", "serve"], env)
    if children.stopping is not None:  # the signal came while it was being started
        receiver.send_signal(signal.SIGTERM)
    try:
        receiver.wait()  # signals are forwarded by the handler meanwhile
    finally:
        children.stop_all()
    sys.exit(0 if children.stopping is not None else receiver.returncode)


if __name__ == "__main__":
    main()
