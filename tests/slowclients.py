"""Hostile clients on raw sockets, and a look inside a receiver process (fds, RSS, limits).

Shared by tests/test_slow_clients.py and bench/slowloris.py: each kind of client is what a
slowloris-style attacker (or a broken proxy) does to an HTTP server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

KINDS = ("idle", "half_headers", "wrong_secret_body", "trickle")
BODY_BYTES = 256 * 1024
BODY_SENT = BODY_BYTES - 1024


def open_hostile(kind: str, host: str, port: int) -> socket.socket:
    """One connection doing ``kind``; the caller keeps it open (``trickle`` needs ticks)."""
    sock = socket.create_connection((host, port), timeout=5)
    try:
        if kind == "half_headers":
            sock.sendall(b"POST /webhooks/bfl HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n")
        elif kind == "wrong_secret_body":
            sock.sendall(
                b"POST /webhooks/bfl HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-Webhook-Secret: wrong\r\nContent-Length: %d\r\n\r\n" % BODY_BYTES
            )
            sock.sendall(b"{" * BODY_SENT)  # all but the last KiB: the request never ends
        elif kind == "trickle":
            sock.sendall(b"P")
    except OSError:
        pass  # the server answered and closed first: what a guarded one does
    sock.setblocking(False)
    return sock


@dataclass
class Hostiles:
    """Hostile connections held open; ``trickle`` ones get one more byte every second."""

    host: str
    port: int
    sockets: dict[str, list[socket.socket]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    failed: int = 0
    """Connections that could not even be opened (a server that stopped accepting)."""

    def open(self, per_kind: int) -> None:
        for kind in KINDS:
            socks = self.sockets.setdefault(kind, [])
            for _ in range(per_kind):
                try:
                    socks.append(open_hostile(kind, self.host, self.port))
                except OSError:
                    self.failed += 1

    def tick_forever(self) -> None:
        header = b"OST /webhooks/bfl HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000
        sent = 1
        while not self._stop.wait(1.0):
            byte = header[sent % len(header) : sent % len(header) + 1]
            sent += 1
            for sock in self.sockets.get("trickle", []):
                with contextlib.suppress(OSError):  # closed by the server: what we want
                    sock.send(byte)

    def closed_by_server(self, kind: str) -> int:
        """How many of ``kind`` the server has closed (EOF or reset; an answer counts too)."""
        closed = 0
        for sock in self.sockets.get(kind, []):
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        closed += 1
                        break
            except BlockingIOError:
                pass  # still open, nothing to read
            except OSError:
                closed += 1
        return closed

    def close(self) -> None:
        self._stop.set()
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()


@contextmanager
def hostile_connections(host: str, port: int, per_kind: int) -> Iterator[Hostiles]:
    hostiles = Hostiles(host, port)
    ticker = threading.Thread(target=hostiles.tick_forever, daemon=True)
    try:
        hostiles.open(per_kind)
        ticker.start()
        yield hostiles
    finally:
        hostiles.close()
        if ticker.is_alive():
            ticker.join(timeout=5)


def rss_mb(pid: int) -> float:
    """The process's resident memory (VmRSS) in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_sockets(pid: int) -> int:
    """Sockets the process holds (its listening socket included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue  # closed while we looked
    return count


def soft_open_files(pid: int) -> int:
    """The process's soft ``RLIMIT_NOFILE``, from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise RuntimeError(f"no open-file limit for {pid}")


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Run ``fn()`` ``repeat`` times; each one's duration in ms."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times
