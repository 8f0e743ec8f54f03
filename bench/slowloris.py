"""Slow clients: /healthz latency and receiver RSS with N hostile connections held open.

Starts a receiver (``--receiver``, default this environment's ``bfl-receiver``; a baseline
checkout can be measured with its own command) on a loopback socket with a soft open-file limit
of 1024, opens N connections split evenly between idle, half-sent headers, a wrong secret with
an unfinished 256 KiB body, and headers trickled a byte a second (tests/slowclients.py), then
measures /healthz (a new connection each time, 2 s timeout) and RSS while they are held, and
again after ``--hold`` seconds; ``--waves`` times, so RSS that keeps growing shows.

    python bench/slowloris.py                      # this checkout's bfl-receiver
    python bench/slowloris.py --receiver /path/to/baseline/.venv/bin/bfl-receiver
    python bench/slowloris.py --receiver "env PYTHONPATH=BASELINE python -P -m receiver.cli"
"""

from __future__ import annotations

import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SECRET, listen, url_of
from receiver.rlimit import raise_open_files_limit
from tests.slowclients import KINDS, hostile_connections, open_sockets, rss_mb, soft_open_files


def healthz_ms(url: str, repeat: int) -> tuple[list[float], int]:
    """Durations of the answered requests, and how many got no answer within 2 s."""
    times, failed = [], 0
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=2, limits=limits) as client:
        for _ in range(repeat):
            started = time.perf_counter()
            try:
                ok = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                times.append((time.perf_counter() - started) * 1000)
            else:
                failed += 1
    return times, failed


def summary(times: list[float], failed: int) -> str:
    if not times:
        return f"no answer ({failed} failed)"
    return f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms" + (
        f", {failed} failed" if failed else ""
    )


def _soft_limit_1024() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def _default_receiver() -> str:
    """This environment's ``bfl-receiver`` (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "bfl-receiver"
    return str(beside) if beside.exists() else "bfl-receiver"


@click.command()
@click.option(
    "--receiver",
    "command",
    default=_default_receiver,
    help="The receiver command ('serve --fd N --no-worker' is appended). Default: this venv's.",
)
@click.option("--connections", default=2000, show_default=True, help="Hostile connections.")
@click.option("--hold", default=15.0, show_default=True, help="Seconds before the second look.")
@click.option("--waves", default=2, show_default=True, help="Rounds: RSS must not keep growing.")
def main(command: str, connections: int, hold: float, waves: int) -> None:
    raise_open_files_limit()  # this process holds the hostile sockets
    with tempfile.TemporaryDirectory() as tmp:
        sock = listen()
        url = url_of(sock)
        env = {
            **os.environ,
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp}/receiver.db",
            "RECEIVER_STORAGE_URL": f"file://{tmp}/samples",
            "RECEIVER_LOG_LEVEL": "error",
        }
        proc = subprocess.Popen(
            [*shlex.split(command), "serve", "--fd", str(sock.fileno()), "--no-worker"],
            env=env,
            pass_fds=(sock.fileno(),),
            preexec_fn=_soft_limit_1024,  # noqa: PLW1509 - one syscall, safe after fork
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not healthz_ms(url, 1)[0]:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise click.ClickException("the receiver did not start")
                time.sleep(0.2)
            print(f"receiver: {command} (open-file limit now {soft_open_files(proc.pid)})")
            print(f"idle:  healthz {summary(*healthz_ms(url, 20))}; RSS {rss_mb(proc.pid):.0f} MB")
            host, port = url.removeprefix("http://").split(":")
            per_kind = connections // len(KINDS)
            for wave in range(1, waves + 1):
                with hostile_connections(host, int(port), per_kind) as hostiles:
                    time.sleep(1)
                    print(
                        f"wave {wave}: {per_kind * len(KINDS)} hostile ({hostiles.failed} not "
                        f"connected), {open_sockets(proc.pid)} sockets held by the receiver: "
                        f"healthz {summary(*healthz_ms(url, 20))}; RSS {rss_mb(proc.pid):.0f} MB"
                    )
                    time.sleep(hold)
                    closed = ", ".join(
                        f"{kind} {hostiles.closed_by_server(kind)}/{per_kind}" for kind in KINDS
                    )
                    print(
                        f"  after {hold:.0f} s: closed by the receiver: {closed}; "
                        f"{open_sockets(proc.pid)} sockets held; healthz "
                        f"{summary(*healthz_ms(url, 20))}; RSS {rss_mb(proc.pid):.0f} MB"
                    )
        finally:
            proc.kill()
            proc.wait()
            sock.close()


if __name__ == "__main__":
    main()
