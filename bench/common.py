"""Pieces the benchmarks share: processes on loopback sockets, RSS, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import click
import httpx

SECRET = "bench-secret-not-for-production"


def listen() -> socket.socket:
    """A listening socket on 127.0.0.1 and a port the kernel picks, inheritable by children."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


def spawn(args: Sequence[str], sock: socket.socket, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Run ``python args... --fd N`` serving on ``sock``; wait until /healthz answers."""
    proc = subprocess.Popen(
        [sys.executable, *args, "--fd", str(sock.fileno())],
        env={**os.environ, **env},
        pass_fds=(sock.fileno(),),
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url_of(sock) + "/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{args} did not start")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


async def post_many(
    url: str, path: str, bodies: Sequence[bytes], headers: dict[str, str], connections: int
) -> list[int]:
    """POST every body over ``connections`` keep-alive connections; the status codes.

    A few lines of raw HTTP/1.1: httpx's async client tops out near 250 requests/s here, which
    would measure the client, not the server.
    """
    parts = httpx.URL(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    queue = list(reversed(range(len(bodies))))
    statuses = [0] * len(bodies)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(parts.host, parts.port)
        try:
            while queue:
                i = queue.pop()
                body = bodies[i]
                writer.write(
                    f"POST {path} HTTP/1.1\r\nhost: {parts.host}\r\n{head}"
                    f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                status_line = await reader.readline()
                statuses[i] = int(status_line.split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return statuses


@contextlib.contextmanager
def database(engine: str, tmp: str) -> Iterator[str]:
    """``RECEIVER_DATABASE_URL`` for ``sqlite`` (a file in ``tmp``) or ``postgresql`` (a
    throwaway cluster on loopback, fsync on, as the tests start it)."""
    if engine == "sqlite":
        yield f"sqlite:///{tmp}/receiver.db"
        return
    from tests.pg import PostgresCluster, find_bindir  # noqa: PLC0415 - PostgreSQL runs only

    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: run scripts/pg.sh")
    cluster = PostgresCluster(bindir)
    cluster.start()
    try:
        yield cluster.create_database("bench")
    finally:
        cluster.stop()


#: ``--database``, repeatable, for every benchmark that can run on either store.
database_option = click.option(
    "--database",
    "engines",
    type=click.Choice(["sqlite", "postgresql"]),
    multiple=True,
    default=["sqlite"],
    show_default=True,
    help="Store(s) to measure; repeat to compare both in one run.",
)
