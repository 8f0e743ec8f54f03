"""Before/after figures for issue 8's faults, against any checkout of the receiver.

Three scenarios, each on a fresh receiver process (SQLite, a loopback socket) started from
``--checkout`` (default: this one), so an older checkout is measured by the same script:

- ``lock``: 10 acknowledged webhooks whose first handler attempt failed; another process holds
  SQLite's write lock for 25 s while their retries come due; then 10 more webhooks. Figure: how
  many of the 20 are handled within 60 s of the release, and when the last one was.
- ``hung``: 4 handler slots, all hung; then a fresh Ready webhook. Figure: seconds until its
  image is stored (or "never" within 30 s).
- ``sigterm``: 8 handler runs of 3 s in flight, SIGTERM, restart. Figures: runs that finished
  before the process exited, and runs started again after the restart.

    python bench/faults.py
    python bench/faults.py --checkout /path/to/older/checkout   # it needs tests/fault_handler.py

The handlers come from the checkout's ``tests/fault_handler.py``.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SECRET, listen, url_of
from tests.processes import hold_sqlite_write_lock

HERE = Path(__file__).resolve().parent.parent


class Receiver:
    def __init__(self, checkout: Path, env: dict[str, str]) -> None:
        self.checkout = checkout
        self.env = {
            **os.environ,
            "PYTHONPATH": str(checkout),
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
            "RECEIVER_LOG_LEVEL": "warning",
            **env,
        }
        self.sock = listen()
        self.url = url_of(self.sock)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fd = self.sock.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--fd", str(fd)],
            cwd=self.checkout,
            env=self.env,
            pass_fds=(fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until(lambda: self.get("/healthz") == 200, 30)

    def get(self, path: str) -> int:
        try:
            return httpx.get(self.url + path, timeout=2).status_code
        except httpx.HTTPError:
            return 0

    def post(self, payload: dict[str, object]) -> int:
        try:
            resp = httpx.post(
                self.url + "/webhooks/bfl",
                json=payload,
                headers={"x-webhook-secret": SECRET},
                timeout=30,
            )
        except httpx.HTTPError:
            return 0
        return resp.status_code

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def until(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``predicate()`` held, or None if it never did within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def runs(effects: Path, phase: str) -> int:
    if not effects.exists():
        return 0
    with sqlite3.connect(effects, timeout=30) as db:
        db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, attempt INTEGER, phase TEXT)")
        return int(db.execute("SELECT count(*) FROM runs WHERE phase = ?", (phase,)).fetchone()[0])


def base_env(tmp: Path, handler: str) -> dict[str, str]:
    return {
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp}/receiver.db",
        "RECEIVER_STORAGE_URL": f"file://{tmp}/samples",
        "RECEIVER_HANDLERS": f"tests.fault_handler:{handler}",
        "BFL_TEST_EFFECTS": str(tmp / "effects.db"),
    }


def errors(receiver: Receiver, prefix: str, count: int) -> int:
    ids = [f"{prefix}-{i}" for i in range(count)]
    return sum(receiver.post({"id": i, "status": "Error", "error": "x"}) == 200 for i in ids)


def lock(checkout: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = base_env(tmp, "flaky") | {"RECEIVER_HANDLER_BACKOFF_SECONDS": "3"}
        receiver = Receiver(checkout, env)
        try:
            receiver.start()
            acked = errors(receiver, "before", 10)
            until(lambda: runs(tmp / "effects.db", "fail") >= 10, 30)
            time.sleep(0.3)
            holder = hold_sqlite_write_lock(tmp / "receiver.db", 25)
            holder.wait()
            acked += errors(receiver, "after", 10)
            took = until(lambda: runs(tmp / "effects.db", "end") >= acked, 60)
            done = runs(tmp / "effects.db", "end")
            when = f"the last {took:.1f} s after the release" if took is not None else "then none"
            return f"{done} of {acked} acknowledged webhooks handled within 60 s; {when}"
        finally:
            receiver.close()


@contextmanager
def delivery() -> Iterator[str]:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(out, "JPEG")
    body = out.getvalue()

    class Serve(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "image/jpeg")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def hung(checkout: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp_name, delivery() as host:
        tmp = Path(tmp_name)
        pools = {
            "RECEIVER_WORKERS": "4",
            "RECEIVER_HANDLER_WORKERS": "4",
            "RECEIVER_DOWNLOAD_WORKERS": "4",
            "RECEIVER_SAMPLE_HOSTS": host,
            "BFL_TEST_SLEEP": "600",
        }
        receiver = Receiver(checkout, base_env(tmp, "slow") | pools)
        try:
            receiver.start()
            errors(receiver, "busy", 4)
            until(lambda: runs(tmp / "effects.db", "start") >= 4, 30)
            sample = f"http://{host}/fresh.jpg"
            receiver.post({"id": "fresh", "status": "Ready", "result": {"sample": sample}})
            took = until(
                lambda: receiver.metric('bfl_hooks_downloads_total{outcome="ok"}') >= 1, 30
            )
            return "never within 30 s" if took is None else f"stored after {took:.2f} s"
        finally:
            receiver.close()


def sigterm(checkout: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        receiver = Receiver(checkout, base_env(tmp, "slow") | {"BFL_TEST_SLEEP": "3"})
        try:
            receiver.start()
            errors(receiver, "t", 8)
            until(lambda: runs(tmp / "effects.db", "start") >= 8, 30)
            assert receiver.proc is not None
            stopped = time.monotonic()
            receiver.proc.send_signal(signal.SIGTERM)
            receiver.proc.wait(60)
            exit_s = time.monotonic() - stopped
            finished = runs(tmp / "effects.db", "end")
            receiver.start()
            time.sleep(6)  # long enough for any re-run (3 s) to start and end
            again = runs(tmp / "effects.db", "start") - 8
            return (
                f"{finished} of 8 in-flight runs finished before exit ({exit_s:.1f} s); "
                f"{again} started again after the restart"
            )
        finally:
            receiver.close()


SCENARIOS = {"lock": lock, "hung": hung, "sigterm": sigterm}


@click.command()
@click.option(
    "--checkout",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=HERE,
    help="The checkout whose receiver to run (its tests/fault_handler.py too).",
)
@click.option("--only", type=click.Choice(list(SCENARIOS)), multiple=True)
def main(checkout: Path, only: tuple[str, ...]) -> None:
    print(f"checkout {checkout}")
    for name in only or SCENARIOS:
        print(f"{name:8} {SCENARIOS[name](checkout.resolve())}", flush=True)


if __name__ == "__main__":
    main()
