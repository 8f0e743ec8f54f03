"""A raw-socket HTTP server on loopback, for faults no well-behaved server makes: a body that
trickles a few bytes at a time, a close-delimited body cut short, a Content-Length not kept."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.servers import base_url, loopback_socket

#: No test connection is served longer than this, whatever the client does.
MAX_SERVE_SECONDS = 60.0

Answer = Callable[[socket.socket], None]


def read_request(conn: socket.socket) -> bytes:
    """The request head (up to the blank line); a test's client sends no body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def head(content_type: str = "image/jpeg", length: int | None = None) -> bytes:
    """A 200 status line and headers; without ``length`` the body ends when the socket closes."""
    lines = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def trickle(body: bytes, *, step: int, every: float, length: int | None = None) -> Answer:
    """Send ``step`` bytes of ``body`` every ``every`` seconds, until done or the client leaves."""

    def answer(conn: socket.socket) -> None:
        conn.sendall(head(length=len(body) if length is None else length))
        stop = time.monotonic() + MAX_SERVE_SECONDS
        for i in range(0, len(body), step):
            if time.monotonic() > stop:
                return
            conn.sendall(body[i : i + step])
            time.sleep(every)

    return answer


def cut_short(body: bytes, sent: int, *, declare_length: bool) -> Answer:
    """Send the first ``sent`` bytes of ``body``, then close (with or without Content-Length)."""

    def answer(conn: socket.socket) -> None:
        conn.sendall(head(length=len(body) if declare_length else None))
        conn.sendall(body[:sent])

    return answer


class RawServer:
    """Accepts connections on loopback; each is answered by ``answer`` on its own thread."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sock = loopback_socket()
        self.sock.settimeout(0.2)
        self.url = base_url(self.sock)
        self.connections = 0
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(MAX_SERVE_SECONDS)
            try:
                read_request(conn)
                self.answer(conn)
            except OSError:
                pass  # the client hung up: what these faults are about

    def start(self) -> RawServer:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._acceptor.join(timeout=5)
        self.sock.close()


@contextmanager
def raw_server(answer: Answer) -> Iterator[RawServer]:
    server = RawServer(answer).start()
    try:
        yield server
    finally:
        server.stop()
