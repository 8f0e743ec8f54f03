"""``receiver.handlers.PermanentError`` (dead at once) and ``RetryLater`` (wait as asked)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from receiver import Event
from receiver.handlers import PermanentError, RetryLater
from receiver.store.base import Job, JobState
from tests.support import eventually, read_store, running_receiver, settings_for


def test_permanent_error_buries_the_job_at_once_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    runs: list[str] = []
    settings = settings_for(tmp_path, handler_max_attempts=5)

    async def refuses(event: Event) -> None:
        runs.append(event.task_id)
        raise PermanentError("chat not found")

    async def flaky(event: Event) -> None:
        raise RuntimeError("try again")

    handlers = {"refuses": refuses, "flaky": flaky}
    with running_receiver(settings, handlers) as r:
        r.post({"id": "t1", "status": "Error", "error": "x"})
        eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 2, timeout=20)
    jobs: list[Job] = read_store(settings, lambda s: s.jobs_for("t1"))
    by_handler = {job.handler: job for job in jobs}
    assert by_handler["refuses"].state is JobState.DEAD
    assert by_handler["refuses"].attempts == 1
    assert runs == ["t1"]
    assert by_handler["refuses"].last_error == "PermanentError: chat not found"
    # Any other exception still uses every attempt.
    assert by_handler["flaky"].attempts == 5
    assert any("handler refuses dead at once" in m for m in caplog.messages)
    assert any("handler flaky dead after 5 attempts" in m for m in caplog.messages)


def test_retry_later_waits_at_least_what_the_handler_was_asked_to(tmp_path: Path) -> None:
    """``RetryLater(retry_after=...)``: the next attempt comes no sooner, whatever the (here
    20 ms) backoff says."""
    started: list[float] = []
    settings = settings_for(tmp_path, handler_max_attempts=3)

    async def rate_limited(event: Event) -> None:
        started.append(time.monotonic())
        if len(started) == 1:
            raise RetryLater("429 Too Many Requests", retry_after=1.5)

    with running_receiver(settings, {"limited": rate_limited}) as r:
        r.post({"id": "t1", "status": "Error", "error": "x"})
        eventually(lambda: len(started) == 2, timeout=20)
    assert started[1] - started[0] >= 1.4
    [job] = read_store(settings, lambda s: s.jobs_for("t1"))
    assert (job.state, job.attempts) == (JobState.DONE, 2)
