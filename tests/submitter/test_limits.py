"""BFL's active-task limits are kept before sending: a burst never trips 429 by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import submitter
from tests.submitter.conftest import CountingTransport, World

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_a_burst_of_30_waits_for_slots_counted_in_the_store(
    world: World, tmp_path: Path
) -> None:
    transport = CountingTransport()
    async with submitter.BFL(settings=world.settings(tmp_path), transport=transport) as bfl:
        tasks = await asyncio.gather(
            *(bfl.generate("flux-dev", f"burst {i}", metadata={"i": i}) for i in range(30))
        )
    assert len({t.id for t in tasks}) == 30
    # Every POST was accepted the first time: the sandbox (limit 24) never said 429.
    assert transport.count("POST") == 30
    # The slots were freed by the receiver recording webhooks, not by polling.
    assert transport.count("GET") == 0
    for task in tasks:
        assert (await world.event(task.id)).metadata == {"i": int(task.metadata["i"])}


async def test_kontext_max_has_its_own_limit_of_6(world: World, tmp_path: Path) -> None:
    transport = CountingTransport()
    async with submitter.BFL(settings=world.settings(tmp_path), transport=transport) as bfl:
        tasks = await asyncio.gather(
            *(bfl.generate("flux-kontext-max", f"max {i}") for i in range(8))
        )
    assert len(tasks) == 8
    assert transport.count("POST") == 8


async def test_without_a_store_the_oldest_tasks_are_polled_to_free_slots(
    world: World, tmp_path: Path
) -> None:
    transport = CountingTransport()
    settings = world.settings(tmp_path, webhook_secret=())
    async with submitter.BFL(settings=settings, transport=transport) as bfl:
        assert bfl.store is None
        tasks = await asyncio.gather(*(bfl.generate("flux-dev", f"p{i}") for i in range(28)))
    assert len(tasks) == 28
    assert transport.count("POST") == 28
    assert transport.count("GET", "/get_result") > 0
