"""Issue 8, item 1: a store that is briefly locked, full or restarting stops nothing for good.

Each test runs the receiver as a process of its own and breaks its store for real, while
retries are coming due: another process holds SQLite's write lock, the disk under the database
fills up, PostgreSQL restarts (``pg_ctl restart -m fast``) or hangs (SIGSTOP). Meanwhile
``/readyz`` must say the receiver is not ready, and afterwards every acknowledged webhook is
processed, with no restart of the receiver.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from receiver.app import RECORD_TIMEOUT
from tests import fault_handler
from tests.disk import fill, small_tmpfs
from tests.pg import PostgresCluster, find_bindir
from tests.processes import ReceiverProcess, hold_sqlite_write_lock
from tests.support import SECRET, eventually

HANDLER = "tests.fault_handler:flaky"
TASKS = 10


def receiver_env(database_url: str, tmp: Path) -> dict[str, str]:
    return {
        "RECEIVER_DATABASE_URL": database_url,
        "RECEIVER_STORAGE_URL": f"file://{tmp}/samples",
        "RECEIVER_HANDLERS": HANDLER,
        # The first attempt of every task fails; its retry comes due ~2-3 s later, inside the
        # fault window.
        "RECEIVER_HANDLER_BACKOFF_SECONDS": "3",
        "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
        "RECEIVER_JOB_LEASE_SECONDS": "3",
        "RECEIVER_LOG_LEVEL": "info",
        "BFL_TEST_EFFECTS": str(tmp / "effects.db"),
    }


def post_errors(url: str, ids: list[str], timeout: float = 30) -> set[str]:
    """Post an Error webhook per id; returns the ids acknowledged with a 2xx."""
    acked = set()
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for task_id in ids:
            resp = client.post(
                "/webhooks/bfl",
                json={"id": task_id, "status": "Error", "error": "failed upstream"},
                headers={"x-webhook-secret": SECRET},
            )
            if resp.is_success:
                acked.add(task_id)
            else:
                assert resp.status_code == 503, resp.text  # never a 500
    return acked


def handled(tmp: Path, phase: str = "end") -> set[str]:
    return {key.split(":")[0] for key, _ in fault_handler.runs(str(tmp / "effects.db"), phase)}


def acknowledge_and_fail_once(receiver: ReceiverProcess, tmp: Path) -> set[str]:
    """TASKS webhooks, acknowledged, each with its first attempt failed and a retry due in
    a few seconds: when the fault starts, only the loops themselves are calling the store."""
    acked = post_errors(receiver.url, [f"before-{i}" for i in range(TASKS)])
    assert len(acked) == TASKS
    eventually(lambda: handled(tmp, "fail") == acked, timeout=30)
    time.sleep(0.3)  # the failed attempts' retries are recorded
    return acked


def wait_not_ready(receiver: ReceiverProcess, until: float) -> str:
    """Poll /readyz until it answers 503 (returns its body) or ``until`` passes."""
    while time.monotonic() < until:
        resp = receiver.ready()
        if resp.status_code == 503:
            return resp.text
        time.sleep(0.2)
    raise AssertionError("/readyz never reported the fault")


def assert_recovers(receiver: ReceiverProcess, tmp: Path, acked: set[str]) -> None:
    """Every acknowledged webhook is handled, and the receiver is ready again."""
    more = post_errors(receiver.url, [f"after-{i}" for i in range(TASKS)])
    assert len(more) == TASKS
    eventually(lambda: handled(tmp) >= acked | more, timeout=60)
    eventually(lambda: receiver.ready().status_code == 200, timeout=30)
    # The loops said what happened, instead of dying silently.
    assert "failed" in receiver.log()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.slow
def test_another_process_holding_the_sqlite_write_lock(tmp: Path) -> None:
    db = tmp / "receiver.db"
    receiver = ReceiverProcess(receiver_env(f"sqlite:///{db}", tmp), tmp / "receiver.log")
    try:
        receiver.start()
        acked = acknowledge_and_fail_once(receiver, tmp)
        # Longer than the store's 10 s busy timeout, twice over: its calls fail, not wait.
        hold = 25.0
        holder = hold_sqlite_write_lock(db, hold)
        locked_at = time.monotonic()
        body = wait_not_ready(receiver, until=locked_at + hold)
        assert "locked" in body or "unreachable" in body
        assert holder.wait(timeout=hold + 10) == 0
        assert_recovers(receiver, tmp, acked)
    finally:
        receiver.close()


@pytest.mark.slow
def test_disk_full_while_retries_come_due(tmp: Path) -> None:
    with small_tmpfs(tmp / "disk", "8m") as disk:
        receiver = ReceiverProcess(
            receiver_env(f"sqlite:///{disk}/receiver.db", tmp), tmp / "receiver.log"
        )
        try:
            receiver.start()
            acked = acknowledge_and_fail_once(receiver, tmp)
            filler = fill(disk)
            full_at = time.monotonic()
            # Webhooks that arrive now cannot be recorded: 503, never a 2xx without a record.
            assert post_errors(receiver.url, ["while-full"]) == set()
            body = wait_not_ready(receiver, until=full_at + 20)
            assert "full" in body
            time.sleep(max(0.0, full_at + 12 - time.monotonic()))  # full for 12 s in all
            os.unlink(filler)
            assert_recovers(receiver, tmp, acked)
        finally:
            receiver.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restart_under_the_worker(tmp: Path) -> None:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found: run scripts/pg.sh (make test does)")
    cluster = PostgresCluster(bindir)  # a cluster of its own: the others' stays up
    cluster.start()
    receiver = ReceiverProcess(
        receiver_env(cluster.create_database("faults"), tmp), tmp / "receiver.log"
    )
    try:
        receiver.start()
        acked = acknowledge_and_fail_once(receiver, tmp)
        cluster.restart()
        # Every pooled connection and the LISTEN connection were cut: the next store call of
        # every loop fails at least once.
        assert_recovers(receiver, tmp, acked)
        assert receiver.proc is not None
        assert receiver.proc.poll() is None
    finally:
        receiver.close()
        cluster.stop()


@pytest.mark.slow
def test_a_hung_postgres_gets_webhooks_a_503_in_time_and_loses_nothing(tmp: Path) -> None:
    """A server that accepts connections but never answers: each webhook must still be
    answered well inside BFL's 30 s (503, so it is delivered again), never left to time out."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found: run scripts/pg.sh (make test does)")
    cluster = PostgresCluster(bindir)
    cluster.start()
    receiver = ReceiverProcess(
        receiver_env(cluster.create_database("hung"), tmp), tmp / "receiver.log"
    )
    try:
        receiver.start()
        acked = acknowledge_and_fail_once(receiver, tmp)
        with cluster.frozen():
            started = time.monotonic()
            assert post_errors(receiver.url, ["during"], timeout=60) == set()
            answered_in = time.monotonic() - started
            assert answered_in < RECORD_TIMEOUT + 5  # BFL gives up on an answer after 30 s
            ready = wait_not_ready(receiver, time.monotonic() + 15)
            assert "did not answer" in ready or "unreachable" in ready
        # BFL delivers the refused one again; everything acknowledged is handled.
        assert post_errors(receiver.url, ["during"]) == {"during"}
        assert_recovers(receiver, tmp, acked | {"during"})
        assert "did not answer within" in receiver.log()
    finally:
        receiver.close()
        cluster.stop()
