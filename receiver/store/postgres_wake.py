"""Wake-ups across replicas: LISTEN on a dedicated connection, NOTIFY after changes commit.

Idle workers wait on an ``asyncio.Event``; this sets it when any replica (this one included)
announces jobs that may be due. It is an optimisation over the workers' slow poll, never the
only way jobs are found: a NOTIFY lost to a crash or a dropped connection costs one poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

log = logging.getLogger("receiver.store.postgres")

CHANNEL = "bfl_hooks_jobs"

#: Failures of the server or the connection to it (as opposed to bugs).
ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

# NOTIFY takes a database-wide lock from its commit until the transaction ends, so a NOTIFY
# inside ``record`` would serialize every webhook's commit (and fsync). Instead it goes in a
# transaction of its own that writes nothing worth an fsync.
_NOTIFY = f"BEGIN; SET LOCAL synchronous_commit = off; NOTIFY {CHANNEL}; COMMIT;"

MAX_CONNECT_SECONDS = 10.0


class Wakeups:
    """An event set by ``announce`` here or on any replica sharing the database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._event = asyncio.Event()
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._pending = False
        self._notifier: asyncio.Task[None] | None = None

    async def start(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        """Listen (raises if the server cannot be reached); NOTIFY through ``pool``."""
        self._pool = pool
        await self._listen(MAX_CONNECT_SECONDS)

    async def stop(self) -> None:
        """Send what is still pending, stop listening."""
        if self._notifier is not None:
            with contextlib.suppress(Exception):
                await self._notifier
            self._notifier = None
        self._pool = None
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(*ERRORS):
                await listener.close(timeout=5)

    def announce(self) -> None:
        """Wake this process's workers now and every replica's soon, once per burst."""
        self._event.set()
        self._pending = True
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._send(), name="pg-notify")

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll interval
        """Return on a wake-up or after ``timeout`` seconds, whichever comes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._listener is None or self._listener.is_closed():
            await self._relisten(min(timeout, MAX_CONNECT_SECONDS))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max(0.0, deadline - loop.time()))
        self._event.clear()

    async def _listen(self, timeout: float) -> None:  # noqa: ASYNC109 - a connect timeout
        conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(self.url, timeout=timeout)
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._lost)
        self._listener = conn

    async def _relisten(self, timeout: float) -> None:  # noqa: ASYNC109 - a connect timeout
        try:
            await self._listen(max(timeout, 0.1))
        except (*ERRORS, TimeoutError) as exc:
            log.warning("cannot listen for new jobs (polling meanwhile): %s", exc)
            return
        log.info("listening for new jobs again")
        self._event.set()  # whatever was announced while we were deaf: look once

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._event.set()

    def _lost(self, conn: object) -> None:
        if conn is self._listener:
            log.warning("lost the connection listening for new jobs")
            self._listener = None
            self._event.set()

    async def _send(self) -> None:
        # One NOTIFY in flight at a time: announcements made meanwhile share the next one.
        while self._pending and self._pool is not None:
            self._pending = False
            try:
                await self._pool.execute(_NOTIFY)
            except ERRORS as exc:
                log.warning("could not announce new jobs (replicas will poll): %s", exc)
                return
