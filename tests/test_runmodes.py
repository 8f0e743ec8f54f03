"""``bfl-receiver migrate`` and ``drain``, and ``receiver.drain``: against real servers.

Webhooks are recorded by a real receiver that runs no worker (``RECEIVER_RUN_WORKER=false``, as
a serverless receiver would); samples come from a loopback delivery server; the drain then runs
the jobs through the worker's own claim/lease/fencing path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

import receiver
from receiver.cli import main
from receiver.cli_runmodes import WORK_LEFT
from receiver.store import JobState, opened_store
from tests import fault_handler
from tests.support import (
    Delivery,
    Recorder,
    Sample,
    as_handler,
    delivery_server,
    read_store,
    ready,
    running_receiver,
    settings_for,
)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, list(args))


def _schema_exists(url: str) -> bool:
    async def check() -> bool:
        async with opened_store(url, create=False) as store:  # StoreMissing if never migrated
            await store.ping()
            return True

    return anyio.run(check)


# -- migrate ----------------------------------------------------------------------------------


def test_migrate_creates_a_fresh_sqlite_store_and_twice_is_harmless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "new" / "folder" / "receiver.db"
    env = {"RECEIVER_DATABASE_URL": f"sqlite:///{db}"}
    assert not db.exists()
    for _ in range(2):
        out = run("migrate", env=env)
        assert out.exit_code == 0, out.output
        assert f"store {db} is up to date" in out.output
    assert db.is_file()
    assert _schema_exists(f"sqlite:///{db}")


@pytest.mark.postgres
def test_migrate_creates_the_schema_in_a_fresh_postgres_database(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"RECEIVER_DATABASE_URL": postgres_url}
    with pytest.raises(receiver.store.StoreMissing):  # an empty database has no schema yet
        _schema_exists(postgres_url)
    for _ in range(2):
        out = run("migrate", env=env)
        assert out.exit_code == 0, out.output
        assert "is up to date" in out.output
    assert _schema_exists(postgres_url)


def test_migrate_of_an_unreachable_store_is_one_line_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    env = {"RECEIVER_DATABASE_URL": "postgresql://bob:hunter2secret@127.0.0.1:1/receiver"}
    out = run("migrate", env=env)
    assert out.exit_code == 1
    assert out.output.startswith(
        "Error: cannot reach PostgreSQL at database 'receiver' on 127.0.0.1:1"
    )
    assert len(out.output.strip().splitlines()) == 1
    assert "hunter2secret" not in out.output
    assert "Traceback" not in out.output


# -- drain ------------------------------------------------------------------------------------


def _env(tmp_path: Path, delivery: Delivery, **extra: str) -> dict[str, str]:
    return {
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
        "RECEIVER_STORAGE_URL": f"file://{tmp_path}/samples",
        "RECEIVER_SAMPLE_HOSTS": delivery.host,
        "RECEIVER_HANDLERS": "tests.fault_handler:slow",
        "RECEIVER_JOB_LEASE_SECONDS": "3",
        "RECEIVER_LOG_LEVEL": "warning",
        "BFL_TEST_EFFECTS": str(tmp_path / "effects.db"),
        "BFL_TEST_SLEEP": "0.05",
        **extra,
    }


def _record(tmp_path: Path, payloads: Sequence[Mapping[str, object]], handlers: list[str]) -> None:
    """Record webhooks with a real receiver that runs no jobs, so they wait for a drain."""
    settings = settings_for(tmp_path, run_worker=False)
    # The names are what the jobs are created with; the drain resolves them itself.
    fakes = {name: as_handler(Recorder()) for name in handlers}
    with running_receiver(settings, fakes) as r:
        for payload in payloads:
            assert r.post(payload).status_code == 200


def test_drain_runs_the_whole_queue_and_counts_what_it_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    handlers = ["tests.fault_handler:slow", "tests.fault_handler:flaky"]
    with delivery_server() as delivery:
        payloads: list[dict[str, object]] = [
            ready(f"ok{i}", delivery.add(f"{i}.jpg")) for i in range(3)
        ]
        payloads.append(ready("gone", delivery.add("gone.jpg", Sample(status=410))))
        _record(tmp_path, payloads, handlers)
        env = _env(
            tmp_path,
            delivery,
            RECEIVER_HANDLERS=",".join(handlers),
            RECEIVER_HANDLER_MAX_ATTEMPTS="2",
            RECEIVER_HANDLER_BACKOFF_SECONDS="600",  # flaky's retry is not due in this drain
        )
        out = run("drain", "--budget", "60", "--json", env=env)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    # 3 downloads and 3 slow runs done; 3 flaky first attempts retried; the 410 is dead.
    assert {k: summary[k] for k in ("done", "retried", "dead", "handed_back", "queued")} == {
        "done": 6,
        "retried": 3,
        "dead": 1,
        "handed_back": 0,
        "queued": 3,
    }
    assert summary["finished"] is True
    assert summary["polled"] == 0
    assert summary["seconds"] < 60
    effects = str(tmp_path / "effects.db")
    assert sorted(key for key, _ in fault_handler.runs(effects)) == [
        f"ok{i}:tests.fault_handler:slow" for i in range(3)
    ]
    # Nothing is due any more: a second drain does nothing and says so in plain text.
    again = run("drain", "--budget", "10", env=env)
    assert again.exit_code == 0, again.output
    assert "0 done, 0 retried, 0 dead, 0 handed back" in again.output
    assert "3 queued" in again.output


def test_drain_past_its_budget_hands_back_at_once_and_the_next_drain_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    effects = str(tmp_path / "effects.db")
    with delivery_server() as delivery:
        errors = [{"id": f"t{i}", "status": "Error", "error": "x"} for i in range(2)]
        _record(tmp_path, errors, ["tests.fault_handler:slow"])
        env = _env(tmp_path, delivery, BFL_TEST_SLEEP="60")
        started = time.monotonic()
        out = run("drain", "--budget", "2", "--json", env=env)
        took = time.monotonic() - started
        assert out.exit_code == WORK_LEFT, out.output
        summary = json.loads(out.output)
        assert (summary["done"], summary["handed_back"], summary["finished"]) == (0, 2, False)
        assert len(fault_handler.runs(effects, "start")) == 2
        assert took < 15  # the 60 s handlers were cut at the budget, not waited for
        settings = settings_for(tmp_path)
        jobs = [
            j for i in range(2) for j in read_store(settings, lambda s, i=i: s.jobs_for(f"t{i}"))
        ]
        # Queued again at once, the interrupted attempt not counted (not left to its lease).
        assert [(j.state, j.attempts) for j in jobs] == [(JobState.QUEUED, 0)] * 2
        assert all(j.run_at <= time.time() for j in jobs)

        finish = run("drain", "--budget", "30", "--json", env={**env, "BFL_TEST_SLEEP": "0.05"})
    assert finish.exit_code == 0, finish.output
    done = json.loads(finish.output)
    assert (done["done"], done["handed_back"], done["queued"], done["finished"]) == (2, 0, 0, True)
    # Each handler finished once, as its first attempt.
    assert sorted(fault_handler.runs(effects)) == [
        ("t0:tests.fault_handler:slow", 1),
        ("t1:tests.fault_handler:slow", 1),
    ]


@pytest.mark.parametrize("budget", ["0", "-5", "soon", "nan", "inf"])
def test_drain_refuses_a_bad_budget_as_a_usage_error(
    budget: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = run("drain", "--budget", budget)
    assert out.exit_code == 2
    assert "Invalid value for '--budget'" in out.output
    assert "Traceback" not in out.output
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_drain_of_a_missing_store_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = run(
        "drain", "--budget", "5", env={"RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/no.db"}
    )
    assert out.exit_code == 1
    assert out.output.startswith(f"Error: no store at {tmp_path}/no.db")
    assert not (tmp_path / "no.db").exists()  # a drain never creates a store


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_python_drain_runs_the_handlers_it_is_given(tmp_path: Path) -> None:
    recorder = Recorder()
    await anyio.to_thread.run_sync(
        _record, tmp_path, [{"id": "e1", "status": "Error", "error": "x"}], ["mine"]
    )
    settings = settings_for(tmp_path)
    summary = await receiver.drain(settings, budget=20, handlers={"mine": as_handler(recorder)})
    assert isinstance(summary, receiver.DrainSummary)
    assert (summary.done, summary.queued, summary.finished) == (1, 0, True)
    assert recorder.task_ids() == ["e1"]
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget"):
            await receiver.drain(settings, budget=bad)


def test_drain_polls_a_task_whose_webhook_never_came_and_runs_its_jobs(tmp_path: Path) -> None:
    from tests.test_reconciler import reconciling, sandbox, submit  # noqa: PLC0415

    recorder = Recorder()
    with sandbox() as api:
        settings = reconciling(tmp_path, api, run_worker=False)
        with running_receiver(settings, {"rec": as_handler(recorder)}) as r:
            task_id = submit(api, r, settings, "drop-webhook", {"chat_id": 7})
            time.sleep(1.0)  # the task is done (0.2 s) and overdue (0.3 s); no webhook came
            assert recorder.events == []

            async def go() -> receiver.DrainSummary:
                handlers = {"rec": as_handler(recorder)}
                return await receiver.drain(settings, budget=20, handlers=handlers)

            summary = anyio.run(go)
    # One reconcile pass recovered it, and the same drain downloaded it and ran the handler.
    assert summary.polled == 1
    assert (summary.done, summary.queued, summary.finished) == (2, 0, True)
    assert recorder.task_ids() == [task_id]
    assert recorder.events[0].metadata == {"chat_id": 7}
    assert recorder.images[0] is not None
