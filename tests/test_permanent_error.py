"""What a handler can tell the worker: ``PermanentError`` (dead at once), ``RetryLater`` (wait as
asked), ``RateLimited`` (wait as asked without using an attempt) and ``Skipped`` (not for me)."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import pytest

from receiver import Event
from receiver.handlers import PermanentError, RateLimited, RetryLater, Skipped
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


def test_rate_limited_waits_without_using_an_attempt(tmp_path: Path) -> None:
    """Four 429s in a row with only two attempts allowed: the job still succeeds, since a rate
    limit is not a failure, and each wait is at least what was asked."""
    started: list[float] = []
    settings = settings_for(tmp_path, handler_max_attempts=2)

    async def limited(event: Event) -> None:
        started.append(time.monotonic())
        if len(started) <= 4:
            raise RateLimited("429: retry after 0.3", retry_after=0.3)

    with running_receiver(settings, {"limited": limited}) as r:
        r.post({"id": "t1", "status": "Error", "error": "x"})
        eventually(lambda: len(started) == 5, timeout=20)
        eventually(
            lambda: r.metric("bfl_hooks_handler_runs_total", handler="limited", outcome="ok") == 1
        )
        assert (
            r.metric("bfl_hooks_handler_runs_total", handler="limited", outcome="rate_limited") == 4
        )
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert min(gaps) >= 0.25
    [job] = read_store(settings, lambda s: s.jobs_for("t1"))
    assert (job.state, job.attempts) == (JobState.DONE, 1)
    assert job.waited == pytest.approx(1.2)
    runs = read_store(settings, lambda s: s.runs_for("t1"))
    assert [run.outcome for run in runs] == ["rate limited"] * 4 + ["ok"]


def test_rate_limits_past_the_total_wait_use_attempts_and_end_dead(tmp_path: Path) -> None:
    """A limit that never lifts: once the waits pass RECEIVER_RATE_LIMIT_MAX_WAIT_SECONDS, each
    one is an ordinary retry, so the job ends dead instead of waiting for ever."""
    settings = settings_for(tmp_path, handler_max_attempts=2, rate_limit_max_wait_seconds=0.5)

    async def always_limited(event: Event) -> None:
        raise RateLimited("429: retry after 0.2", retry_after=0.2)

    with running_receiver(settings, {"limited": always_limited}) as r:
        r.post({"id": "t1", "status": "Error", "error": "x"})
        eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 1, timeout=20)
    [job] = read_store(settings, lambda s: s.jobs_for("t1"))
    assert (job.state, job.attempts) == (JobState.DEAD, 2)
    assert job.waited == pytest.approx(0.4)  # two deferrals fit in 0.5 s, the third did not
    runs = read_store(settings, lambda s: s.runs_for("t1"))
    assert [run.outcome for run in runs] == ["rate limited"] * 2 + ["retry", "dead"]


def test_skipped_ends_the_job_done_and_counts_it(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    async def not_mine(event: Event) -> None:
        raise Skipped("no telegram_chat_id in the metadata")

    with running_receiver(settings, {"telegram": not_mine}) as r:
        r.post({"id": "t1", "status": "Error", "error": "x"})
        eventually(
            lambda: (
                r.metric("bfl_hooks_handler_runs_total", handler="telegram", outcome="skipped") == 1
            )
        )
    [job] = read_store(settings, lambda s: s.jobs_for("t1"))
    assert (job.state, job.attempts) == (JobState.DONE, 1)
    assert job.last_error == "skipped: no telegram_chat_id in the metadata"
