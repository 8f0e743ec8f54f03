"""Staying under BFL's active-task limits (24 per key, 6 for flux-kontext-max) before sending.

With the receiver's store, the count is what the store holds as still running: submissions of
the last hour (from every process sharing the store) with no terminal event yet. The receiver
frees a slot when the webhook (or its reconciler's poll) records the end; no get_result call is
made here. Counting and recording happen under one lock, so concurrent submits of this process
cannot both take the last slot.

Without a store (no webhooks), only this process's own tasks are known; a slot is freed when
``result``/``wait`` sees the task end, or when the gate, at the limit, polls the oldest ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from receiver.store import Store
from submitter._endpoints import MAX_ACTIVE, MAX_ACTIVE_BY_ENDPOINT
from submitter._errors import RateLimited
from submitter._types import Task

log = logging.getLogger("submitter")

#: How long a recorded submission can count as active (BFL tasks end long before).
WINDOW_SECONDS = 3600.0
#: Without a store, at most this many of the oldest tasks are polled per refresh.
REFRESH_BATCH = 4

Refresh = Callable[[list[Task]], Awaitable[None]]


@dataclass
class _Slot:
    endpoint: str
    task: Task | None = None
    """None while the POST is in flight."""


class Gate:
    """Admits a submission when its key has room; ``enter`` → POST → ``bound``/``release``."""

    def __init__(
        self,
        store: Store | None,
        *,
        refresh: Refresh | None = None,
        interval: float = 0.1,
        refresh_every: float = 0.5,
        max_wait: float = 600.0,
    ) -> None:
        self.store = store
        self.refresh = refresh
        self.interval = interval
        self.refresh_every = refresh_every
        self.max_wait = max_wait
        self._lock = asyncio.Lock()
        self.waiting: str | None = None
        """Why a submit is waiting for a slot right now (``"24 tasks active"``), else None."""
        self._slots: dict[int, _Slot] = {}
        self._tokens = itertools.count(1)

    async def enter(self, endpoint: str, record: Callable[[], Awaitable[None]] | None) -> int:
        """Wait for room under the limits, then ``record`` the submission; returns a token."""
        started = time.monotonic()
        last_refresh = 0.0
        said = False
        async with self._lock:
            while True:
                full = await self._full(endpoint)
                self.waiting = full
                if full is None:
                    break
                waited = time.monotonic() - started
                if waited > self.max_wait:
                    raise RateLimited(
                        f"{full} for {self.max_wait:.0f} s; is the receiver running "
                        "(it frees slots when webhooks come)?",
                        429,
                    )
                if not said:
                    log.info("%s: waiting for a task to end before submitting", full)
                    said = True
                due = time.monotonic() - last_refresh >= self.refresh_every
                if self.store is None and self.refresh is not None and due:
                    last_refresh = time.monotonic()
                    await self.refresh(self._oldest(REFRESH_BATCH))
                    continue
                await asyncio.sleep(self.interval)
            if record is not None:
                await record()
            token = next(self._tokens)
            self._slots[token] = _Slot(endpoint)
            return token

    def bound(self, token: int, task: Task) -> None:
        """The POST answered with ``task``. With a store, the store counts it from here on."""
        if self.store is not None:
            self._slots.pop(token, None)
        elif token in self._slots:
            self._slots[token].task = task

    def release(self, token: int) -> None:
        """The POST failed: no task exists."""
        self._slots.pop(token, None)

    def finished(self, task_id: str) -> None:
        """``task_id`` ended (seen by result/wait): its slot is free."""
        for token, slot in list(self._slots.items()):
            if slot.task is not None and slot.task.id == task_id:
                del self._slots[token]

    def active_here(self) -> int:
        """Tasks of this process still counted without a store (for tests and logs)."""
        return len(self._slots)

    async def _full(self, endpoint: str) -> str | None:
        """Why ``endpoint`` has no room now, or None when it has."""
        special = MAX_ACTIVE_BY_ENDPOINT.get(endpoint)
        if await self._count(None) >= MAX_ACTIVE:
            return f"{MAX_ACTIVE} tasks active"
        if special is not None and await self._count(endpoint) >= special:
            return f"{special} {endpoint} tasks active"
        return None

    async def _count(self, endpoint: str | None) -> int:
        if self.store is not None:
            # Slots here are only POSTs in flight; their submissions are already recorded.
            return await self.store.active_submissions(endpoint, within=WINDOW_SECONDS)
        return sum(1 for s in self._slots.values() if endpoint in (None, s.endpoint))

    def _oldest(self, count: int) -> list[Task]:
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        tasks.sort(key=lambda t: t.submitted_at)
        return tasks[:count]
