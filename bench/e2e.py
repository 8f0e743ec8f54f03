"""End to end: webhooks (submitter + receiver) against plain polling, through the sandbox.

Both paths run at the same time against one sandbox (separate processes: the sandbox, the
receiver, and this one with the submitter and the polling client), each with its own API key
and so its own 24 active tasks:

* webhook path: ``submitter.BFL`` submits N generations with the receiver's webhook; the
  receiver downloads each image when the webhook comes.
* polling path: the docs' loop: submit, then ``get_result`` every 0.5 s until Ready, then
  download.

Submissions arrive spread over ``--spread`` seconds (about 16 tasks active per path), the same
schedule for both paths, as work arrives in a real backend; all at once, every task would end
in the same instant and the figures would measure a 24-webhook stampede on this machine.

The sandbox's tasks all take exactly ``--task-seconds``; BFL's vary, so a polling loop meets
a task's end at a random point of its 0.5 s period. The polling client therefore starts its
loop at a random phase, which is the same thing with fixed durations (else a duration that is
a multiple of 0.5 s would make polling look free).

For each image: time from "task ready" (the sandbox's ``end_time``, the instant get_result
turns Ready and the webhook leaves) to "image on disk" (the stored file's mtime), and the
requests each path made, counted inside the sandbox by user agent. Target: the webhook path
adds under a tenth of the polling path's latency and makes no get_result call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import submitter
from bench.common import SECRET, database, listen, spawn, stop, url_of
from receiver.store import EventRecord
from sandbox import SandboxSettings, create_app
from submitter._client import USER_AGENT

HERE = Path(__file__).resolve()
POLL_INTERVAL = 0.5  # the docs' polling interval
POLLER_AGENT = "bench-poller"
SIZE = 256  # small images: the sandbox renders on first download, equally for both paths


class CountRequests:
    """ASGI middleware: counts requests by (user agent, kind); GET /bench/counts shows them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/bench/counts":
                body = json.dumps(self.counts).encode()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": body})
                return
            headers = dict(scope["headers"])
            agent = headers.get(b"user-agent", b"?").decode().split("/")[0]
            kind = (
                "get_result"
                if path.endswith("/get_result")
                else "download"
                if path.startswith("/delivery/")
                else "healthz"
                if path == "/healthz"
                else "submit"
            )
            self.counts[f"{agent} {kind}"] += 1
        await self.app(scope, receive, send)


def run_sandbox(fd: int, task_seconds: float) -> None:
    """The child process: the sandbox on an inherited socket, counting requests."""
    settings = SandboxSettings(  # type: ignore[call-arg]
        _env_file=None, task_seconds=task_seconds, log_level="warning"
    )
    config = uvicorn.Config(CountRequests(create_app(settings)), log_level="warning")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


@dataclass
class Timing:
    ready: float
    on_disk: float

    @property
    def latency(self) -> float:
        return self.on_disk - self.ready


async def polling_path(
    api: str, arrivals: list[float], out: Path, label: str = "polled"
) -> list[Timing]:
    """The plain client: submit, poll every 0.5 s, download; 24 tasks in flight at most."""
    limit = asyncio.Semaphore(24)
    headers = {"x-key": "bench-polling", "user-agent": POLLER_AGENT}
    phases = random.Random(1)

    async def one(client: httpx.AsyncClient, i: int) -> Timing:
        await asyncio.sleep(arrivals[i])
        async with limit:
            body = {"prompt": f"{label} {i}", "width": SIZE, "height": SIZE}
            submitted = await client.post(f"{api}/v1/flux-dev", json=body, headers=headers)
            submitted.raise_for_status()
            polling_url = submitted.json()["polling_url"]
            await asyncio.sleep(POLL_INTERVAL * phases.random())  # see the module docstring
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                result = (await client.get(polling_url, headers=headers)).json()
                if result["status"] == "Ready":
                    break
            image = await client.get(result["result"]["sample"], headers=headers)
            image.raise_for_status()
            on_disk = await asyncio.to_thread(save, out / f"{label}-{i}.jpg", image.content)
            return Timing(result["result"]["end_time"], on_disk)

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(one(client, i) for i in range(len(arrivals))))


