"""The Cloud Run functions entry point against ``bfl-receiver serve``, on the same PostgreSQL
store and S3 bucket (moto), both on loopback:

- cold start: from starting the process to the first webhook answered 200 (the function opens
  its store on that first request; ``serve`` before it listens);
- warm latency: sequential webhooks over one keep-alive connection, p50 and p99;
- throughput: webhooks/s over 8 keep-alive connections.

    .venv/bin/python bench/gcp_function.py [--webhooks 2000]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SECRET, database, listen, post_many, url_of
from tests.s3 import MotoServer, bucket_env

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "deploy" / "gcp" / "function" / "main.py"
FRAMEWORK = Path(sys.executable).parent / "functions-framework"
HEADERS = {"content-type": "application/json", "x-webhook-secret": SECRET}


def body(task: str) -> bytes:
    return json.dumps({"id": task, "status": "Error", "error": "bench"}).encode()


@contextmanager
def started(kind: str, env: dict[str, str], log: Path) -> Iterator[tuple[str, float]]:
    """The receiver as ``kind`` (``serve`` or ``function``); its URL and its cold start."""
    sock = listen()  # serve's; the function's gunicorn binds its own and logs the port
    if kind == "serve":
        command = [sys.executable, "-m", "receiver.cli", "serve", "--fd", str(sock.fileno())]
    else:
        command = [str(FRAMEWORK), "--asgi", "--target", "webhook", "--source", str(SOURCE)]
        command += ["--host", "127.0.0.1", "--port", "0"]
    begun = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),)
        )
    try:
        url = ""
        while time.perf_counter() - begun < 60:
            found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log.read_text())
            url = url_of(sock) if kind == "serve" else (found.group(1) if found else "")
            if url:
                try:
                    resp = httpx.post(
                        url + "/webhooks/bfl", content=body("cold"), headers=HEADERS, timeout=30
                    )
                    if resp.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} exited:\n{log.read_text(errors='replace')}")
            time.sleep(0.01)
        else:
            raise RuntimeError(f"{kind} did not answer:\n{log.read_text(errors='replace')}")
        yield url, time.perf_counter() - begun
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sock.close()


def warm_latencies(url: str, kind: str, count: int) -> list[float]:
    seconds = []
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30) as client:
        for i in range(count):
            sent = body(f"{kind}-warm-{i}")
            begun = time.perf_counter()
            resp = client.post("/webhooks/bfl", content=sent)
            seconds.append(time.perf_counter() - begun)
            assert resp.status_code == 200, resp.text
    return seconds


@click.command()
@click.option("--webhooks", default=2000, show_default=True, help="For the throughput run.")
@click.option("--warm", default=300, show_default=True, help="Sequential webhooks timed.")
def main(webhooks: int, warm: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, database("postgresql", tmp) as database_url:
        moto = MotoServer().start()
        try:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")},
                "RECEIVER_DATABASE_URL": database_url,
                "RECEIVER_STORAGE_URL": "s3://bench/images",
                "RECEIVER_WEBHOOK_SECRET": SECRET,
                "RECEIVER_RUN_WORKER": "false",  # both only record, as on request-based billing
                "RECEIVER_LOG_LEVEL": "warning",
                "GUNICORN_LOG_LEVEL": "info",
                "K_SERVICE": "bench",  # as on Cloud Run: the durability guard is on
                "XDG_RUNTIME_DIR": tmp,  # gunicorn's control socket, not in ~/.gunicorn
                **bucket_env(moto.url, "bench"),
            }
            rows = []
            for kind in ("serve", "function"):
                with started(kind, env, Path(tmp) / f"{kind}.log") as (url, cold):
                    latencies = warm_latencies(url, kind, warm)
                    bodies = [body(f"{kind}-burst-{i}") for i in range(webhooks)]
                    begun = time.perf_counter()
                    statuses = asyncio.run(
                        post_many(url, "/webhooks/bfl", bodies, HEADERS, connections=8)
                    )
                    rate = webhooks / (time.perf_counter() - begun)
                    assert statuses == [200] * webhooks
                quantiles = statistics.quantiles(latencies, n=100)
                rows.append((kind, cold, quantiles[49], quantiles[98], rate))
        finally:
            moto.stop()
    click.echo("PostgreSQL + S3 (moto) on loopback; each webhook is recorded before its 200")
    click.echo(f"{'':10} {'cold start':>11} {'warm p50':>9} {'warm p99':>9} {'webhooks/s':>11}")
    for kind, cold, p50, p99, rate in rows:
        click.echo(f"{kind:10} {cold:10.2f}s {p50 * 1000:7.2f}ms {p99 * 1000:7.2f}ms {rate:11.0f}")


if __name__ == "__main__":
    main()
