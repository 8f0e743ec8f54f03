"""Background loops that cannot die from an exception.

A loop is a ``step`` run again and again. When a step raises (the store is locked, the disk is
full, PostgreSQL is restarting), the loop logs it, reports it to ``Health`` so ``/readyz`` says
so, waits with exponential backoff and tries again, for ever. The first failure is logged with
its traceback, the ones after it as one line each, and the recovery once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from receiver.health import Health, describe

#: First wait after a failed step, doubling per failure in a row, never above the cap.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


def backoff(base: float, attempt: int, cap: float) -> float:
    """Exponential backoff with jitter: about base·2^(attempt-1), never over cap."""
    delay: float = min(cap, base * 2 ** max(attempt - 1, 0))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


async def run_forever(
    name: str,
    step: Callable[[], Awaitable[None]],
    *,
    health: Health,
    log: logging.Logger,
) -> None:
    """Run ``step`` until cancelled, surviving whatever it raises (see the module docstring)."""
    failures = 0
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            reason = describe(exc)
            health.fail(name, reason)
            delay = backoff(FIRST_BACKOFF, failures, MAX_BACKOFF)
            if failures == 1:
                log.exception("%s failed; retrying in %.1f s", name, delay)
            else:
                log.warning("%s failed %d times in a row: %s", name, failures, reason)
            await asyncio.sleep(delay)
            continue
        if failures:
            log.warning("%s works again after %d failures", name, failures)
            failures = 0
            health.ok(name)


def watch(task: asyncio.Task[None], name: str, health: Health, log: logging.Logger) -> None:
    """Make a loop's end visible: a loop that stops for any reason but shutdown is a problem."""

    def ended(done: asyncio.Task[None]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        health.fail(name, f"stopped: {describe(exc)}" if exc else "stopped")
        log.error("%s stopped", name, exc_info=exc)

    task.add_done_callback(ended)
