"""One contract for every store engine (``receiver/store/base.py``), run on SQLite and on a real
PostgreSQL. Timing-dependent steps use short leases and delays, and poll for the outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

from receiver.events import Status
from receiver.payload import Notice, notice_from_payload, parse_notice
from receiver.store import EventRecord, ImageRecord, Job, JobKind, JobState, open_store
from receiver.store.base import QueueCounts, RecordOutcome, Store
from receiver.store.postgres_schema import MIGRATIONS

pytestmark = pytest.mark.anyio

T = TypeVar("T")

HANDLERS = ("app.hooks:reply", "app.hooks:save")
IMAGE = ImageRecord("s3://bucket/ab/cd/abcd.jpg", "image/jpeg", 1234, "ab" * 32)
SAMPLE = "https://delivery-eu1.bfl.ai/results/x/sample.jpeg?se=2030-01-01T00%3A00%3A00Z"
SHORT_LEASE = 0.2


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


def notice(task_id: str, status: str = "Ready", *, sample: str | None = SAMPLE) -> Notice:
    result = {"sample": sample} if sample else None
    return notice_from_payload({"id": task_id, "status": status, "result": result})


async def record(store: Store, task_id: str, status: str = "Ready", **kw: Any) -> RecordOutcome:
    return await store.record(notice(task_id, status, **kw), deadline=None, handlers=HANDLERS)


async def eventually(fn: Callable[[], Awaitable[T]]) -> T:
    """Call ``fn`` until it returns something truthy, for at most 5 seconds."""
    for _ in range(250):
        if value := await fn():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{fn} returned nothing for 5 seconds")


async def claim_one(store: Store, owner: str = "w1", lease: float = 30.0) -> Job:
    jobs = await store.claim(owner, 1, lease)
    assert len(jobs) == 1
    return jobs[0]


async def claim_eventually(store: Store, owner: str = "w1") -> Job:
    [job] = await eventually(lambda: store.claim(owner, 1, 30.0))
    return job


async def event_of(store: Store, task_id: str) -> EventRecord:
    event = await store.get_event(task_id)
    assert event is not None, f"no event {task_id!r}"
    return event


# Recording ----------------------------------------------------------------------------------


async def test_first_ready_notice_records_event_and_one_download_job(store: Store) -> None:
    before = time.time()
    outcome = await store.record(notice("t1"), deadline=before + 600, handlers=HANDLERS)
    assert outcome is RecordOutcome.NEW
    event = await event_of(store, "t1")
    assert (event.status, event.raw_status, event.sample_url) == (Status.READY, "Ready", SAMPLE)
    assert event.payload == {"id": "t1", "status": "Ready", "result": {"sample": SAMPLE}}
    assert (event.metadata, event.deliveries, event.image, event.error) == ({}, 1, None, None)
    assert event.deadline == pytest.approx(before + 600)
    # Times are epoch seconds on both engines (PostgreSQL's clock is this machine's here).
    assert before - 1 < event.received_at <= event.updated_at < time.time() + 1
    [job] = await store.jobs_for("t1")
    expected = (JobKind.DOWNLOAD, "", JobState.QUEUED, 0, None)
    assert (job.kind, job.handler, job.state, job.attempts, job.lease) == expected


NEW, PROGRESS, DUPLICATE = RecordOutcome.NEW, RecordOutcome.PROGRESS, RecordOutcome.DUPLICATE


@pytest.mark.parametrize(
    ("deliveries", "outcomes", "final", "jobs"),
    [
        (["Pending", "Ready"], [PROGRESS, NEW], "Ready", 1),
        (["Ready", "Pending"], [NEW, DUPLICATE], "Ready", 1),  # a late Pending changes nothing
        (["Ready", "Ready", "Ready"], [NEW, DUPLICATE, DUPLICATE], "Ready", 1),
        (["Error", "Ready"], [NEW, DUPLICATE], "Error", len(HANDLERS)),  # the first final wins
        (["Content Moderated"], [NEW], "Content Moderated", len(HANDLERS)),
        (["Task not found"], [NEW], "Task not found", len(HANDLERS)),
        (["Pending", "Pending"], [PROGRESS, PROGRESS], "Pending", 0),
        (["Sideways"], [PROGRESS], "Sideways", 0),  # unknown: recorded, not dispatched
    ],
)
async def test_record_outcomes_over_a_sequence_of_deliveries(
    store: Store, deliveries: list[str], outcomes: list[RecordOutcome], final: str, jobs: int
) -> None:
    got = [
        await record(store, "t1", status, sample=SAMPLE if status == "Ready" else None)
        for status in deliveries
    ]
    assert got == outcomes
    event = await event_of(store, "t1")
    assert (event.raw_status, event.deliveries) == (final, len(deliveries))
    assert event.sample_url == (SAMPLE if final == "Ready" else None)
    assert len(await store.jobs_for("t1")) == jobs


async def test_terminal_notice_without_sample_creates_handler_jobs_at_once(store: Store) -> None:
    assert await record(store, "t1", "Ready", sample=None) is RecordOutcome.NEW
    jobs = [(j.kind, j.handler, j.state) for j in await store.jobs_for("t1")]
    assert jobs == [(JobKind.HANDLER, name, JobState.QUEUED) for name in HANDLERS]


async def test_nul_characters_do_not_make_a_notice_unrecordable(store: Store) -> None:
    body = b'{"id": "t1", "status": "Error", "error": "bad\\u0000news"}'
    assert await store.record(parse_notice(body), deadline=None, handlers=[]) is NEW
    assert (await event_of(store, "t1")).error in ("bad\x00news", "bad\ufffdnews")


async def test_concurrent_deliveries_on_two_replicas_record_one_new(
    store: Store, other: Store
) -> None:
    for first in ("Ready", "Pending"):  # a new task, and a known one turning final
        task = f"t-{first}"
        if first == "Pending":
            await record(store, task, first, sample=None)
        outcomes = await asyncio.gather(*(record((store, other)[i % 2], task) for i in range(10)))
        assert sorted(outcomes) == sorted([RecordOutcome.NEW] + [RecordOutcome.DUPLICATE] * 9)
        event = await event_of(store, task)
        assert event.deliveries == (10 if first == "Ready" else 11)
        assert len(await store.jobs_for(task)) == 1


# Claiming, leases, finishing ------------------------------------------------------------------


async def test_complete_download_keeps_image_and_creates_handler_jobs(store: Store) -> None:
    await record(store, "t1")
    job = await claim_one(store)
    assert (job.state, job.attempts) == (JobState.RUNNING, 1)
    assert str(job.lease).startswith("w1/")
    assert await store.complete_download(job, IMAGE, HANDLERS)
    assert (await event_of(store, "t1")).image == IMAGE
    download, *handlers = await store.jobs_for("t1")
    assert (download.state, download.lease) == (JobState.DONE, None)
    assert [(j.handler, j.state) for j in handlers] == [(h, JobState.QUEUED) for h in HANDLERS]
    runs = [(r.job_id, r.attempt, r.outcome) for r in await store.runs_for("t1")]
    assert runs == [(job.id, 1, "ok")]
    assert not await store.complete_download(job, IMAGE, HANDLERS)  # done already


async def test_claim_takes_oldest_due_jobs_first_up_to_the_limit(store: Store) -> None:
    for task in ("t1", "t2", "t3"):
        await store.record(notice(task, "Error", sample=None), deadline=None, handlers=["h:a"])
    first = await store.claim("w1", 2, 30)
    assert [j.task_id for j in first] == ["t1", "t2"]
    assert all(j.state is JobState.RUNNING and j.attempts == 1 for j in first)
    assert [j.task_id for j in await store.claim("w2", 5, 30)] == ["t3"]
    assert await store.claim("w3", 5, 30) == []


async def test_claim_by_kind_takes_only_that_kind_longest_due_first(store: Store) -> None:
    await record(store, "r1")  # a download job
    await store.record(notice("e1", "Error", sample=None), deadline=None, handlers=["h:a"])
    await record(store, "r2")
    handlers = await store.claim("w1", 5, 30, kind=JobKind.HANDLER)
    assert [(j.task_id, j.kind) for j in handlers] == [("e1", JobKind.HANDLER)]
    downloads = await store.claim("w1", 5, 30, kind=JobKind.DOWNLOAD)
    assert [j.task_id for j in downloads] == ["r1", "r2"]
    assert {j.kind for j in downloads} == {JobKind.DOWNLOAD}
    assert await store.claim("w1", 5, 30, kind=JobKind.DOWNLOAD) == []


async def test_claim_by_task_takes_only_that_tasks_due_jobs(store: Store, other: Store) -> None:
    await store.record(notice("e1", "Error", sample=None), deadline=None, handlers=HANDLERS)
    await store.record(notice("e2", "Error", sample=None), deadline=None, handlers=HANDLERS)
    await record(store, "r1")  # a download job, older than nothing of e2's
    first = await store.claim("w1", 1, 30, task_id="e2")
    assert [(j.task_id, j.handler) for j in first] == [("e2", HANDLERS[0])]
    # Another replica's claim for the same task skips what is leased: no job runs twice.
    rest = await other.claim("w2", 5, 30, task_id="e2")
    assert [(j.task_id, j.handler) for j in rest] == [("e2", HANDLERS[1])]
    assert await store.claim("w1", 5, 30, task_id="e2") == []
    assert await store.claim("w1", 5, 30, kind=JobKind.HANDLER, task_id="r1") == []
    [download] = await store.claim("w1", 5, 30, kind=JobKind.DOWNLOAD, task_id="r1")
    assert download.task_id == "r1"
    assert await store.claim("w1", 5, 30, task_id="nobody") == []
    # Fenced as any claim: a job of this task retried later is not due now.
    assert await store.retry(first[0], "boom", 60)
    assert await store.claim("w1", 5, 30, task_id="e2") == []
    assert {j.task_id for j in await store.claim("w1", 5, 30)} == {"e1"}


async def test_release_requeues_at_once_without_counting_the_attempt(store: Store) -> None:
    await store.record(notice("t1", "Error", sample=None), deadline=None, handlers=["h:a"])
    job = await claim_one(store)
    assert job.attempts == 1
    assert await store.release(job, "handed back at shutdown")
    [queued] = await store.jobs_for("t1")
    assert (queued.state, queued.attempts, queued.lease) == (JobState.QUEUED, 0, None)
    assert queued.last_error == "handed back at shutdown"
    again = await claim_one(store)  # due now, not after a delay or a lease
    assert (again.id, again.attempts) == (job.id, 1)
    assert not await store.release(job, "stale lease")  # fenced like every transition
    assert [r.outcome for r in await store.runs_for("t1")] == ["released"]


async def test_defer_requeues_later_without_counting_and_adds_up_the_wait(store: Store) -> None:
    await store.record(notice("t1", "Error", sample=None), deadline=None, handlers=["h:a"])
    job = await claim_one(store)
    assert await store.defer(job, "rate limited, waiting 0.3 s", 0.3)
    [queued] = await store.jobs_for("t1")
    assert (queued.state, queued.attempts, queued.waited) == (JobState.QUEUED, 0, 0.3)
    assert queued.run_at > time.time() + 0.1
    assert await store.claim("w1", 5, 30) == []  # not due yet
    again = await claim_eventually(store)
    assert (again.id, again.attempts) == (job.id, 1)
    assert not await store.defer(job, "stale lease", 1.0)  # fenced like every transition
    assert await store.defer(again, "rate limited", 0.5)
    [queued] = await store.jobs_for("t1")
    assert queued.waited == pytest.approx(0.8)
    assert [r.outcome for r in await store.runs_for("t1")] == ["rate limited"] * 2
    # A replay starts the count again, like the attempts.
    job = await claim_eventually(store)
    assert await store.bury(job, "gave up")
    assert await store.replay("t1") == 1
    [replayed] = await store.jobs_for("t1")
    assert (replayed.attempts, replayed.waited) == (0, 0.0)


async def test_complete_skipped_records_the_reason(store: Store) -> None:
    await store.record(notice("t1", "Error", sample=None), deadline=None, handlers=["h:a"])
    job = await claim_one(store)
    assert await store.complete(job, skipped="skipped: no telegram_chat_id")
    [done] = await store.jobs_for("t1")
    assert (done.state, done.last_error) == (JobState.DONE, "skipped: no telegram_chat_id")
    [run] = await store.runs_for("t1")
    assert (run.outcome, run.error) == ("skipped", "skipped: no telegram_chat_id")


async def test_parallel_claimers_never_get_the_same_job(store: Store, other: Store) -> None:
    for i in range(20):
        await record(store, f"t{i}", "Error", sample=None)  # 2 handler jobs each

    async def drain(s: Store, owner: str) -> list[int]:
        got: list[int] = []
        while jobs := await s.claim(owner, 3, 30):
            got += [j.id for j in jobs]
        return got

    claimed = await asyncio.gather(
        *(drain(s, f"w{i}") for i, s in enumerate([store, other, store, other]))
    )
    ids = [job_id for batch in claimed for job_id in batch]
    assert len(ids) == len(set(ids)) == 40
    assert (await store.counts()).running == 40


async def test_renew_extends_only_leases_still_held(store: Store) -> None:
    await record(store, "t1", "Error", sample=None)
    job = await claim_one(store, lease=SHORT_LEASE)
    assert await store.renew([job], 30) == {job.id}
    await asyncio.sleep(SHORT_LEASE * 1.5)
    assert await store.reap() == 0  # renewed past the original lease
    forged = dataclasses.replace(job, lease="w9/forged")
    assert await store.renew([forged], 30) == set()
    assert await store.renew([], 30) == set()


async def test_expired_lease_is_reaped_and_the_stale_holder_is_fenced(store: Store) -> None:
    await record(store, "t1")
    stale = await claim_one(store, "w1", lease=SHORT_LEASE)
    assert await eventually(store.reap) == 1
    [job] = await store.jobs_for("t1")
    assert (job.state, job.lease, job.last_error) == (JobState.QUEUED, None, "lease expired")
    fresh = await claim_one(store, "w2")
    assert (fresh.id, fresh.attempts) == (stale.id, 2)
    assert fresh.lease != stale.lease
    # The first holder wakes up late: nothing it does lands.
    assert not await store.complete(stale)
    assert not await store.retry(stale, "late", 0)
    assert not await store.bury(stale, "late")
    assert not await store.complete_download(stale, IMAGE, HANDLERS)
    assert await store.renew([stale], 30) == set()
    assert (await event_of(store, "t1")).image is None
    assert [j.kind for j in await store.jobs_for("t1")] == [JobKind.DOWNLOAD]
    assert await store.complete(fresh)
    runs = [(r.attempt, r.outcome, r.error) for r in await store.runs_for("t1")]
    assert runs == [(1, "lease expired", "lease expired"), (2, "ok", None)]


async def test_retry_is_not_claimable_before_its_delay(store: Store) -> None:
    await store.record(notice("t1", "Error", sample=None), deadline=None, handlers=["h:a"])
    job = await claim_one(store)
    started = time.monotonic()
    assert await store.retry(job, "boom", 0.4)
    [queued] = await store.jobs_for("t1")
    assert (queued.state, queued.last_error, queued.lease) == (JobState.QUEUED, "boom", None)
    assert await store.claim("w1", 5, 30) == []
    again = await eventually(lambda: store.claim("w1", 5, 30))
    assert [(j.id, j.attempts) for j in again] == [(job.id, 2)]
    assert time.monotonic() - started >= 0.3


async def test_bury_is_final_until_replay(store: Store) -> None:
    await record(store, "t1", "Error", sample=None)
    jobs = await store.claim("w1", 2, 30)
    assert await store.bury(jobs[0], "handler exploded")
    assert await store.complete(jobs[1])
    dead = (await store.jobs_for("t1"))[0]
    assert (dead.state, dead.last_error, dead.lease) == (JobState.DEAD, "handler exploded", None)
    assert await store.claim("w1", 5, 30) == []
    assert not await store.bury(jobs[0], "again")  # no longer running


async def test_replay_requeues_dead_jobs_and_done_handlers_only_when_asked(store: Store) -> None:
    await record(store, "t1")
    download = await claim_one(store)
    await store.complete_download(download, IMAGE, HANDLERS)
    first, second = await store.claim("w1", 2, 30)
    await store.complete(first)
    await store.bury(second, "no")
    await record(store, "t2", "Error", sample=None)
    for job in await store.claim("w1", 2, 30):
        await store.bury(job, "no")

    assert await store.replay("t1") == 1  # the dead one; done jobs stay done
    [replayed] = [j for j in await store.jobs_for("t1") if j.state is JobState.QUEUED]
    assert (replayed.id, replayed.attempts, replayed.lease) == (second.id, 0, None)
    assert await store.replay("t-unknown") == 0
    assert await store.replay() == 2  # every dead job, any task
    assert await store.replay() == 0

    assert await store.replay("t1", include_done=True) == 1  # the done handler, not the download
    states = {j.kind: j.state for j in await store.jobs_for("t1") if j.id != second.id}
    assert states == {JobKind.DOWNLOAD: JobState.DONE, JobKind.HANDLER: JobState.QUEUED}
    again = await store.claim("w1", 10, 30)
    assert {j.id for j in again} >= {first.id, second.id}
    assert all(j.attempts == 1 for j in again)


async def test_counts_every_state(store: Store) -> None:
    for task in ("t1", "t2", "t3"):
        await record(store, task, "Error", sample=None)
    a, b, c = await store.claim("w1", 3, 30)
    await store.complete(a)
    await store.bury(b, "x")
    assert c.state is JobState.RUNNING
    assert await store.counts() == QueueCounts(queued=3, running=1, dead=1, done=1)


async def test_prune_deletes_only_finished_events_older_than_the_cutoff(store: Store) -> None:
    await record(store, "finished", "Error", sample=None)
    await record(store, "waiting", "Error", sample=None)
    await record(store, "pending", "Pending", sample=None)  # no jobs at all
    for job in await store.claim("w1", 2, 30):
        await store.complete(job)
    assert await store.prune(3600) == 0  # all recent
    await asyncio.sleep(0.05)
    assert await store.prune(0) == 2
    assert await store.get_event("finished") is None
    assert await store.get_event("pending") is None
    assert await store.jobs_for("finished") == []
    assert await store.runs_for("finished") == []
    assert await store.get_event("waiting") is not None
    assert len(await store.jobs_for("waiting")) == 2


# Wake-ups -------------------------------------------------------------------------------------


async def quiet(store: Store) -> None:
    """Swallow earlier wake-ups (spurious ones are allowed: jobs "*may* be due")."""
    for _ in range(10):
        started = time.monotonic()
        await store.wait_for_work(0.2)
        if time.monotonic() - started >= 0.15:
            return
    raise AssertionError("wait_for_work never waited")


async def assert_wakes(waiter: Store, trigger: Callable[[], Awaitable[object]]) -> None:
    """``waiter.wait_for_work`` returns soon after ``trigger()``, not before."""
    await quiet(waiter)
    waiting = asyncio.create_task(waiter.wait_for_work(30))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "woke up before anything happened"
    await trigger()
    await asyncio.wait_for(waiting, 5)  # woken, well before its own 30 s timeout


async def test_wait_for_work_wakes_on_new_jobs_replay_and_reap(store: Store) -> None:
    await assert_wakes(store, lambda: record(store, "t1"))
    job = await claim_one(store)
    await assert_wakes(store, lambda: store.complete_download(job, IMAGE, HANDLERS))
    first, _ = await store.claim("w1", 2, 30)
    await store.bury(first, "x")
    await assert_wakes(store, lambda: store.replay("t1"))
    await store.claim("w1", 1, SHORT_LEASE)
    await asyncio.sleep(SHORT_LEASE * 1.5)
    await assert_wakes(store, store.reap)
    await quiet(store)  # and when nothing happens, the timeout ends the wait


async def test_wait_for_work_wakes_on_another_replicas_changes(
    store: Store, other: Store, store_url: str
) -> None:
    if store_url.startswith("sqlite"):
        pytest.skip("SQLite serves one process: its wake-ups stay in-process")
    await assert_wakes(store, lambda: record(other, "t1", "Error", sample=None))
    job = await claim_one(other, lease=SHORT_LEASE)
    await other.bury(job, "x")
    await assert_wakes(store, other.replay)
    await claim_one(other, lease=SHORT_LEASE)
    await asyncio.sleep(SHORT_LEASE * 1.5)
    await assert_wakes(store, other.reap)


# Reading ---------------------------------------------------------------------------------------


async def test_list_events_newest_first_filtered_and_limited(store: Store) -> None:
    await record(store, "a", "Ready")
    await record(store, "b", "Error", sample=None)
    await record(store, "c", "Ready")
    await record(store, "d", "Pending", sample=None)
    assert [e.task_id for e in await store.list_events()] == ["d", "c", "b", "a"]
    assert [e.task_id for e in await store.list_events(status=Status.READY)] == ["c", "a"]
    assert [e.task_id for e in await store.list_events(limit=2)] == ["d", "c"]
    assert await store.list_events(status=Status.CONTENT_MODERATED) == []
    assert await store.get_event("zzz") is None


async def test_runs_for_keeps_every_attempt_in_order(store: Store) -> None:
    await store.record(notice("t1", "Error", sample=None), deadline=None, handlers=["h:a"])
    job = await claim_one(store)
    await store.retry(job, "ConnectionError: down", 0)
    job = await claim_one(store)
    await store.bury(job, "ValueError: bad")
    runs = await store.runs_for("t1")
    assert [(r.job_id, r.attempt, r.outcome, r.error) for r in runs] == [
        (job.id, 1, "retry", "ConnectionError: down"),
        (job.id, 2, "dead", "ValueError: bad"),
    ]
    assert runs[0].finished_at <= runs[1].finished_at
    assert await store.runs_for("zzz") == []


# Schema ----------------------------------------------------------------------------------------


async def test_reopening_keeps_everything_and_replicas_migrate_once(
    store: Store, store_url: str
) -> None:
    await record(store, "t1")
    stores = [open_store(store_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))  # replicas starting together
    try:
        for again in stores:
            await again.ping()
            assert len(await again.jobs_for("t1")) == 1
        if store_url.startswith("postgresql"):
            conn = await asyncpg.connect(store_url)
            try:
                rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
            finally:
                await conn.close()
            assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await asyncio.gather(*(s.close() for s in stores))
