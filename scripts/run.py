"""``make run``: the receiver on http://127.0.0.1:8000, with SQLite and images under ./data.

Without ``BFL_API_KEY`` the local sandbox (a BFL-compatible API) is started beside it on
http://127.0.0.1:8001, and the receiver is told to accept samples from it and poll it. A fresh
clone has no webhook secret: one is generated into .env (mode 600) and never printed.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from dotenv import dotenv_values

from receiver.settings import BFL_DELIVERY_HOSTS

ENV_FILE = Path(".env")
SANDBOX_HOST, SANDBOX_PORT = "127.0.0.1", 8001
SANDBOX_URL = f"http://{SANDBOX_HOST}:{SANDBOX_PORT}"


def ensure_secret() -> None:
    if os.environ.get("RECEIVER_WEBHOOK_SECRET") or (
        ENV_FILE.exists() and dotenv_values(ENV_FILE).get("RECEIVER_WEBHOOK_SECRET")
    ):
        return
    text = ENV_FILE.read_text() if ENV_FILE.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    ENV_FILE.touch(mode=0o600)
    ENV_FILE.write_text(text + f"RECEIVER_WEBHOOK_SECRET={secrets.token_urlsafe(32)}\n")
    print("make run: wrote a new RECEIVER_WEBHOOK_SECRET to .env (kept out of git)", flush=True)


def has_api_key() -> bool:
    if os.environ.get("BFL_API_KEY"):
        return True
    return ENV_FILE.exists() and bool(dotenv_values(ENV_FILE).get("BFL_API_KEY"))


def start_sandbox() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from sandbox.cli import main; main()",
            "serve",
            "--host",
            SANDBOX_HOST,
            "--port",
            str(SANDBOX_PORT),
        ],
        # Polling and delivery URLs on this exact host, however a client addressed the
        # sandbox (localhost or 127.0.0.1): it is the one host the receiver allowlists.
        env={**os.environ, "SANDBOX_PUBLIC_URL": SANDBOX_URL},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"make run: the sandbox did not start (is port {SANDBOX_PORT} free?)")
        try:
            httpx.get(f"{SANDBOX_URL}/v1/credits", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("make run: the sandbox did not answer within 20 s")


def main() -> None:
    Path("data").mkdir(exist_ok=True)
    ensure_secret()
    env = dict(os.environ)
    sandbox = None
    if not has_api_key():
        print(f"make run: no BFL_API_KEY, so the local sandbox serves the BFL API at {SANDBOX_URL}")
        sandbox = start_sandbox()
        hosts = os.environ.get("RECEIVER_SAMPLE_HOSTS") or ",".join(BFL_DELIVERY_HOSTS)
        env |= {
            # The sandbox's delivery URLs live on its own host, named exactly (http allowed).
            "RECEIVER_SAMPLE_HOSTS": f"{hosts},{SANDBOX_HOST}:{SANDBOX_PORT}",
            "BFL_API_URL": SANDBOX_URL,
            "BFL_API_KEY": "sandbox",  # the sandbox takes any key; only this process sees it
        }
    receiver = subprocess.Popen([sys.executable, "-m", "receiver.cli", "serve"], env=env)
    try:
        receiver.wait()
    except KeyboardInterrupt:
        receiver.send_signal(signal.SIGINT)
        receiver.wait()
    finally:
        if sandbox is not None:
            sandbox.terminate()
            sandbox.wait()
    sys.exit(receiver.returncode)


if __name__ == "__main__":
    main()
