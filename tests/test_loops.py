"""Background loops: a failing step is survived and reported; a loop that ends is a problem."""

from __future__ import annotations

import asyncio
import logging

import pytest

from receiver import loops
from receiver.health import Health

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_failing_step_is_retried_reported_and_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loops, "FIRST_BACKOFF", 0.01)
    health = Health()
    calls = 0
    while_failing: list[tuple[str, str]] = []
    recovered = asyncio.Event()

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise OSError("database is locked")
        if calls == 4:  # the first step that works: the failure is still reported during it
            while_failing.extend((p.component, p.reason) for p in health.problems)
            return
        recovered.set()
        await asyncio.sleep(3600)

    log = logging.getLogger("test.loops")
    task = asyncio.create_task(loops.run_forever("worker", step, health=health, log=log))
    await asyncio.wait_for(recovered.wait(), 5)
    assert while_failing == [("worker", "OSError: database is locked")]
    assert health.problems == []  # cleared once a step worked
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class Fatal(BaseException):
    """Not an Exception: what run_forever lets through (as it must CancelledError)."""


async def test_a_loop_that_ends_is_reported_as_stopped() -> None:
    health = Health()
    log = logging.getLogger("test.loops")

    async def ends() -> None:
        raise Fatal

    task: asyncio.Task[None] = asyncio.create_task(
        loops.run_forever("reconciler", ends, health=health, log=log)
    )
    loops.watch(task, "reconciler", health, log)
    with pytest.raises(Fatal):
        await task
    await asyncio.sleep(0)  # the done callback runs on the next turn
    [problem] = health.problems
    assert problem.component == "reconciler"
    assert problem.reason.startswith("stopped")


async def test_a_cancelled_loop_is_a_shutdown_not_a_problem() -> None:
    health = Health()
    log = logging.getLogger("test.loops")
    task = asyncio.create_task(
        loops.run_forever("worker", lambda: asyncio.sleep(3600), health=health, log=log)
    )
    loops.watch(task, "worker", health, log)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert health.problems == []
