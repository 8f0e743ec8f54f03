"""``receiver.bounded.within``: the caller gets its answer on time even when the call it gave up
on takes long to unwind (as a database call does against a hung server)."""

from __future__ import annotations

import asyncio

import pytest

from receiver.bounded import within

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_result_and_the_error_of_a_prompt_call_pass_through() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise ValueError("no")

    assert await within(answer(), 1) == 42
    with pytest.raises(ValueError, match="no"):
        await within(fail(), 1)


async def test_a_call_slow_to_unwind_is_given_up_on_time_and_still_cancelled() -> None:
    unwound = asyncio.Event()

    async def hung() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)  # a rollback over a socket that does not answer
            unwound.set()
            raise

    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        await within(hung(), 0.2)
    assert not unwound.is_set()  # the answer did not wait for the unwinding
    await asyncio.wait_for(unwound.wait(), 5)  # it was cancelled, and it finished unwinding
