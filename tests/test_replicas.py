"""Two receivers on one PostgreSQL: duplicates across replicas, one killed -9, nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from receiver.store import JobState
from tests.servers import base_url, loopback_socket
from tests.support import (
    Sample,
    delivery_server,
    eventually,
    jpeg_bytes,
    read_store,
    ready,
    settings_for,
)
from tests.test_crash import HANDLER, _healthy, send_all, start_receiver

TASKS = 500


@pytest.mark.slow
@pytest.mark.postgres
def test_two_replicas_one_killed_every_task_handled_once(tmp_path: Path, postgres_url: str) -> None:
    effects = tmp_path / "effects.db"
    with delivery_server() as delivery:
        settings = settings_for(tmp_path, database_url=postgres_url, sample_hosts=(delivery.host,))
        env = {
            **os.environ,
            "RECEIVER_WEBHOOK_SECRET": "test-secret-0123456789",
            "RECEIVER_DATABASE_URL": postgres_url,
            "RECEIVER_STORAGE_URL": settings.storage_url,
            "RECEIVER_SAMPLE_HOSTS": delivery.host,
            "RECEIVER_HANDLERS": HANDLER,
            "RECEIVER_JOB_LEASE_SECONDS": "2",
            "RECEIVER_POLL_INTERVAL_SECONDS": "0.2",
            "RECEIVER_LOG_LEVEL": "warning",
            "BFL_TEST_EFFECTS": str(effects),
        }
        image = jpeg_bytes()
        payloads = [
            ready(f"r{i:03}", delivery.add(f"{i}.jpg", Sample(body=image + str(i).encode())))
            for i in range(TASKS)
        ]
        socks = [loopback_socket(), loopback_socket()]
        urls = [base_url(s) for s in socks]
        procs = [start_receiver(s.fileno(), env) for s in socks]
        try:
            for url in urls:
                eventually(lambda url=url: _healthy(url), timeout=30)

            # Every task goes to both replicas (BFL retrying through a load balancer), and
            # replica 0 is killed after 150 of its acknowledgements.
            async def both() -> tuple[set[str], set[str]]:
                doomed, survivor = await asyncio.gather(
                    send_all(urls[0], payloads, 150, procs[0]),
                    send_all(urls[1], payloads[::-1], None, procs[1]),
                )
                return doomed, survivor

            doomed_acks, survivor_acks = asyncio.run(both())
            procs[0].wait(timeout=10)
            assert procs[0].returncode == -signal.SIGKILL
            assert len(survivor_acks) == TASKS

            def all_done() -> bool:
                counts = read_store(settings, lambda s: s.counts())
                return bool(counts.done == 2 * TASKS and counts.queued + counts.running == 0)

            eventually(all_done, timeout=90)
            assert procs[1].poll() is None
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            for sock in socks:
                sock.close()

    events = read_store(settings, lambda s: s.list_events(limit=10_000))
    assert len(events) == TASKS
    assert all(e.deliveries >= 2 for e in events if e.task_id in doomed_acks)
    assert all(e.image is not None for e in events)
    jobs = [j for e in events for j in read_store(settings, lambda s, e=e: s.jobs_for(e.task_id))]
    assert len(jobs) == 2 * TASKS
    assert all(j.state is JobState.DONE for j in jobs)
    with sqlite3.connect(effects) as db:
        effect_keys = {k for (k,) in db.execute("SELECT key FROM effects")}
        reruns = db.execute(
            "SELECT count(*) FROM (SELECT key FROM runs GROUP BY key HAVING count(*) > 1)"
        ).fetchone()[0]
    assert effect_keys == {f"r{i:03}:{HANDLER}" for i in range(TASKS)}
    assert reruns <= 32  # only runs the kill interrupted may run again
    stored = list((tmp_path / "samples").rglob("*.jpg"))
    assert len(stored) == TASKS  # each image once, however often it was downloaded
    assert len({e.image.sha256 for e in events if e.image}) == TASKS
