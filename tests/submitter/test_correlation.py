"""The submitter with no store shared with the receiver: metadata in the webhook URL, the size
limit before sending, and one warning per process about registering nowhere."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import submitter
from receiver.correlation import MAX_METADATA_BYTES
from tests.submitter.conftest import CountingTransport, World, cli

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def no_store(tmp_path: Path) -> str:
    """A store URL where no store is (and none may be created)."""
    return f"sqlite:///{tmp_path}/elsewhere/data/receiver.db"


async def test_a_webhook_beating_the_answer_carries_metadata_without_a_shared_store(
    world: World, tmp_path: Path
) -> None:
    # BFL's answer takes 1.5 s to come back; the task (0.3 s) ends and its webhook lands first,
    # at a receiver whose store has never heard of this submission.
    settings = world.settings(tmp_path, database_url=no_store(tmp_path))
    transport = CountingTransport(delay_submit_answers=1.5)
    async with submitter.BFL(settings=settings, transport=transport) as bfl:
        assert bfl.store is None
        task = await bfl.generate("flux-dev", "early [sandbox:early-webhook=1]", metadata={"o": 1})
        seen = world.events_for(task.id)
        assert seen, "the handler should have run before generate() returned"
    assert seen[0].metadata == {"o": 1}
    assert task.ref is not None
    assert not (tmp_path / "elsewhere").exists()


async def test_shared_secret_mode_carries_metadata_without_a_store(
    world: World, tmp_path: Path
) -> None:
    settings = world.settings(tmp_path, database_url=no_store(tmp_path))
    async with submitter.BFL(settings=settings, per_task_secret=False) as bfl:
        task = await bfl.generate("flux-dev", "shared", metadata={"mode": "shared"})
    assert (await world.event(task.id)).metadata == {"mode": "shared"}


async def test_metadata_over_the_limit_is_refused_before_anything_is_sent(
    world: World, tmp_path: Path
) -> None:
    transport = CountingTransport()
    too_big = {"note": "x" * MAX_METADATA_BYTES}
    async with submitter.BFL(settings=world.settings(tmp_path), transport=transport) as bfl:
        with pytest.raises(submitter.ValidationError) as refused:
            await bfl.generate("flux-dev", "big", metadata=too_big)
    assert transport.sent == []
    error = refused.value
    assert error.status_code is None  # caught here, not by BFL
    assert error.errors[0]["loc"] == ["metadata"]
    assert f"is {MAX_METADATA_BYTES + 11} bytes as compact JSON" in str(error)
    assert "at most 1024" in str(error)


def test_metadata_over_the_limit_is_a_validation_exit_on_the_command_line(
    world: World, tmp_path: Path
) -> None:
    out = cli(world.env(tmp_path), "generate", "big", "-m", f"note={'x' * MAX_METADATA_BYTES}")
    assert out.exit_code == 3, out.output
    assert "at most 1024" in out.stderr


async def test_registering_nowhere_is_warned_once_per_process(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = world.settings(tmp_path, database_url=no_store(tmp_path))
    with caplog.at_level(logging.WARNING, logger="submitter"):
        for n in range(2):
            async with submitter.BFL(settings=settings) as bfl:
                task = await bfl.generate("flux-dev", f"twice {n}", metadata={"n": n})
            assert (await world.event(task.id)).metadata == {"n": n}
    warnings = [m for m in caplog.messages if "cannot register" in m]
    assert len(warnings) == 1
    assert f"{tmp_path}/elsewhere/data/receiver.db (it does not exist)" in warnings[0]
    assert "no reconciliation" in warnings[0]


async def test_an_unreachable_postgresql_is_warned_about_without_its_password(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Port 9 (discard) on loopback: nobody listens, the connection is refused at once.
    url = "postgresql://bot:hunter2-secret@127.0.0.1:9/bflhooks"
    settings = world.settings(tmp_path, database_url=url)
    with caplog.at_level(logging.WARNING, logger="submitter"):
        async with submitter.BFL(settings=settings) as bfl:
            task = await bfl.generate("flux-dev", "no db", metadata={"db": None})
    assert (await world.event(task.id)).metadata == {"db": None}
    (warning,) = [m for m in caplog.messages if "cannot register" in m]
    assert "postgresql://bot@127.0.0.1:9/bflhooks" in warning
    assert "hunter2" not in caplog.text
