"""Server-level guards uvicorn lacks: read deadlines, and a bound on open connections.

uvicorn's h11 protocol never times out a connection that has not sent a complete request: an
idle socket, half-sent headers or a body trickled a byte a second hold a file descriptor and
memory for ever, and enough of them stop the server answering anyone. Headers never reach the
ASGI app, so this sits one level down, as a subclass of uvicorn's ``H11Protocol`` given to
``uvicorn.Config(http=...)``:

- **Read deadlines.** From the moment a connection opens (or the first byte of its next
  request) the client has ``header_timeout`` seconds to finish the headers, then
  ``body_timeout`` (plus a second, so the app's own 408 comes first when it is reading) to
  finish the body. Past that the connection is closed. Between requests uvicorn's keep-alive
  timeout applies. A request fully received is never cut: the app's work has no deadline here.
- **A bound on open connections** (``max_connections``). It counts every open connection, so
  memory and file descriptors stay bounded, but a connection still *waiting on its client*
  (idle, or mid-request) is not owed its place: when a new one arrives at the bound, the oldest
  waiting connection is closed to make room. Idle or trickling sockets therefore cannot starve a
  real request. Only when every connection is busy (a request in, its answer not yet out) does
  the newcomer get ``503`` with ``Retry-After`` (after its headers, so the answer is read).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

log = logging.getLogger("receiver.http")

#: What a refused client is told to wait, in seconds: busy requests take milliseconds.
RETRY_AFTER_SECONDS = 1
#: The body deadline here is a backstop behind the app's 408, so it fires a little later.
_BACKSTOP_GRACE = 1.0
#: At most one "over the bound" warning per this many seconds: a flood must not flood the log.
_WARN_EVERY = 10.0


@dataclass(frozen=True)
class GuardLimits:
    """The guard's settings (``RECEIVER_HEADER_TIMEOUT_SECONDS`` and friends)."""

    header_timeout: float
    body_timeout: float
    max_connections: int


@dataclass
class _Shared:
    """State shared by every connection of one server."""

    limits: GuardLimits
    live: int = 0
    """Open connections not yet closed by us or the client."""
    waiting: dict[GuardedH11Protocol, None] = field(default_factory=dict)
    """Connections waiting on their client, oldest first (a dict keeps insertion order)."""
    evicted: int = 0
    refused: int = 0
    warned_at: float = 0.0

    def warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self.warned_at >= _WARN_EVERY:
            self.warned_at = now
            log.warning(
                "%s at %d connections (RECEIVER_MAX_CONNECTIONS); so far %d waiting "
                "connections closed to make room, %d refused with 503",
                what,
                self.limits.max_connections,
                self.evicted,
                self.refused,
            )


async def _service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"too many connections, retry later"})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and the connection bound (see the module)."""

    shared: ClassVar[_Shared]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "headers" or "body" while a deadline is armed
        self._counted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        shared = self.shared
        shared.live += 1
        self._counted = True
        if shared.live > shared.limits.max_connections:
            victim = next(iter(shared.waiting), None)
            if victim is not None:
                shared.evicted += 1
                victim._close()
                shared.warn("closed the oldest waiting connection")
            else:
                # Every connection is busy: answer this one 503 once its headers are in.
                shared.refused += 1
                self.app = _service_unavailable
                shared.warn("refused a connection with 503")
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        self._set_deadline(None)
        self.shared.waiting.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._watch()

    def _watch(self) -> None:
        """Arm the deadline that fits where the client is in its request (or none)."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._set_deadline("body")
        elif state is h11.IDLE:
            # Idle after an answer: uvicorn's keep-alive timer runs; otherwise (a new
            # connection, or bytes of the next request) the client owes us headers.
            self._set_deadline(None if self.timeout_keep_alive_task is not None else "headers")
        else:  # the request is in (DONE), or the connection is ending
            self._set_deadline(None)
        waiting = self.shared.waiting
        if state is h11.IDLE or state is h11.SEND_BODY:
            waiting.setdefault(self, None)
        else:
            waiting.pop(self, None)

    def _set_deadline(self, phase: str | None) -> None:
        if phase == self._phase:
            return  # still the same wait: its deadline stands
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            limits = self.shared.limits
            delay = limits.header_timeout
            if phase == "body":
                delay = limits.body_timeout + _BACKSTOP_GRACE
            self._deadline = self.loop.call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        log.debug("closing a connection: no complete request %s in time", self._phase)
        self._close()

    def _close(self) -> None:
        self.shared.waiting.pop(self, None)
        self._uncount()
        if not self.transport.is_closing():
            self.transport.close()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.shared.live -= 1


def guarded_protocol(limits: GuardLimits) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)``; one per server (it holds the count)."""
    shared = _Shared(limits)

    class Guarded(GuardedH11Protocol):
        pass

    Guarded.shared = shared
    return Guarded
