"""The submissions half of the store contract, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from receiver.payload import notice_from_payload
from receiver.store import base, postgres_submissions, sqlite
from receiver.store.base import ForeignReference, RecordOutcome, Store

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def finish(
    store: Store, task_id: str, status: str = "Error", ref: str | None = None
) -> RecordOutcome:
    notice = notice_from_payload({"id": task_id, "status": status})
    return await store.record(notice, deadline=None, handlers=["h"], ref=ref)


async def test_prepare_bind_get(store: Store) -> None:
    await store.prepare_submission("r1", "flux-dev", {"chat": 7})
    prepared = await store.get_submission(ref="r1")
    assert prepared is not None
    assert (prepared.task_id, prepared.polling_url, prepared.polls) == (None, None, 0)
    assert prepared.metadata == {"chat": 7}
    await store.bind_submission("r1", "t1", "https://api.bfl.ai/v1/get_result?id=t1")
    bound = await store.get_submission(task_id="t1")
    assert bound is not None
    assert bound.ref == "r1"
    assert bound.polling_url == "https://api.bfl.ai/v1/get_result?id=t1"
    assert await store.get_submission(ref="nope") is None
    assert await store.get_submission(task_id="nope") is None


async def test_duplicate_reference_is_refused(store: Store) -> None:
    await store.prepare_submission("r1", "flux-dev", {})
    with pytest.raises(Exception):  # noqa: PT011 - each engine names its own error
        await store.prepare_submission("r1", "flux-dev", {})


async def test_forget(store: Store) -> None:
    await store.prepare_submission("r1", "flux-dev", {})
    await store.forget_submission("r1")
    assert await store.get_submission(ref="r1") is None


async def test_event_gets_metadata_by_reference_before_bind(store: Store) -> None:
    await store.prepare_submission("r1", "flux-dev", {"chat": 1})
    assert await finish(store, "t1", ref="r1") is RecordOutcome.NEW
    event = await store.get_event("t1")
    assert event is not None
    assert event.metadata == {"chat": 1}


async def test_event_gets_metadata_by_task_after_bind(store: Store) -> None:
    await store.prepare_submission("r1", "flux-dev", {"chat": 2})
    await store.bind_submission("r1", "t1", None)
    await finish(store, "t1")
    event = await store.get_event("t1")
    assert event is not None
    assert event.metadata == {"chat": 2}


async def test_bind_after_webhook_copies_metadata(store: Store) -> None:
    await finish(store, "t1")
    await store.prepare_submission("r1", "flux-dev", {"chat": 3})
    await store.bind_submission("r1", "t1", None)
    event = await store.get_event("t1")
    assert event is not None
    assert event.metadata == {"chat": 3}


async def test_unknown_task_has_empty_metadata(store: Store) -> None:
    await finish(store, "t9")
    event = await store.get_event("t9")
    assert event is not None
    assert event.metadata == {}


async def test_active_counts_unfinished_recent_submissions(store: Store) -> None:
    await store.prepare_submission("a", "flux-kontext-max", {})
    await store.prepare_submission("b", "flux-kontext-max", {})
    await store.prepare_submission("c", "flux-dev", {})
    await store.bind_submission("a", "ta", None)
    await store.bind_submission("b", "tb", None)
    assert await store.active_submissions(within=3600) == 3
    assert await store.active_submissions("flux-kontext-max", within=3600) == 2
    await finish(store, "ta", "Ready")  # terminal (a sample-less Ready still ends the task)
    assert await store.active_submissions("flux-kontext-max", within=3600) == 1
    await finish(store, "tb", "Pending")  # not terminal
    assert await store.active_submissions("flux-kontext-max", within=3600) == 1
    await asyncio.sleep(0.05)
    assert await store.active_submissions(within=0.01) == 0


async def test_due_for_reconcile_and_backoff(store: Store) -> None:
    await store.prepare_submission("a", "flux-dev", {})
    await store.prepare_submission("b", "flux-dev", {})  # never bound: nothing to poll
    await store.prepare_submission("c", "flux-dev", {})
    await store.bind_submission("a", "ta", "u")
    await store.bind_submission("c", "tc", "u")
    await finish(store, "tc")  # already final
    assert await store.due_for_reconcile(3600, 10) == []  # too young
    await asyncio.sleep(0.05)
    due = await store.due_for_reconcile(0.01, 10)
    assert [s.ref for s in due] == ["a"]
    await store.reconciled("a", 0.3)
    assert await store.due_for_reconcile(0.01, 10) == []
    await asyncio.sleep(0.4)
    again = await store.due_for_reconcile(0.01, 10)
    assert [(s.ref, s.polls) for s in again] == [("a", 1)]
    await finish(store, "ta", "Ready")
    assert await store.due_for_reconcile(0.01, 10) == []


async def test_unbound_submissions_stop_counting_sooner(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.prepare_submission("bound", "flux-dev", {})
    await store.bind_submission("bound", "t1", None)
    await store.prepare_submission("unbound", "flux-dev", {})
    assert await store.active_submissions(within=3600) == 2
    await asyncio.sleep(0.05)
    monkeypatch.setattr(base, "UNBOUND_ACTIVE_SECONDS", 0.01)
    monkeypatch.setattr(sqlite, "UNBOUND_ACTIVE_SECONDS", 0.01)
    monkeypatch.setattr(postgres_submissions, "UNBOUND_ACTIVE_SECONDS", 0.01)
    assert await store.active_submissions(within=3600) == 1


async def test_a_reference_bound_to_another_task_records_nothing(store: Store) -> None:
    await store.prepare_submission("r1", "flux-dev", {"chat": 1})
    await store.bind_submission("r1", "t1", None)
    with pytest.raises(ForeignReference):
        await finish(store, "forged", ref="r1")
    assert await store.get_event("forged") is None
    assert await finish(store, "t1", ref="r1") is RecordOutcome.NEW
    await store.prepare_submission("r2", "flux-dev", {})  # not bound yet: any task may use it
    assert await finish(store, "t2", ref="r2") is RecordOutcome.NEW


async def test_prune_forgets_a_finished_tasks_submission_and_claim_so_it_is_never_polled_again(
    store: Store,
) -> None:
    # Without this, a pruned event would leave its submission "unfinished": the reconciler
    # would poll a month-old task again and hand its handlers a spurious "Task not found".
    await store.prepare_submission("r-done", "flux-dev", {})
    await store.bind_submission("r-done", "t-done", "https://api.bfl.ai/v1/get_result?id=t-done")
    await finish(store, "t-done", ref="r-done")
    await finish(store, "t-unbound", ref="r-claimed")  # claimed in webhook_refs, no submission
    await store.prepare_submission("r-running", "flux-dev", {})
    await store.bind_submission("r-running", "t-running", None)
    await store.record(
        notice_from_payload({"id": "t-running", "status": "Pending"}),
        deadline=None,
        handlers=["h"],
        ref="r-running",
    )
    await store.prepare_submission("r-never-bound", "flux-dev", {})  # its POST never answered
    for job in await store.claim("w", 10, 30):
        await store.complete(job)
    assert await store.prune(3600) == 0
    await asyncio.sleep(0.05)
    assert await store.prune(0) == 3
    assert await store.get_submission(ref="r-done") is None
    assert await store.get_submission(ref="r-never-bound") is None
    # A still-running task keeps its submission: the reconciler must go on polling it.
    running = await store.get_submission(ref="r-running")
    assert running is not None
    assert running.task_id == "t-running"
    assert [s.ref for s in await store.due_for_reconcile(0, 10)] == ["r-running"]
    # The pruned claim is gone, so the reference is free again rather than kept forever.
    assert await finish(store, "t-other", ref="r-claimed") is RecordOutcome.NEW
