"""Ingest: webhooks/s and p99 ack latency of the receiver against a bare Starlette app.

Both run as one uvicorn process each (served the same way, through ``--fd``), loaded by wrk
(Debian's package) with 32 connections and the same payload shape, one after the other in the
same run. The receiver records every webhook durably (SQLite: WAL with synchronous=FULL;
PostgreSQL: a throwaway local cluster with fsync on) and creates
its download job before answering. By default it runs with ``--no-worker`` (ingest only: jobs
are someone else's CPU); ``--with-worker`` adds a third run where its own worker claims and buries
every job (the sample host is off the allowlist), to show what that costs on the same cores.
Targets (issue 2): ratio >= 0.6, p99 <= 25 ms.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SECRET, database, database_option, listen, spawn, stop, url_of

HERE = Path(__file__).resolve().parent


def wrk(url: str, seconds: int, connections: int, run: str) -> tuple[float, float]:
    """Requests/s and p99 latency in ms."""
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(HERE / "webhooks.lua"),
            url,
        ],
        env={**os.environ, "BENCH_SECRET": SECRET, "BENCH_RUN": run},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} requests failed:\n{out}")
    return rps, float(p99.group(1)) * scale


def measure_receiver(
    flags: list[str], env: dict[str, str], seconds: int, connections: int, run: str
) -> tuple[float, float]:
    sock = listen()
    receiver = spawn(["-m", "receiver.cli", "serve", *flags], sock, env)
    try:
        wrk(url_of(sock), 2, connections, run + "-warm")
        return wrk(url_of(sock), seconds, connections, run)
    finally:
        stop(receiver)
        sock.close()


def server_stack() -> str:
    """What uvicorn will use: its C speed-ups (uvicorn[standard]) change every figure."""
    found = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name)]
    return "uvicorn + " + (" + ".join(found) if found else "asyncio + h11 (pure Python)")


@click.command()
@click.option("--seconds", default=10, show_default=True, help="Duration of each wrk run.")
@click.option("--connections", default=32, show_default=True)
@click.option("--with-worker", is_flag=True, help="Also measure with the worker running.")
@database_option
def main(seconds: int, connections: int, with_worker: bool, engines: tuple[str, ...]) -> None:
    if shutil.which("wrk") is None:
        raise click.ClickException("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        sock = listen()
        base = spawn([str(HERE / "baseline.py")], sock, {})
        try:
            wrk(url_of(sock), 2, connections, "warm")
            base_rps, base_p99 = wrk(url_of(sock), seconds, connections, "base")
        finally:
            stop(base)
            sock.close()
        print(f"connections            {connections}, {seconds} s per run")
        print(f"server                 {server_stack()}")
        print(f"bare Starlette         {base_rps:9.0f} webhooks/s   p99 {base_p99:6.2f} ms")
        for engine in engines:
            with database(engine, tmp) as url:
                env = {
                    "RECEIVER_WEBHOOK_SECRET": SECRET,
                    "RECEIVER_DATABASE_URL": url,
                    "RECEIVER_STORAGE_URL": f"file://{tmp}/samples",
                    "RECEIVER_LOG_LEVEL": "error",
                    # Off the allowlist: each download job is buried at once, never fetched.
                    "RECEIVER_SAMPLE_HOSTS": "samples.invalid",
                }
                rps, p99 = measure_receiver(["--no-worker"], env, seconds, connections, engine)
                print(
                    f"receiver on {engine:10} {rps:9.0f} webhooks/s   p99 {p99:6.2f} ms"
                    f"   ratio {rps / base_rps:4.2f} (target >= 0.6; p99 <= 25 ms)"
                )
                if with_worker:
                    rps, p99 = measure_receiver([], env, seconds, connections, engine + "-w")
                    print(f"  with its worker      {rps:9.0f} webhooks/s   p99 {p99:6.2f} ms")


if __name__ == "__main__":
    main()
