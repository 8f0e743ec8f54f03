"""Serverless: the Lambda adapter's cold start and warm webhook latency, against baselines.

- **Cold start**: a fresh ``python`` process that imports ``receiver.serverless.aws`` and gets
  its first webhook answered (settings read, store opened, the webhook recorded, inline
  processing looked for its jobs), against a fresh process that only imports the bare
  dependencies (Starlette, httpx, pydantic-settings). Both are timed from spawn to the line
  they print, ``--cold`` times each, in the same run; the store is migrated beforehand, as a
  deployed one is.
- **Warm webhook latency**: the same webhook (a new task each time, inline processing on, no
  handlers) sent one at a time, ``--warm`` times: through the adapter in process (the handler
  call), through the adapter under the real runtime client (``python -m awslambdaric`` against
  a loopback Runtime API, ``tests/lambda_runtime.py``: event out, answer back), and through
  uvicorn (``bfl-receiver serve --no-worker``, one keep-alive connection).

``python bench/serverless.py [--database sqlite|postgresql]``
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SECRET, database, database_option, listen, spawn, stop, url_of
from receiver.settings import Settings
from receiver.store import opened_store
from tests import aws_events
from tests.lambda_runtime import runtime_api

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"x-webhook-secret": SECRET}

BARE = "import starlette.applications, httpx, pydantic_settings; print('ready', flush=True)"

#: The cold process: import the adapter, answer one webhook (a Function URL event), print.
COLD = """
import sys, time
from receiver.serverless.aws import handler
from tests import aws_events
class Context:
    def get_remaining_time_in_millis(self): return 30000
event = aws_events.function_url(
    {"id": sys.argv[1], "status": "Error", "error": "x"}, {"x-webhook-secret": sys.argv[2]})
answer = handler(event, Context())
assert answer["statusCode"] == 200, answer
print("ready", flush=True)
"""


def _time_to_ready(args: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``python args`` to its ``ready`` line."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    took = time.perf_counter() - started
    proc.wait(timeout=60)
    if line.strip() != b"ready" or proc.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed (exit {proc.returncode})")
    return took


def _stats(samples: list[float]) -> tuple[float, float]:
    """Median and p99, in ms."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def _payload(task: str) -> dict[str, Any]:
    return {"id": task, "status": "Error", "error": "x"}


def _timed(n: int, send: Callable[[int], None]) -> list[float]:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        send(i)
        samples.append(time.perf_counter() - started)
    return samples


def _migrate(url: str) -> None:
    async def run() -> None:
        async with opened_store(url):
            pass

    anyio.run(run)


class _Context:
    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _in_process(env: dict[str, str], n: int, warmup: int) -> list[float]:
    from receiver.serverless.aws import LambdaReceiver  # noqa: PLC0415 - after env is set

    os.environ.update(env)
    adapter = LambdaReceiver(Settings(_env_file=None))  # type: ignore[call-arg]
    try:

        def send(i: int) -> None:
            event = aws_events.function_url(_payload(f"inproc-{i}"), HEADERS)
            assert adapter(event, _Context())["statusCode"] == 200

        _timed(warmup, lambda i: send(-1 - i))
        return _timed(n, send)
    finally:
        adapter.close()


def _under_runtime_client(env: dict[str, str], n: int, warmup: int) -> list[float]:
    with runtime_api() as api:
        proc = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", "receiver.serverless.aws.handler"],
            env={
                **os.environ,
                **env,
                "AWS_LAMBDA_RUNTIME_API": api.address,
                "PYTHONPATH": str(ROOT),
            },
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:

            def send(i: int) -> None:
                event = aws_events.function_url(_payload(f"ric-{i}"), HEADERS)
                done = api.invoke(event)
                assert done.outcome == "response"
                assert done.result["statusCode"] == 200

            _timed(warmup, lambda i: send(-1 - i))
            return _timed(n, send)
        finally:
            proc.kill()
            proc.wait()


def _uvicorn(env: dict[str, str], n: int, warmup: int) -> list[float]:
    sock = listen()
    proc = spawn(["-m", "receiver.cli", "serve", "--no-worker"], sock, env)
    try:
        with httpx.Client(base_url=url_of(sock), timeout=30) as client:

            def send(i: int) -> None:
                body = json.dumps(_payload(f"uvicorn-{i}")).encode()
                headers = {"content-type": "application/json", **HEADERS}
                resp = client.post("/webhooks/bfl", content=body, headers=headers)
                assert resp.status_code == 200

            _timed(warmup, lambda i: send(-1 - i))
            return _timed(n, send)
    finally:
        stop(proc)
        sock.close()


@click.command()
@database_option
@click.option("--cold", default=9, show_default=True, help="Cold starts of each kind.")
@click.option("--warm", default=300, show_default=True, help="Warm webhooks per path.")
def main(engines: tuple[str, ...], cold: int, warm: int) -> None:
    for engine in engines:
        with tempfile.TemporaryDirectory() as tmp, database(engine, tmp) as url:
            _migrate(url)
            env = {
                "RECEIVER_DATABASE_URL": url,
                "RECEIVER_STORAGE_URL": f"file://{tmp}/samples",
                "RECEIVER_WEBHOOK_SECRET": SECRET,
                "RECEIVER_INLINE_BUDGET_SECONDS": "20",
                "RECEIVER_LOG_LEVEL": "warning",
            }
            # Alternated, pair by pair: this machine's load drifts more than the gap between them.
            bare, first = [], []
            for i in range(cold):
                bare.append(_time_to_ready(["-c", BARE], env))
                first.append(_time_to_ready(["-c", COLD, f"cold-{i}", SECRET], env))
            bare_ms, first_ms = statistics.median(bare) * 1000, statistics.median(first) * 1000
            ratio = statistics.median(f / b for f, b in zip(first, bare, strict=True))
            added = statistics.median(f - b for f, b in zip(first, bare, strict=True)) * 1000
            click.echo(f"\n{engine}: cold start, median of {cold} pairs of fresh processes")
            click.echo(f"  import starlette+httpx+pydantic-settings  {bare_ms:8.1f} ms")
            click.echo(f"  import adapter + first answered webhook   {first_ms:8.1f} ms")
            click.echo(f"  ratio (median of pairs)                   {ratio:8.2f}")
            click.echo(f"  added (median of pairs)                   {added:8.1f} ms")

            paths = {
                "adapter, in process": _in_process(env, warm, 20),
                "adapter under awslambdaric": _under_runtime_client(env, warm, 20),
                "uvicorn (serve --no-worker)": _uvicorn(env, warm, 20),
            }
            click.echo(f"{engine}: warm webhook latency, {warm} sequential webhooks per path")
            base_median, _ = _stats(paths["uvicorn (serve --no-worker)"])
            for name, samples in paths.items():
                median, p99 = _stats(samples)
                click.echo(
                    f"  {name:<30} median {median:7.2f} ms  p99 {p99:7.2f} ms  "
                    f"median ratio to uvicorn {median / base_median:5.2f}"
                )


if __name__ == "__main__":
    main()
