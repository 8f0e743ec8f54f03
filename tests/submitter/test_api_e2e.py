"""The Python API end to end: BFL (the sandbox) → webhook → receiver → a handler with metadata."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import submitter
from receiver.store import open_store, opened_store
from tests.submitter.conftest import CountingTransport, World, sandbox

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_generate_reaches_the_handler_with_image_and_metadata(
    world: World, tmp_path: Path
) -> None:
    transport = CountingTransport()
    async with submitter.BFL(settings=world.settings(tmp_path), transport=transport) as bfl:
        task = await bfl.generate("flux-dev", "a lighthouse", metadata={"chat_id": 42}, seed=7)
        assert task.webhook
        assert task.ref
        assert task.polling_url
        assert task.cost == 2.5
        event = await world.event(task.id)
    assert event.status == "ready"
    assert event.metadata == {"chat_id": 42}
    image = world.image_for(task.id)
    assert image is not None
    assert image[:3] == b"\xff\xd8\xff"
    # The webhook brought it: one submit, no get_result at all.
    assert transport.sent == [("POST", "/v1/flux-dev")]


async def test_webhook_arriving_before_submit_returns_still_carries_metadata(
    world: World, tmp_path: Path
) -> None:
    # BFL's answer takes 1.5 s to come back; the task (0.3 s) ends and its webhook lands first.
    transport = CountingTransport(delay_submit_answers=1.5)
    async with submitter.BFL(settings=world.settings(tmp_path), transport=transport) as bfl:
        task = await bfl.generate("flux-dev", "an early bird", metadata={"order": "A-17"})
        seen = world.events_for(task.id)
        assert seen, "the handler should have run before generate() returned"
    assert seen[0].metadata == {"order": "A-17"}


async def test_duplicate_webhook_runs_the_handler_once(world: World, tmp_path: Path) -> None:
    async with submitter.BFL(settings=world.settings(tmp_path)) as bfl:
        task = await bfl.generate(
            "flux-dev", "twins [sandbox:duplicate-webhook]", metadata={"n": 2}
        )
        store = bfl.store
        assert store is not None
        await world.event(task.id)
        # This task's own delivery count: the shared receiver's duplicate metric also counts
        # other tests' late webhooks, so a delta of it races with them.
        deliveries = 0
        for _ in range(200):
            event = await store.get_event(task.id)
            deliveries = event.deliveries if event is not None else 0
            if deliveries >= 2:
                break
            await asyncio.sleep(0.05)
    assert deliveries >= 2
    assert len(world.events_for(task.id)) == 1
    assert world.events_for(task.id)[0].metadata == {"n": 2}


async def test_dropped_webhook_is_finished_by_the_reconciler(world: World, tmp_path: Path) -> None:
    async with submitter.BFL(settings=world.settings(tmp_path)) as bfl:
        task = await bfl.generate("flux-dev", "lost [sandbox:drop-webhook]", metadata={"u": 1})
    event = await world.event(task.id, within=20)
    assert event.metadata == {"u": 1}
    assert world.image_for(task.id) is not None


async def test_shared_secret_mode_sends_the_master_secret_without_a_reference(
    world: World, tmp_path: Path
) -> None:
    settings = world.settings(tmp_path)
    async with submitter.BFL(settings=settings, per_task_secret=False) as bfl:
        task = await bfl.generate("flux-dev", "plain secret", metadata={"mode": "shared"})
        assert task.webhook
    event = await world.event(task.id)
    assert event.metadata == {"mode": "shared"}


async def test_edit_sends_the_image_and_the_handler_gets_the_result(
    world: World, tmp_path: Path
) -> None:
    source = Image.new("RGB", (320, 240), "green")
    async with submitter.BFL(settings=world.settings(tmp_path)) as bfl:
        task = await bfl.edit(source, "add snow", metadata={"k": "v"}, aspect_ratio="4:3")
        result = await bfl.wait(task)
        saved = await bfl.download(result, tmp_path / "out" / "snow.png")
    assert task.endpoint == "flux-kontext-pro"
    assert (await world.event(task.id)).metadata == {"k": "v"}
    with Image.open(saved) as img:
        assert img.format == "PNG"  # kontext's default output format


async def test_wait_tolerates_task_not_found_right_after_submit(
    world: World, tmp_path: Path
) -> None:
    async with submitter.BFL(settings=world.settings(tmp_path)) as bfl:
        task = await bfl.generate("flux-dev", "shy [sandbox:early-webhook=0.8]")
        first = await bfl.result(task)
        result = await bfl.wait(task, interval=0.1)
    assert first.status in (submitter.Status.PENDING, submitter.Status.NOT_FOUND)
    assert result.ok
    assert result.sample is not None


async def test_get_result_5xx_is_retried(world: World, tmp_path: Path) -> None:
    transport = CountingTransport()
    async with submitter.BFL(settings=world.settings(tmp_path), transport=transport) as bfl:
        task = await bfl.generate("flux-dev", "flaky [sandbox:get-result-5xx=2]")
        result = await bfl.result(task)
    assert result.id == task.id
    assert transport.count("GET", "/get_result") == 3


async def test_polling_only_without_a_webhook_secret(world: World, tmp_path: Path) -> None:
    settings = world.settings(tmp_path, webhook_secret=(), database_url="sqlite:///nope/x.db")
    async with submitter.BFL(settings=settings) as bfl:
        assert "webhook" in bfl.notes
        assert bfl.store is None
        task = await bfl.generate("flux-dev", "polled", metadata={"m": 1})
        assert not task.webhook
        assert task.ref is None
        result = await bfl.wait(task, interval=0.1)
        path = await bfl.download(result, tmp_path / "polled.jpg")
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"
    assert not await asyncio.to_thread(Path("nope").exists)  # no store was created
    await asyncio.sleep(0.5)
    assert world.events_for(task.id) == []  # no webhook was asked for


async def test_answer_without_polling_url_falls_back_to_the_submit_host(tmp_path: Path) -> None:
    # The spec's AsyncWebhookResponse has no polling_url; such a task is polled on the host it
    # was submitted to, and nothing is bound for the reconciler to poll wrongly.
    with sandbox(submit_response="webhook", strict_regions=False) as api:
        db = f"sqlite:///{tmp_path}/r.db"
        async with opened_store(db):
            pass  # the receiver's store exists (the submitter never creates one)
        values: dict[str, Any] = {
            "api_key": "k",
            "api_url": api,
            "public_url": "http://127.0.0.1:9/",
            "webhook_secret": "s",
            "database_url": db,
        }
        settings = submitter.Settings(_env_file=None, **values)  # type: ignore[call-arg]
        async with submitter.BFL(settings=settings) as bfl:
            task = await bfl.generate("flux-dev", "no polling url")
            assert task.polling_url is None
            assert (await bfl.wait(task, interval=0.1)).ok
            store = bfl.store
            assert store is not None
            recorded = await store.get_submission(task_id=task.id)
    assert recorded is not None
    assert recorded.polling_url is None


async def test_credits_go_down_by_the_cost(world: World, tmp_path: Path) -> None:
    async with submitter.BFL(settings=world.settings(tmp_path)) as bfl:
        before = await bfl.credits()
        task = await bfl.generate("flux-pro-1.1", "priced", width=512, height=512)
        after = await bfl.credits()
    assert task.cost is not None
    assert before - after == pytest.approx(task.cost)


async def test_images_given_as_paths_bytes_and_pil_are_all_accepted(
    world: World, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), "red").save(buffer, "PNG")
    path = tmp_path / "in.png"
    path.write_bytes(buffer.getvalue())
    async with submitter.BFL(settings=world.settings(tmp_path)) as bfl:
        by_path = await bfl.edit(path, "a", model="flux-2-pro", references=[buffer.getvalue()])
        by_pil = await bfl.generate(
            "flux-pro-1.0-expand", image=Image.new("RGB", (512, 512)), top=32, prompt="wider"
        )
    # The sandbox measured the images it got.
    assert by_path.input_mp
    assert by_pil.input_mp


async def test_records_use_the_store_given(world: World, tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/mine.db")
    await store.open()
    try:
        settings = world.settings(tmp_path)
        async with submitter.BFL(settings=settings, store=store) as bfl:
            task = await bfl.generate("flux-dev", "mine", metadata={"a": 1})
        recorded = await store.get_submission(task_id=task.id)
        assert recorded is not None
        assert recorded.metadata == {"a": 1}
        assert recorded.polling_url == task.polling_url
    finally:
        await store.close()
