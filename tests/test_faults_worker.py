"""Issue 8, items 2, 5 and 12: hung handlers, deploys (SIGTERM) and health that tells the truth.

- Downloads have capacity of their own: with every handler slot hung, a fresh webhook's image
  is still stored within seconds.
- SIGTERM lets running handlers finish within the grace period (nothing re-runs after the
  restart), and hands back at once what outlives it, without spending an attempt.
- ``/readyz`` is 503, with the reason, when the database file was deleted under the receiver;
  webhooks then get 503 too, never a 2xx for an event that would vanish at the next restart.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from receiver import Event
from receiver.store import JobState
from tests import fault_handler
from tests.processes import ReceiverProcess
from tests.support import (
    SECRET,
    delivery_server,
    eventually,
    read_store,
    ready,
    running_receiver,
    settings_for,
)


def test_hung_handlers_never_starve_downloads(tmp_path: Path) -> None:
    hung: list[str] = []
    release = asyncio.Event()  # never set: these handlers hang like a chat API that never answers

    async def hang(event: Event) -> None:
        hung.append(event.task_id)
        await release.wait()

    with delivery_server() as delivery:
        settings = settings_for(
            tmp_path,
            sample_hosts=(delivery.host,),
            handler_workers=4,
            download_workers=2,
            shutdown_grace_seconds=0.2,
        )
        with running_receiver(settings, {"tests:hang": hang}) as receiver:
            for i in range(4):
                resp = receiver.post({"id": f"busy-{i}", "status": "Error", "error": "x"})
                assert resp.status_code == 200
            eventually(lambda: len(hung) == 4)
            started = time.monotonic()
            assert receiver.post(ready("fresh", delivery.add("fresh.jpg"))).status_code == 200

            def stored() -> bool:
                event = read_store(settings, lambda s: s.get_event("fresh"))
                return event is not None and event.image is not None

            eventually(stored, timeout=10)
            took = time.monotonic() - started
            # Stored while every handler slot was still hung; its own handler job waits.
            assert len(hung) == 4
            assert took < 10
            jobs = read_store(settings, lambda s: s.jobs_for("fresh"))
            assert [(j.kind.value, j.state) for j in jobs] == [
                ("download", JobState.DONE),
                ("handler", JobState.QUEUED),
            ]


#: uvicorn shuts down gracefully, then re-raises the SIGTERM it caught, as a server should.
GRACEFUL = (0, -signal.SIGTERM)


def slow_env(tmp: Path, sleep: float, **extra: str) -> dict[str, str]:
    return {
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp}/receiver.db",
        "RECEIVER_STORAGE_URL": f"file://{tmp}/samples",
        "RECEIVER_HANDLERS": "tests.fault_handler:slow",
        "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
        "RECEIVER_LOG_LEVEL": "info",
        "BFL_TEST_EFFECTS": str(tmp / "effects.db"),
        "BFL_TEST_SLEEP": str(sleep),
        **extra,
    }


def post_errors(receiver: ReceiverProcess, count: int) -> None:
    with httpx.Client(base_url=receiver.url, timeout=10) as client:
        for i in range(count):
            resp = client.post(
                "/webhooks/bfl",
                json={"id": f"t{i}", "status": "Error", "error": "x"},
                headers={"x-webhook-secret": SECRET},
            )
            assert resp.status_code == 200


@pytest.mark.slow
def test_sigterm_lets_running_handlers_finish_and_nothing_runs_twice(tmp_path: Path) -> None:
    effects = str(tmp_path / "effects.db")
    receiver = ReceiverProcess(slow_env(tmp_path, 3.0), tmp_path / "receiver.log")
    try:
        receiver.start()
        post_errors(receiver, 8)
        eventually(lambda: len(fault_handler.runs(effects, "start")) == 8, timeout=10)
        stopped_at = time.monotonic()
        receiver.signal(signal.SIGTERM)
        assert receiver.wait(timeout=30) in GRACEFUL
        took = time.monotonic() - stopped_at
        assert len(fault_handler.runs(effects, "end")) == 8  # every in-flight run finished
        assert took < 10
        receiver.start()  # the next version of the deploy
        time.sleep(2.0)
        assert len(fault_handler.runs(effects, "start")) == 8  # and none ran again
        counts = read_store(settings_for(tmp_path), lambda s: s.counts())
        assert (counts.done, counts.queued, counts.running) == (8, 0, 0)
    finally:
        receiver.close()


@pytest.mark.slow
def test_sigterm_hands_back_what_outlives_the_grace_period_at_once(tmp_path: Path) -> None:
    effects = str(tmp_path / "effects.db")
    env = slow_env(tmp_path, 60.0, RECEIVER_SHUTDOWN_GRACE_SECONDS="1")
    receiver = ReceiverProcess(env, tmp_path / "receiver.log")
    try:
        receiver.start()
        post_errors(receiver, 4)
        eventually(lambda: len(fault_handler.runs(effects, "start")) == 4, timeout=10)
        receiver.signal(signal.SIGTERM)
        assert receiver.wait(timeout=15) in GRACEFUL
        assert "handing back 4 unfinished job(s)" in receiver.log()
        jobs = [
            job
            for i in range(4)
            for job in read_store(settings_for(tmp_path), lambda s, i=i: s.jobs_for(f"t{i}"))
        ]
        # Queued again, due now, the interrupted attempt not counted.
        assert [(j.state, j.attempts) for j in jobs] == [(JobState.QUEUED, 0)] * 4
        receiver.env["BFL_TEST_SLEEP"] = "0.05"
        restarted = time.monotonic()
        receiver.start()
        eventually(lambda: len(fault_handler.runs(effects, "end")) == 4, timeout=10)
        # Long before the 30 s lease would have returned them, and as first attempts.
        assert time.monotonic() - restarted < 10
        assert {attempt for _, attempt in fault_handler.runs(effects, "end")} == {1}
    finally:
        receiver.close()


def test_deleted_database_is_noticed_not_recreated(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with running_receiver(settings) as receiver:
        assert receiver.post({"id": "t1", "status": "Error"}).status_code == 200
        assert receiver.client.get("/readyz").status_code == 200
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp_path}/receiver.db{suffix}").unlink(missing_ok=True)
        resp = receiver.post({"id": "t2", "status": "Error"})
        assert resp.status_code == 503
        assert resp.headers["retry-after"]
        ready_now = receiver.client.get("/readyz")
        assert ready_now.status_code == 503
        assert "deleted" in ready_now.text
        assert not Path(f"{tmp_path}/receiver.db").exists()
