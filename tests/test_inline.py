"""Inline processing (``RECEIVER_INLINE_BUDGET_SECONDS``) through a real receiver on loopback.

The webhook's own request runs its task's jobs through the worker's claim/lease/fencing path,
within the budget, and answers 200 whatever happened; what is cut is handed back for a drain.
No worker runs in these receivers (``run_worker=False``), as on a function platform.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import pytest

import receiver
from receiver import Event
from receiver.inline import (
    DEADLINE_MARGIN_SECONDS,
    INLINE_CAP_SECONDS,
    inline_budget,
    invocation_deadline_at,
)
from receiver.store import JobState
from tests.support import (
    Recorder,
    as_handler,
    delivery_server,
    read_store,
    ready,
    running_receiver,
    settings_for,
)


def test_a_webhook_runs_its_download_and_handlers_before_answering(
    tmp_path: Path, store_url: str
) -> None:
    recorder = Recorder()
    with delivery_server() as delivery:
        settings = settings_for(
            tmp_path,
            database_url=store_url,
            sample_hosts=(delivery.host,),
            run_worker=False,
            inline_budget_seconds=10,
        )
        with running_receiver(settings, {"rec": as_handler(recorder)}) as rx:
            resp = rx.post(ready("t1", delivery.add("t1.jpg")))
            assert resp.status_code == 200
            # Already done when the answer came: no worker runs in this receiver.
            assert recorder.task_ids() == ["t1"]
            inline = resp.json()["inline"]
            assert (inline["done"], inline["handed_back"], inline["finished"]) == (2, 0, True)
            again = rx.post(ready("t1", delivery.add("t1.jpg")))  # BFL resending it
            assert again.json()["outcome"] == "duplicate"
            assert again.json()["inline"]["done"] == 0
    assert recorder.task_ids() == ["t1"]  # a duplicate runs nothing again
    assert {j.state for j in read_store(settings, lambda s: s.jobs_for("t1"))} == {JobState.DONE}


def test_only_the_webhooks_own_task_runs_inline(tmp_path: Path, store_url: str) -> None:
    recorder = Recorder()
    base = settings_for(tmp_path, database_url=store_url, run_worker=False)
    with running_receiver(base, {"rec": as_handler(recorder)}) as rx:  # inline off
        assert rx.post({"id": "queued", "status": "Error", "error": "x"}).status_code == 200
    inline = base.model_copy(update={"inline_budget_seconds": 10})
    with running_receiver(inline, {"rec": as_handler(recorder)}) as rx:
        assert rx.post({"id": "mine", "status": "Error", "error": "x"}).status_code == 200
    assert recorder.task_ids() == ["mine"]
    [queued] = read_store(base, lambda s: s.jobs_for("queued"))
    assert queued.state is JobState.QUEUED


def test_a_slow_handler_is_handed_back_at_the_budget_and_the_answer_is_200(
    tmp_path: Path, store_url: str
) -> None:
    runs: list[int] = []

    async def slow_first(event: Event) -> None:
        runs.append(event.attempt)
        if len(runs) == 1:
            await asyncio.sleep(60)

    settings = settings_for(
        tmp_path, database_url=store_url, run_worker=False, inline_budget_seconds=1.5
    )
    with running_receiver(settings, {"slow": slow_first}) as rx:
        started = time.monotonic()
        resp = rx.post({"id": "s1", "status": "Error", "error": "x"})
        took = time.monotonic() - started
    assert resp.status_code == 200
    assert took < 10  # the budget (1.5 s), not the handler's minute
    assert resp.json()["inline"]["handed_back"] == 1
    [job] = read_store(settings, lambda s: s.jobs_for("s1"))
    assert (job.state, job.attempts, job.lease) == (JobState.QUEUED, 0, None)  # at once
    summary = anyio.run(lambda: receiver.drain(settings, budget=20, handlers={"slow": slow_first}))
    assert (summary.done, summary.finished) == (1, True)
    assert runs == [1, 1]  # the handed-back run did not count as an attempt


def test_a_failing_handler_answers_200_and_is_retried_later(tmp_path: Path, store_url: str) -> None:
    recorder = Recorder(fail_times=1)
    settings = settings_for(
        tmp_path, database_url=store_url, run_worker=False, inline_budget_seconds=10
    )
    with running_receiver(settings, {"rec": as_handler(recorder)}) as rx:
        resp = rx.post({"id": "f1", "status": "Error", "error": "x"})
    assert resp.status_code == 200
    assert resp.json()["inline"]["retried"] == 1
    [job] = read_store(settings, lambda s: s.jobs_for("f1"))
    assert (job.state, job.attempts) == (JobState.QUEUED, 1)


@pytest.mark.parametrize(
    ("configured", "deadline_in", "expected"),
    [
        (0.0, None, 0.0),  # off
        (5.0, None, 5.0),
        (300.0, None, INLINE_CAP_SECONDS),  # capped whatever is configured
        (300.0, 8.0, 8.0 - DEADLINE_MARGIN_SECONDS),  # the platform's deadline comes first
        (5.0, 0.5, 0.0),  # no time left: none
    ],
)
def test_the_budget_is_the_setting_capped_and_bounded_by_the_invocations_deadline(
    tmp_path: Path, configured: float, deadline_in: float | None, expected: float
) -> None:
    settings = settings_for(tmp_path, inline_budget_seconds=configured)
    now = time.monotonic()
    if deadline_in is None:
        assert inline_budget(settings, now) == pytest.approx(expected)
        return
    with invocation_deadline_at(now + deadline_in):
        assert inline_budget(settings, now) == pytest.approx(expected)
    assert inline_budget(settings, now) == pytest.approx(min(configured, INLINE_CAP_SECONDS))
