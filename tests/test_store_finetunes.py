"""The finetune half of the store contract, on SQLite and on a real PostgreSQL: an event's task
kind is decided when it is recorded, the same whether a webhook or a poll records it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from receiver.events import TaskKind
from receiver.payload import notice_from_payload
from receiver.store import Store, opened_store, sqlite_schema
from receiver.store.base import RecordOutcome

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def record(store: Store, payload: dict[str, Any], ref: str | None = None) -> RecordOutcome:
    return await store.record(
        notice_from_payload(payload),
        deadline=None,
        handlers=["gen"],
        ref=ref,
        finetune_handlers=["ft", "all"],
    )


async def handlers_of(store: Store, task_id: str) -> list[tuple[str, str]]:
    return sorted((j.kind.value, j.handler) for j in await store.jobs_for(task_id))


async def test_a_finetune_submission_makes_a_finetune_event(store: Store) -> None:
    await store.prepare_submission("r1", "finetune", {"chat_id": 42})
    await store.bind_submission("r1", "ft1", "http://x/us1/v1/get_result?id=ft1")
    # The poll's answer (no ref) and the webhook (with it) agree.
    assert await record(store, {"id": "ft1", "status": "Ready", "result": {}}) is RecordOutcome.NEW
    event = await store.get_event("ft1")
    assert event is not None
    assert (event.task_kind, event.metadata) == (TaskKind.FINETUNE, {"chat_id": 42})
    assert await handlers_of(store, "ft1") == [("handler", "all"), ("handler", "ft")]
    webhook = {"task_id": "ft1", "status": "Ready", "result": {"finetune_id": "ft1"}}
    assert await record(store, webhook, ref="r1") is RecordOutcome.DUPLICATE


async def test_a_finetune_by_reference_before_bind(store: Store) -> None:
    await store.prepare_submission("r1", "finetune", {"n": 1})
    assert await record(store, {"id": "ft1", "status": "Error"}, ref="r1") is RecordOutcome.NEW
    event = await store.get_event("ft1")
    assert event is not None
    assert event.task_kind is TaskKind.FINETUNE
    assert await handlers_of(store, "ft1") == [("handler", "all"), ("handler", "ft")]


async def test_a_finetune_never_downloads(store: Store) -> None:
    await store.prepare_submission("r1", "finetune", {})
    await store.bind_submission("r1", "ft1", None)
    ready = {"id": "ft1", "status": "Ready", "result": {"sample": "https://x/s.jpg"}}
    await record(store, ready)
    assert await handlers_of(store, "ft1") == [("handler", "all"), ("handler", "ft")]


async def test_an_unregistered_finetune_is_known_by_its_result(store: Store) -> None:
    await record(store, {"task_id": "ft9", "status": "Ready", "result": {"finetune_id": "ft9"}})
    event = await store.get_event("ft9")
    assert event is not None
    assert (event.task_kind, event.metadata) == (TaskKind.FINETUNE, {})


async def test_a_generation_stays_a_generation(store: Store) -> None:
    await store.prepare_submission("r1", "flux-dev", {})
    await store.bind_submission("r1", "g1", None)
    await record(store, {"id": "g1", "status": "Error"})
    ready = {"id": "g2", "status": "Ready", "result": {"sample": "https://x/s.jpg"}}
    await record(store, ready)
    for task_id in ("g1", "g2"):
        event = await store.get_event(task_id)
        assert event is not None
        assert event.task_kind is TaskKind.GENERATION
    assert await handlers_of(store, "g1") == [("handler", "gen")]
    assert await handlers_of(store, "g2") == [("download", "")]


async def test_pending_then_ready_keeps_the_finetune_kind(store: Store) -> None:
    await store.prepare_submission("r1", "finetune", {})
    await store.bind_submission("r1", "ft1", None)
    assert await record(store, {"id": "ft1", "status": "Pending"}) is RecordOutcome.PROGRESS
    assert await handlers_of(store, "ft1") == []
    assert await record(store, {"id": "ft1", "status": "Ready"}) is RecordOutcome.NEW
    event = await store.get_event("ft1")
    assert event is not None
    assert event.task_kind is TaskKind.FINETUNE
    assert await handlers_of(store, "ft1") == [("handler", "all"), ("handler", "ft")]


async def test_trainings_do_not_count_against_the_active_task_limit(store: Store) -> None:
    await store.prepare_submission("r1", "finetune", {})
    await store.bind_submission("r1", "ft1", None)
    await store.prepare_submission("r2", "flux-dev", {})
    await store.bind_submission("r2", "g1", None)
    assert await store.active_submissions(within=3600) == 1
    due = await store.due_for_reconcile(-1.0, 10)
    assert {s.endpoint for s in due} == {"finetune", "flux-dev"}  # both are still polled


async def test_an_older_sqlite_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # a store as the previous receiver left it
        for script in sqlite_schema.MIGRATIONS[:2]:
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {2}")
        db.execute(
            """INSERT INTO events (task_id, status, raw_status, payload, received_at,
                   updated_at) VALUES ('old', 'ready', 'Ready', '{}', 0, 0)"""
        )
    db.close()
    async with opened_store(f"sqlite:///{path}") as store:
        event = await store.get_event("old")
    assert event is not None
    assert event.task_kind is TaskKind.GENERATION
