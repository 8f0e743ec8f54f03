"""Burst: 1,000 Ready webhooks at once, each sample 1 MB served after 200 ms by a loopback host.

Prints the seconds until every image is stored and every handler has run (target <= 60 s, far
inside the URLs' 10 minutes) and the receiver's peak RSS (target <= 250 MB). As a baseline from
the same run it first times bare fetches of 1,000 such samples into memory with one httpx client
at the receiver's concurrency: the floor for the download part on this machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    SECRET,
    database,
    database_option,
    listen,
    metric,
    peak_rss_mb,
    post_many,
    spawn,
    stop,
    url_of,
)

HERE = Path(__file__).resolve().parent
#: Like BFL delivering many webhooks at once.
CONNECTIONS = 64


async def post_all(url: str, sample_base: str, count: int, run: str) -> float:
    """Send every webhook, CONNECTIONS at a time; seconds until all were acknowledged."""
    bodies = [
        json.dumps(
            {
                "id": f"{run}-{i}",
                "status": "Ready",
                "result": {"sample": f"{sample_base}/img/{run}-{i}.jpg", "seed": i},
            }
        ).encode()
        for i in range(count)
    ]
    headers = {"content-type": "application/json", "x-webhook-secret": SECRET}
    started = time.perf_counter()
    statuses = await post_many(url, "/webhooks/bfl", bodies, headers, CONNECTIONS)
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise click.ClickException(f"not every webhook was accepted: {sorted(set(statuses))}")
    return elapsed


async def fetch_all(sample_base: str, count: int, concurrency: int) -> float:
    """The floor: fetch the same samples straight into memory, ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with limit:
            resp = await client.get(f"{sample_base}/img/floor-{i}.jpg")
            resp.raise_for_status()

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(count)))
    return time.perf_counter() - started


@dataclass
class Figures:
    acked: float
    total: float
    rss: float
    stored: float
    dead: float
    files: int
    left: str


def run_burst(engine: str, sample_base: str, count: int, workers: int, timeout: float) -> Figures:
    """One receiver on ``engine``: post the burst, wait until every handler ran."""
    with tempfile.TemporaryDirectory() as tmp, database(engine, tmp) as database_url:
        receiver_sock = listen()
        env = {
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DATABASE_URL": database_url,
            "RECEIVER_STORAGE_URL": f"file://{tmp}/samples",
            "RECEIVER_SAMPLE_HOSTS": sample_base.removeprefix("http://"),
            "RECEIVER_HANDLERS": "bench.handler:check",
            # Both pools at this size; RECEIVER_WORKERS for receivers before the split pools,
            # so the same script measures an older checkout too.
            "RECEIVER_DOWNLOAD_WORKERS": str(workers),
            "RECEIVER_HANDLER_WORKERS": str(workers),
            "RECEIVER_WORKERS": str(workers),
            "RECEIVER_LOG_LEVEL": "warning",
        }
        receiver = spawn(["-m", "receiver.cli", "serve"], receiver_sock, env)
        base = url_of(receiver_sock)
        try:
            started = time.perf_counter()
            acked = asyncio.run(post_all(base, sample_base, count, engine))
            deadline = started + timeout
            while (
                handled := metric(
                    base,
                    "bfl_hooks_handler_runs_total",
                    handler="bench.handler:check",
                    outcome="ok",
                )
            ) < count:
                if time.perf_counter() > deadline:
                    raise click.ClickException(f"only {handled:.0f}/{count} handled in {timeout}s")
                time.sleep(0.1)
            return Figures(
                acked=acked,
                total=time.perf_counter() - started,
                rss=peak_rss_mb(receiver.pid),
                stored=metric(base, "bfl_hooks_download_bytes_total"),
                dead=metric(base, "bfl_hooks_dead_jobs"),
                files=sum(1 for p in Path(tmp, "samples").rglob("*.jpg")),
                left=_histogram_min_bucket(base),
            )
        finally:
            stop(receiver)
            receiver_sock.close()


@click.command()
@click.option("--count", default=1000, show_default=True)
@click.option("--latency", default=0.2, show_default=True, help="Delivery latency, seconds.")
@click.option(
    "--workers", default=32, show_default=True, help="Each pool's size (downloads, handlers)."
)
@click.option("--timeout", default=300, show_default=True, help="Give up after this long.")
@database_option
def main(
    count: int, latency: float, workers: int, timeout: float, engines: tuple[str, ...]
) -> None:
    delivery_sock = listen()
    delivery = spawn([str(HERE / "delivery.py"), "--latency", str(latency)], delivery_sock, {})
    sample_base = url_of(delivery_sock)
    try:
        floor = asyncio.run(fetch_all(sample_base, count, workers))
        print(f"webhooks               {count}, ~1 MB samples after {latency * 1000:.0f} ms")
        print(f"receiver workers       {workers}")
        print(f"floor: bare fetches    {floor:6.2f} s   (same samples, same concurrency, no disk)")
        for engine in engines:
            f = run_burst(engine, sample_base, count, workers, timeout)
            print(f"--- store {engine}: {f.stored / count / 1e6:.2f} MB per sample")
            print(f"all acknowledged in    {f.acked:6.2f} s")
            print(f"all stored + handled   {f.total:6.2f} s   (target <= 60 s)")
            print(f"ratio to the floor     {f.total / floor:6.2f}")
            print(f"files stored           {f.files}, dead jobs {f.dead:.0f}")
            print(f"least URL time left    {f.left}")
            print(f"receiver peak RSS      {f.rss:6.1f} MB (target <= 250 MB)")
    finally:
        stop(delivery)
        delivery_sock.close()


def _histogram_min_bucket(base: str) -> str:
    """Bounds on the least time any URL had left when its download finished (from buckets)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    lower = "0"
    for line in text.splitlines():
        if line.startswith("bfl_hooks_sample_url_seconds_left_bucket"):
            le = line.split('le="')[1].split('"')[0]
            if float(line.split()[-1]) > 0:
                return f"between {lower} and {le} s"
            lower = le
    return "n/a"


if __name__ == "__main__":
    main()