def save(path: Path, data: bytes) -> float:
    """Write an image as a plain client would; when it was on disk (the file's mtime)."""
    path.write_bytes(data)
    return path.stat().st_mtime


async def webhook_path(
    settings: submitter.Settings,
    arrivals: list[float],
    task_seconds: float,
    give_up: float,
    label: str = "hooked",
) -> list[EventRecord]:
    """Submit with webhooks, then read from the receiver's store when each image landed."""
    count = len(arrivals)
    async with submitter.BFL(settings=settings) as bfl:

        async def one(i: int) -> submitter.Task:
            await asyncio.sleep(arrivals[i])
            return await bfl.generate("flux-dev", f"{label} {i}", width=SIZE, height=SIZE)

        tasks = await asyncio.gather(*(one(i) for i in range(count)))
        store = bfl.store
        assert store is not None
        deadline = time.monotonic() + give_up
        events: dict[str, EventRecord] = {}
        # Look only once the last tasks must have ended: reading the store during the run
        # would compete for this small machine's CPUs with what is being measured.
        await asyncio.sleep(task_seconds + 1.0)
        while len(events) < count:
            for task in tasks:
                if task.id not in events:
                    event = await store.get_event(task.id)
                    if event is not None and event.image is not None:
                        events[task.id] = event
            if time.monotonic() > deadline:
                raise click.ClickException(f"only {len(events)}/{count} images stored in time")
            await asyncio.sleep(1.0)
    return list(events.values())


def webhook_timings(events: list[EventRecord]) -> tuple[list[Timing], list[float]]:
    """Ready → the stored file's mtime, and ready → the webhook recorded, for each event."""
    timings = []
    webhook_lag = []
    for event in events:
        assert event.image is not None
        ready = float(event.payload["result"]["end_time"])
        timings.append(Timing(ready, Path(event.image.location).stat().st_mtime))
        webhook_lag.append(event.received_at - ready)
    return timings, webhook_lag


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """Median, 90th and 99th percentiles."""
    cuts = statistics.quantiles(values, n=100)
    return statistics.median(values), cuts[89], cuts[98]


def per_image(counts: dict[str, int], agent: str, kind: str, count: int) -> float:
    return counts.get(f"{agent} {kind}", 0) / count


def report(
    count: int,
    task_seconds: float,
    hooked: list[Timing],
    lag: list[float],
    polled: list[Timing],
    counts: dict[str, int],
) -> None:
    hook = quantiles([t.latency for t in hooked])
    poll = quantiles([t.latency for t in polled])
    wait = quantiles(lag)

    def row(name: str, values: tuple[float, float, float]) -> None:
        print(f"  {name:<24}" + "".join(f"{v * 1000:8.1f} ms" for v in values))

    print(f"generations per path      {count} (flux-dev {SIZE}x{SIZE}, task {task_seconds:g} s)")
    print("ready → image on disk        median        p90        p99")
    row("webhook path", hook)
    row("  of which webhook lag", wait)
    row("polling path (0.5 s)", poll)
    ratios = "".join(f"{h / p:11.3f}" for h, p in zip(hook, poll, strict=True))
    print(f"  {'ratio webhook/polling':<24}{ratios}   (target < 0.1)")
    agent = USER_AGENT.split("/")[0]
    submits = per_image(counts, agent, "submit", count)
    polls = per_image(counts, agent, "get_result", count)
    reconciles = per_image(counts, "bfl-hooks-receiver", "get_result", count)
    downloads = per_image(counts, "bfl-hooks-receiver", "download", count)
    p_submits = per_image(counts, POLLER_AGENT, "submit", count)
    p_polls = per_image(counts, POLLER_AGENT, "get_result", count)
    p_downloads = per_image(counts, POLLER_AGENT, "download", count)
    print("requests per image       submit  get_result  download   (counted in the sandbox)")
    print(
        f"  webhook path          {submits:8.2f} {polls + reconciles:11.2f} {downloads:9.2f}"
        f"   (get_result: {polls:.2f} submitter, {reconciles:.2f} reconciler)"
    )
    print(f"  polling path          {p_submits:8.2f} {p_polls:11.2f} {p_downloads:9.2f}")
    api_ratio = (submits + polls + reconciles) / (p_submits + p_polls)
    print(f"  API requests (submit + get_result), webhook/polling: {api_ratio:.3f}")


