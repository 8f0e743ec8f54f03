"""Wait for a store call no longer than a caller can afford, even when the store hangs.

``asyncio.timeout`` cancels the call and then waits for it to unwind, and unwinding a database
call talks to the database: asyncpg rolls the transaction back and releases the connection over
the very socket that stopped answering. Against a hung server (a stalled disk, a paused VM,
a SIGSTOP) that wait is as long as the hang. ``within`` gives up on the call instead: it is
cancelled and left to unwind on its own, and the caller gets its TimeoutError on time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("receiver")

T = TypeVar("T")

#: Calls given up on and still unwinding: the loop keeps only weak references to tasks.
_unwinding: set[asyncio.Task[Any]] = set()


async def within(call: Coroutine[Any, Any, T], seconds: float) -> T:
    """``await call``, or raise TimeoutError after ``seconds`` without waiting for it to end."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        _abandon(task)
        raise
    if done:
        return task.result()
    task.cancel()
    _abandon(task)
    raise TimeoutError(f"no answer within {seconds:g} s")


def _abandon(task: asyncio.Task[Any]) -> None:
    _unwinding.add(task)
    task.add_done_callback(_unwound)


def _unwound(task: asyncio.Task[Any]) -> None:
    _unwinding.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # Already answered for (a 503, a not-ready); retrieved so asyncio does not warn.
        log.debug("a store call given up on ended with %r", task.exception())
