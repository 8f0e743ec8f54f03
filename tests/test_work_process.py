"""``bfl-receiver work`` in a process of its own, beside a ``serve --no-worker`` process.

The two share one SQLite file, as a worker deployment beside ingest-only replicas shares a
store: what the receiver records, the worker downloads and hands to the handlers; SIGTERM stops
the worker as it stops ``serve`` (running jobs finish within the grace period).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from receiver.cli_runmodes import WORK_LEFT
from receiver.store import JobState
from tests import fault_handler
from tests.processes import ReceiverProcess
from tests.support import (
    SECRET,
    Recorder,
    as_handler,
    delivery_server,
    eventually,
    read_store,
    ready,
    running_receiver,
    settings_for,
)


def _worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "work", *args],
            env={**os.environ, "RECEIVER_WEBHOOK_SECRET": SECRET, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_work_process_runs_what_serve_no_worker_recorded_and_stops_gracefully(
    tmp_path: Path,
) -> None:
    effects = str(tmp_path / "effects.db")
    with delivery_server() as delivery:
        env = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
            "RECEIVER_STORAGE_URL": f"file://{tmp_path}/samples",
            "RECEIVER_SAMPLE_HOSTS": delivery.host,
            "RECEIVER_HANDLERS": "tests.fault_handler:slow",
            "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
            "RECEIVER_LOG_LEVEL": "info",
            "BFL_TEST_EFFECTS": effects,
            "BFL_TEST_SLEEP": "3",
        }
        receiver = ReceiverProcess({**env, "RECEIVER_RUN_WORKER": "false"}, tmp_path / "serve.log")
        worker: subprocess.Popen[bytes] | None = None
        try:
            receiver.start()
            with httpx.Client(base_url=receiver.url, timeout=10) as client:
                sent = [ready(f"r{i}", delivery.add(f"{i}.jpg")) for i in range(3)]
                sent += [{"id": f"e{i}", "status": "Error", "error": "x"} for i in range(3)]
                for payload in sent:
                    resp = client.post(
                        "/webhooks/bfl", json=payload, headers={"x-webhook-secret": SECRET}
                    )
                    assert resp.status_code == 200
            time.sleep(1.0)
            assert fault_handler.runs(effects, "start") == []  # serve --no-worker runs nothing
            assert delivery.hits == []

            worker = _worker(env, tmp_path / "work.log")
            eventually(lambda: len(fault_handler.runs(effects, "start")) == 6, timeout=30)
            assert sorted(delivery.hits) == ["0.jpg", "1.jpg", "2.jpg"]
            stopped_at = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
            assert time.monotonic() - stopped_at < 15
            # Every run in flight at SIGTERM finished (3 s < the 25 s grace), none handed back.
            assert len(fault_handler.runs(effects, "end")) == 6
            counts = read_store(settings_for(tmp_path), lambda s: s.counts())
            assert (counts.done, counts.queued, counts.running) == (9, 0, 0)
            log = (tmp_path / "work.log").read_text()
            assert "stopped" in log
            assert "handing back" not in log
            assert "Traceback" not in log
            assert receiver.proc is not None
            assert receiver.proc.poll() is None
        finally:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait()
            receiver.close()


@pytest.mark.slow
def test_work_hands_back_what_outlives_the_grace_period_at_once(tmp_path: Path) -> None:
    effects = str(tmp_path / "effects.db")
    env = {
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
        "RECEIVER_STORAGE_URL": f"file://{tmp_path}/samples",
        "RECEIVER_HANDLERS": "tests.fault_handler:slow",
        "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
        "RECEIVER_SHUTDOWN_GRACE_SECONDS": "1",
        "BFL_TEST_EFFECTS": effects,
        "BFL_TEST_SLEEP": "60",
    }
    receiver = ReceiverProcess({**env, "RECEIVER_RUN_WORKER": "false"}, tmp_path / "serve.log")
    worker: subprocess.Popen[bytes] | None = None
    try:
        receiver.start()
        with httpx.Client(base_url=receiver.url, timeout=10) as client:
            for i in range(2):
                resp = client.post(
                    "/webhooks/bfl",
                    json={"id": f"t{i}", "status": "Error"},
                    headers={"x-webhook-secret": SECRET},
                )
                assert resp.status_code == 200
        worker = _worker(env, tmp_path / "work.log")
        eventually(lambda: len(fault_handler.runs(effects, "start")) == 2, timeout=30)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        assert "handing back 2 unfinished job(s)" in (tmp_path / "work.log").read_text()
        settings = settings_for(tmp_path)
        jobs = [
            j for i in range(2) for j in read_store(settings, lambda s, i=i: s.jobs_for(f"t{i}"))
        ]
        assert [(j.state, j.attempts) for j in jobs] == [(JobState.QUEUED, 0)] * 2
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        receiver.close()


def test_work_with_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    env = {"RECEIVER_DATABASE_URL": "postgresql://bob:hunter2secret@127.0.0.1:1/receiver"}
    out = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "work"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("Error: cannot reach PostgreSQL at database 'receiver'")
    assert "hunter2secret" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_drain_stopped_by_sigterm_hands_back_at_once(tmp_path: Path) -> None:
    effects = str(tmp_path / "effects.db")
    settings = settings_for(tmp_path, run_worker=False)
    with running_receiver(settings, {"tests.fault_handler:slow": as_handler(Recorder())}) as r:
        for i in range(2):
            assert r.post({"id": f"t{i}", "status": "Error"}).status_code == 200
    env = {
        **os.environ,
        "RECEIVER_DATABASE_URL": settings.database_url,
        "RECEIVER_STORAGE_URL": settings.storage_url,
        "RECEIVER_HANDLERS": "tests.fault_handler:slow",
        "BFL_TEST_EFFECTS": effects,
        "BFL_TEST_SLEEP": "60",
    }
    with (tmp_path / "drain.log").open("wb") as log:
        drain = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "drain", "--budget", "300"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: len(fault_handler.runs(effects, "start")) == 2, timeout=30)
        drain.send_signal(signal.SIGTERM)
        assert drain.wait(timeout=20) == WORK_LEFT
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.wait()
    assert "stopped by a signal" in (tmp_path / "drain.log").read_text()
    jobs = [j for i in range(2) for j in read_store(settings, lambda s, i=i: s.jobs_for(f"t{i}"))]
    assert [(j.state, j.attempts) for j in jobs] == [(JobState.QUEUED, 0)] * 2


def _status_url(log_path: Path) -> str | None:
    found = re.search(r"status on (http://\S+) \(", log_path.read_text())
    return found.group(1) if found else None


@pytest.mark.slow
def test_work_port_serves_probes_and_the_workers_own_metrics(tmp_path: Path) -> None:
    """``work --port``: the worker's downloads and handler runs are scraped from the worker (a
    ``serve --no-worker`` replica never sees them), behind RECEIVER_METRICS_TOKEN; no webhooks."""
    with delivery_server() as delivery:
        env = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
            "RECEIVER_STORAGE_URL": f"file://{tmp_path}/samples",
            "RECEIVER_SAMPLE_HOSTS": delivery.host,
            "RECEIVER_HANDLERS": "",
            "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
            "RECEIVER_METRICS_TOKEN": "scrape-token",
        }
        log_path = tmp_path / "work.log"
        with running_receiver(settings_for(tmp_path, run_worker=False), {}) as r:
            r.post(ready("w1", delivery.add("w1.jpg")))
            worker = _worker(env, log_path, "--port", "0")
            try:
                eventually(lambda: _status_url(log_path), timeout=30)
                url = _status_url(log_path)
                assert url is not None
                with httpx.Client(base_url=url, timeout=10) as client:
                    assert client.get("/healthz").json() == {"ok": True}
                    assert client.get("/readyz").status_code == 200
                    assert client.get("/metrics").status_code == 401
                    auth = {"authorization": "Bearer scrape-token"}

                    def downloads() -> bool:
                        text = client.get("/metrics", headers=auth).text
                        return 'bfl_hooks_downloads_total{outcome="ok"} 1.0' in text

                    eventually(downloads, timeout=30)
                    webhook = client.post("/webhooks/bfl", json={}, headers={"x": "y"})
                    assert webhook.status_code in (404, 405)
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(timeout=30) == 0
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
    assert "Traceback" not in log_path.read_text()


def test_work_port_taken_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
            "RECEIVER_STORAGE_URL": f"file://{tmp_path}/samples",
            "RECEIVER_HANDLERS": "",
        }
        worker = _worker(env, tmp_path / "work.log", "--port", str(port))
        assert worker.wait(timeout=30) == 1
    log = (tmp_path / "work.log").read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in log
    assert "Traceback" not in log
