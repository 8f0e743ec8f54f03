"""``receiver.handlers.PermanentError``: a handler that raises it is dead at once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from receiver import Event
from receiver.handlers import PermanentError
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
