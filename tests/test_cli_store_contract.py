"""The store's side of the command line, on both engines: how an event arrived, each run's
traceback, dead jobs, job states of many tasks, image hashes, and ``create=False``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from receiver.store import JobState, StoreMissing, Via, open_store, opened_store
from receiver.store.base import MAX_TRACEBACK_CHARS, Store
from receiver.store.sqlite_schema import MIGRATIONS
from tests.test_store_contract import IMAGE, claim_one, event_of, notice, record

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_a_polled_result_is_no_delivery(store: Store) -> None:
    polled = notice("t1", "Error", sample=None)
    await store.record(polled, deadline=None, handlers=[], via=Via.POLLING)
    event = await event_of(store, "t1")
    assert (event.via, event.deliveries) == (Via.POLLING, 0)
    await store.record(polled, deadline=None, handlers=[])  # the webhook, late: a duplicate
    event = await event_of(store, "t1")
    assert (event.via, event.deliveries) == (Via.POLLING, 1)
    await record(store, "t2", "Error", sample=None)
    assert (await event_of(store, "t2")).via is Via.WEBHOOK


async def test_a_task_pending_by_webhook_and_finished_by_polling_says_polling(
    store: Store,
) -> None:
    await record(store, "t1", "Pending", sample=None)
    await store.record(notice("t1", "Ready"), deadline=None, handlers=[], via=Via.POLLING)
    event = await event_of(store, "t1")
    assert (event.status.value, event.via, event.deliveries) == ("ready", Via.POLLING, 1)


async def test_each_run_keeps_its_traceback_capped(store: Store) -> None:
    await store.record(notice("t1", "Error", sample=None), deadline=None, handlers=["h:a"])
    job = await claim_one(store)
    assert await store.retry(job, "E: first", 0, traceback="Traceback: first\x00")
    job = await claim_one(store)
    huge = "Traceback (most recent call last):\n" + "  frame\n" * 50_000 + "E: the end"
    assert await store.bury(job, "E: the end", traceback=huge)
    first, second = await store.runs_for("t1")
    # PostgreSQL text cannot hold NUL: it is kept as U+FFFD there.
    assert first.traceback in ("Traceback: first\x00", "Traceback: first\ufffd")
    assert second.traceback is not None
    assert second.traceback.endswith("  frame\nE: the end")
    assert second.traceback.startswith("[... cut ...]\n")
    assert len(second.traceback) <= MAX_TRACEBACK_CHARS + len("[... cut ...]\n")
    await store.replay("t1")
    job = await claim_one(store)
    await store.complete(job)
    assert (await store.runs_for("t1"))[-1].traceback is None


async def test_dead_jobs_newest_first_with_their_error(store: Store) -> None:
    for task in ("a", "b", "c"):
        await store.record(notice(task, "Error", sample=None), deadline=None, handlers=["h:x"])
    for _ in range(2):
        job = await claim_one(store)
        await store.bury(job, f"died in {job.task_id}")
    dead = await store.dead_jobs()
    assert [j.task_id for j in dead] == ["b", "a"]
    assert [j.last_error for j in dead] == ["died in b", "died in a"]
    assert all(j.state is JobState.DEAD for j in dead)
    assert [j.task_id for j in await store.dead_jobs(limit=1)] == ["b"]
    dead_events = await store.list_events(dead_only=True)
    assert sorted(e.task_id for e in dead_events) == ["a", "b"]
    assert await store.list_events(dead_only=True, limit=1) == dead_events[:1]


async def test_jobs_of_many_tasks_at_once(store: Store) -> None:
    tasks = [f"t{i}" for i in range(1200)]  # more than SQLite's old bound-variable limit
    for task in tasks[:3]:
        await record(store, task, "Error", sample=None)
    jobs = await store.jobs_of(tasks)
    assert [(j.task_id, j.handler) for j in jobs] == [
        (t, h) for t in tasks[:3] for h in ("app.hooks:reply", "app.hooks:save")
    ]
    assert await store.jobs_of([]) == []


async def test_image_hashes_are_those_events_still_have(store: Store) -> None:
    assert await store.image_hashes() == set()
    await record(store, "t1")
    job = await claim_one(store)
    assert await store.complete_download(job, IMAGE, [])
    assert await store.image_hashes() == {IMAGE.sha256}
    assert await store.prune(0) == 1
    assert await store.image_hashes() == set()


async def test_without_create_a_missing_store_is_an_error(store_url: str, tmp_path: Path) -> None:
    if store_url.startswith("sqlite"):
        missing = tmp_path / "elsewhere" / "receiver.db"
        with pytest.raises(StoreMissing) as raised:
            await open_store(f"sqlite:///{missing}", create=False).open()
        assert raised.value.where == str(missing)
        assert not missing.parent.exists()
    else:  # a database nobody migrated
        with pytest.raises(StoreMissing, match="no receiver schema"):
            await open_store(store_url, create=False).open()
    async with opened_store(store_url) as created:  # the receiver creates it...
        await record(created, "t1")
    async with opened_store(store_url, create=False) as existing:  # ...then commands read it
        assert (await event_of(existing, "t1")).via is Via.WEBHOOK


async def test_the_new_columns_come_to_an_existing_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:  # a store made before this change
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        """INSERT INTO events (task_id, status, raw_status, payload, received_at, updated_at)
           VALUES ('old', 'error', 'Error', '{}', 1, 1)"""
    )
    conn.commit()
    conn.close()
    async with opened_store(f"sqlite:///{path}", create=False) as store:
        event = await event_of(store, "old")
        assert (event.via, event.deliveries) == (Via.WEBHOOK, 1)
