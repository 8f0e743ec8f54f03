"""kill -9 of the receiver mid-burst: nothing acknowledged is lost, every handler runs once."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from receiver.store import JobState
from tests.servers import base_url, loopback_socket
from tests.support import SECRET, delivery_server, eventually, read_store, ready, settings_for

TASKS = 200
HANDLER = "tests.crash_handler:record"


def start_receiver(fd: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        # serve --fd, with only RECEIVER_HANDLERS: no handler a user installed in the venv.
        [sys.executable, "-m", "tests.receiver_process", str(fd)],
        env=env,
        pass_fds=(fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def send_all(
    url: str,
    payloads: list[dict[str, object]],
    kill_after: int | None,
    proc: subprocess.Popen[bytes],
) -> set[str]:
    """Post every payload, 32 at a time; kill -9 the receiver after ``kill_after`` acks.
    Returns the task ids that were acknowledged."""
    acked: set[str] = set()
    limit = asyncio.Semaphore(32)
    killed = False

    async def one(client: httpx.AsyncClient, payload: dict[str, object]) -> None:
        nonlocal killed
        async with limit:
            if killed:
                return  # nobody answers any more: BFL would try again later
            try:
                resp = await client.post(
                    "/webhooks/bfl", json=payload, headers={"x-webhook-secret": SECRET}
                )
            except httpx.HTTPError:
                return  # the receiver died under us: BFL would deliver again
            if resp.status_code == 200:
                acked.add(str(payload["id"]))
                if kill_after is not None and len(acked) == kill_after:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True

    # Requests in flight at the kill wait for this timeout (the listening socket lives on).
    async with httpx.AsyncClient(base_url=url, timeout=3) as client:
        await asyncio.gather(*(one(client, p) for p in payloads))
    return acked


@pytest.mark.slow
def test_kill_9_mid_burst_loses_nothing_and_handlers_run_once(tmp_path: Path) -> None:
    effects = tmp_path / "effects.db"
    with delivery_server() as delivery:
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,), job_lease_seconds=2.0)
        env = {
            **os.environ,
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DATABASE_URL": settings.database_url,
            "RECEIVER_STORAGE_URL": settings.storage_url,
            "RECEIVER_SAMPLE_HOSTS": delivery.host,
            "RECEIVER_HANDLERS": HANDLER,
            "RECEIVER_JOB_LEASE_SECONDS": "2",
            "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
            "RECEIVER_LOG_LEVEL": "warning",
            "BFL_TEST_EFFECTS": str(effects),
        }
        payloads = [ready(f"t{i:03}", delivery.add(f"{i}.jpg")) for i in range(TASKS)]
        sock = loopback_socket()
        url = base_url(sock)
        proc = start_receiver(sock.fileno(), env)
        try:
            eventually(lambda: _healthy(url), timeout=20)
            acked = asyncio.run(send_all(url, payloads, TASKS // 2, proc))
            proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL
            assert len(acked) >= TASKS // 2

            # Every acknowledged webhook survived the kill.
            recorded = read_store(settings, lambda s: s.list_events(limit=1000))
            assert acked <= {e.task_id for e in recorded}

            # Restart on the same socket; BFL delivers what was not acknowledged (and, being
            # at-least-once, some that were).
            proc = start_receiver(sock.fileno(), env)
            eventually(lambda: _healthy(url), timeout=20)
            redeliver = [p for p in payloads if p["id"] not in acked] + payloads[:20]
            assert len(asyncio.run(send_all(url, redeliver, None, proc))) == len(redeliver)

            def all_done() -> bool:
                counts = read_store(settings, lambda s: s.counts())
                return bool(counts.done == 2 * TASKS and counts.queued + counts.running == 0)

            eventually(all_done, timeout=60)
        finally:
            proc.kill()
            proc.wait()
            sock.close()

    jobs = [j for e in recorded for j in read_store(settings, lambda s, e=e: s.jobs_for(e.task_id))]
    assert all(j.state is JobState.DONE for j in jobs)
    with sqlite3.connect(effects) as db:
        effect_keys = {k for (k,) in db.execute("SELECT key FROM effects")}
        runs = db.execute("SELECT key, count(*), min(image) FROM runs GROUP BY key").fetchall()
    assert effect_keys == {f"t{i:03}:{HANDLER}" for i in range(TASKS)}
    assert all(image == 1 for _, _, image in runs)
    # A handler runs again only if the kill caught it mid-run (at most the worker pool's size).
    reruns = [key for key, count, _ in runs if count > 1]
    assert len(reruns) <= 32
    events = read_store(settings, lambda s: s.list_events(limit=1000))
    assert len(events) == TASKS
    assert all(e.image is not None for e in events)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
