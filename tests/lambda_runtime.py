"""A loopback stand-in for the AWS Lambda Runtime API, for the real runtime client.

Written from AWS's description of the API
(https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html) and the client's use of it
(aws/aws-lambda-python-runtime-interface-client, ``awslambdaric/lambda_runtime_client.py``):

- ``GET /2018-06-01/runtime/invocation/next`` long-polls: it is held open until an invocation
  is queued (answering "nothing" would crash the client), then answers the event as the body
  with ``Lambda-Runtime-Aws-Request-Id``, ``-Deadline-Ms`` (epoch milliseconds),
  ``-Invoked-Function-Arn`` and ``-Trace-Id``;
- ``POST /2018-06-01/runtime/invocation/<id>/response`` and ``.../<id>/error``: 202;
- ``POST /2018-06-01/runtime/init/error``: 202.

Like Lambda, it freezes the function between invocations: once an invocation has been
answered and the runtime asks for the next one, the process is sent SIGSTOP, and SIGCONT just
before the next event is handed over. Nothing in it runs while it waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:bfl-hooks"


@dataclass
class Invocation:
    """One event handed to the function, and what it answered."""

    event: Any
    timeout: float
    trace_id: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    outcome: str | None = None
    """``response`` or ``error``, once the function has answered."""
    result: Any = None
    done: threading.Event = field(default_factory=threading.Event)
    answered_in: float | None = None


class RuntimeAPI:
    """The stand-in, serving on 127.0.0.1 at a port the kernel picks."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Invocation] = queue.Queue()
        self._by_id: dict[str, Invocation] = {}
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.pid: int | None = None
        """The function's process, frozen between invocations once set."""
        self.frozen = False
        self.freezes = 0
        self.init_errors: list[Any] = []
        self._answered = False  # an invocation ended since the last "next"
        self._started: dict[str, float] = {}

    @property
    def address(self) -> str:
        """``host:port``, for ``AWS_LAMBDA_RUNTIME_API``."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> RuntimeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self.thaw()
        self._server.shutdown()
        self._server.server_close()

    def submit(self, event: Any, *, timeout: float = 30.0) -> Invocation:
        """Queue ``event`` for the function with ``timeout`` seconds to run; do not wait."""
        trace = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0"
        invocation = Invocation(event, timeout, trace)
        self._by_id[invocation.request_id] = invocation
        self._queue.put(invocation)
        return invocation

    def invoke(self, event: Any, *, timeout: float = 30.0, wait: float = 60.0) -> Invocation:
        """Hand ``event`` to the function with ``timeout`` seconds to run; its answer."""
        invocation = self.submit(event, timeout=timeout)
        if not invocation.done.wait(wait):
            raise AssertionError(f"the function did not answer within {wait} s")
        return invocation

    # -- freezing ------------------------------------------------------------------------------

    def replaced(self, pid: int) -> None:
        """The old execution environment is gone (killed); ``pid`` is the new one's."""
        self.pid, self.frozen, self._answered = pid, False, False

    def freeze(self) -> None:
        if self.pid is None or self.frozen:
            return
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True
        self.freezes += 1

    def thaw(self) -> None:
        if self.pid is not None and self.frozen:
            self.frozen = False
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def process_state(self) -> str:
        """The function process's state letter from /proc (``T`` when stopped)."""
        assert self.pid is not None
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]

    # -- the endpoints -------------------------------------------------------------------------

    def _next(self) -> Invocation | None:
        if self._answered:
            self._answered = False
            self.freeze()  # as Lambda does once the runtime asks for more and nothing is due
        while not self._closing.is_set():
            with contextlib.suppress(queue.Empty):
                invocation = self._queue.get(timeout=0.2)
                self.thaw()
                self._started[invocation.request_id] = time.monotonic()
                return invocation
        return None

    def _answer(self, request_id: str, outcome: str, body: bytes) -> bool:
        invocation = self._by_id.get(request_id)
        if invocation is None or invocation.outcome is not None:
            return False
        invocation.outcome = outcome
        invocation.result = json.loads(body) if body else None
        started = self._started.get(request_id)
        invocation.answered_in = time.monotonic() - started if started else None
        self._answered = True
        invocation.done.set()
        return True


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the function process was killed mid-request: expected in these tests
        super().handle_error(request, client_address)


def _make_handler(api: RuntimeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in one segment (the wfile is flushed after each request),
        # and without Nagle: otherwise delayed ACKs add ~40 ms to every exchange.
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the test reads outcomes, not access logs

        def _reply(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path != f"{PREFIX}/invocation/next":
                self._reply(404, b'{"errorMessage": "not found"}')
                return
            invocation = api._next()
            if invocation is None:  # shutting down: the process is being killed anyway
                self.close_connection = True
                return
            deadline_ms = int((time.time() + invocation.timeout) * 1000)
            self._reply(
                200,
                json.dumps(invocation.event).encode(),
                {
                    "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                    "Lambda-Runtime-Trace-Id": invocation.trace_id,
                },
            )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path == f"{PREFIX}/init/error":
                api.init_errors.append(json.loads(body) if body else None)
                self._reply(202, b'{"status": "OK"}')
                return
            parts = self.path.removeprefix(f"{PREFIX}/invocation/").split("/")
            known = len(parts) == 2 and parts[1] in ("response", "error")
            if known and api._answer(parts[0], parts[1], body):
                self._reply(202, b'{"status": "OK"}')
                return
            self._reply(400, b'{"errorMessage": "unknown request id"}')

    return Handler


@contextlib.contextmanager
def runtime_api() -> Iterator[RuntimeAPI]:
    api = RuntimeAPI().start()
    try:
        yield api
    finally:
        api.stop()