@contextlib.contextmanager
def pipeline(
    tmp: str, database_url: str, task_seconds: float, api_key: str, receiver_env: dict[str, str]
) -> Iterator[tuple[str, submitter.Settings]]:
    """The sandbox and a receiver (``receiver_env`` added to its settings), each a process of
    its own on a socket it was handed; yields the sandbox's URL and the submitter's settings."""
    sandbox_sock, receiver_sock = listen(), listen()
    api = url_of(sandbox_sock)
    args = [str(HERE), "--serve-sandbox", "--task-seconds", str(task_seconds)]
    sandbox = spawn(args, sandbox_sock, {})
    env = {
        "RECEIVER_WEBHOOK_SECRET": SECRET,
        "RECEIVER_DATABASE_URL": database_url,
        "RECEIVER_STORAGE_URL": f"file://{tmp}/samples",
        "RECEIVER_SAMPLE_HOSTS": api.removeprefix("http://"),
        "RECEIVER_LOG_LEVEL": "warning",
        **receiver_env,
    }
    receiver = spawn(["-m", "receiver.cli", "serve"], receiver_sock, env)
    values: dict[str, Any] = {
        "api_key": api_key,
        "api_url": api,
        "public_url": url_of(receiver_sock),
        "webhook_secret": SECRET,
        "database_url": database_url,
        "data_dir": Path(tmp) / "submitter",
    }
    try:
        yield api, submitter.Settings(_env_file=None, **values)  # type: ignore[call-arg]
    finally:
        stop(receiver)
        stop(sandbox)
        sandbox_sock.close()
        receiver_sock.close()


@click.command()
@click.option("--count", default=200, show_default=True, help="Generations per path.")
@click.option("--task-seconds", default=1.0, show_default=True, help="Sandbox task duration.")
@click.option(
    "--spread", type=float, help="Seconds over which submissions arrive [default: count/16]."
)
@click.option(
    "--warmup", default=8, show_default=True, help="Tasks per path run first, not measured."
)
@click.option("--timeout", default=300.0, show_default=True, help="Give up after this long.")
@click.option(
    "--database",
    "engine",
    type=click.Choice(["sqlite", "postgresql"]),
    default="sqlite",
    show_default=True,
    help="The receiver's store, shared with the submitter.",
)
@click.option("--serve-sandbox", is_flag=True, hidden=True)
@click.option("--fd", type=int, hidden=True)
def main(
    count: int,
    task_seconds: float,
    spread: float | None,
    warmup: int,
    timeout: float,
    engine: str,
    serve_sandbox: bool,
    fd: int | None,
) -> None:
    """Webhook path vs polling path: latency from ready to on disk, and requests per image."""
    if serve_sandbox:
        assert fd is not None
        run_sandbox(fd, task_seconds)
        return
    window = spread if spread is not None else count / 16
    schedule = random.Random(0)
    arrivals = sorted(schedule.uniform(0, window) for _ in range(count))
    with (
        tempfile.TemporaryDirectory() as tmp,
        database(engine, tmp) as database_url,
        pipeline(tmp, database_url, task_seconds, "bench-webhooks", {}) as (api, settings),
    ):

        async def both(times: list[float], label: str) -> tuple[list[EventRecord], list[Timing]]:
            return await asyncio.gather(
                webhook_path(settings, times, task_seconds, timeout, f"hooked {label}"),
                polling_path(api, times, Path(tmp) / "polled", f"polled {label}"),
            )

        (Path(tmp) / "polled").mkdir()
        # First connections, caches and code paths are slow once; real services are warm.
        asyncio.run(both([i * 0.05 for i in range(warmup)], "warm-up"))
        before = Counter(httpx.get(f"{api}/bench/counts", timeout=10).json())
        events, polled = asyncio.run(both(arrivals, "measured"))
        hooked, lag = webhook_timings(events)
        counts = Counter(httpx.get(f"{api}/bench/counts", timeout=10).json()) - before
    print(f"submissions spread over {window:g} s, the same schedule for both paths")
    print(f"warm-up                   {warmup} tasks per path first, not measured")
    print(f"receiver store            {engine} (the submitter records in it too)")
    report(count, task_seconds, hooked, lag, polled, counts)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
