"""``bfl-submit batch`` never goes without a webhook by accident, counts only finished lines,
says when it waits for a slot, and on Ctrl-C says what was saved."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console
from rich.progress import Progress

import submitter
from receiver.store import opened_store
from submitter._batch import Outcomes, run_batch
from tests.submitter.conftest import World, cli, cli_json, sandbox
from tests.support import SECRET

#: ``bfl-submit batch`` as a process of its own, whatever the venv's scripts are.
BATCH = (sys.executable, "-c", "from submitter.cli import main; main()", "batch")


def jobs(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"line {i}"}) + "\n" for i in range(count)))
    return path


def states(path: Path) -> dict[str, str]:
    """The last state of each line of ``path``'s state file."""
    last: dict[str, str] = {}
    state = path.with_name(path.name + ".state")
    if not state.exists():
        return last
    for raw in state.read_text().splitlines():
        record = json.loads(raw)
        last[record["key"]] = record["state"]
    return last


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def test_batch_without_a_webhook_secret_refuses_and_says_where_it_looked(
    world: World, tmp_path: Path
) -> None:
    env = world.env(tmp_path, RECEIVER_WEBHOOK_SECRET=None)
    path = jobs(Path("jobs.jsonl"), 3)
    credits = cli_json(cli(env, "credits", "--json"))["credits"]
    out = cli(env, "batch", str(path))
    assert out.exit_code == 2, out.output
    said = " ".join(out.stderr.split())
    assert "RECEIVER_WEBHOOK_SECRET is not set" in said
    assert f"no .env in {tmp_path} or any folder above it" in said
    assert "--no-webhook" in said
    assert states(path) == {}  # nothing was even attempted
    assert cli_json(cli(env, "credits", "--json"))["credits"] == credits

    Path(".env").write_text("BFL_REGION=global\n")  # a .env, but without the secret
    out = cli(env, "batch", str(path))
    assert out.exit_code == 2
    assert f"{tmp_path / '.env'} does not set it" in " ".join(out.stderr.split())


def test_a_store_found_through_a_parent_env_is_named(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path(".env").write_text("BFL_REGION=global\n")
    store = tmp_path / "data" / "receiver.db"
    anyio.run(_create_store, f"sqlite:///{store}")  # the receiver's, made by its serve
    (tmp_path / "bot").mkdir()
    monkeypatch.chdir(tmp_path / "bot")
    out = cli(world.env(tmp_path, RECEIVER_DATABASE_URL=None), "generate", "from below")
    assert out.exit_code == 0, out.output
    said = " ".join(out.stderr.split())
    assert f"note: store {tmp_path / 'data' / 'receiver.db'} (relative paths are resolved" in said
    assert f"the folder of {tmp_path / '.env'}" in said
    with sqlite3.connect(store) as db:  # registered in the store the parent .env names
        assert db.execute("SELECT count(*) FROM submissions").fetchone() == (1,)
    assert not (tmp_path / "bot" / "data").exists()


async def _create_store(url: str) -> None:
    async with opened_store(url):
        pass


def test_batch_with_no_webhook_submits_on_purpose(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path, RECEIVER_WEBHOOK_SECRET=None)
    path = jobs(Path("jobs.jsonl"), 2)
    out = cli(env, "batch", str(path), "--poll", "--json")
    assert out.exit_code == 0, out.output
    assert len(cli_json(out)["submitted"]) == 2
    assert "warning" not in out.stderr
    assert set(states(path).values()) == {"submitted"}


@pytest.mark.anyio
async def test_the_bar_counts_finished_lines_and_says_when_it_waits_for_a_slot(
    tmp_path: Path, closed_port: int
) -> None:
    """24 tasks of 30 s fill BFL's slots: the 25th and 26th wait, and the bar says so."""
    with sandbox(task_seconds=30) as api:
        values: dict[str, Any] = {
            "api_key": "k",
            "api_url": api,
            "public_url": f"http://127.0.0.1:{closed_port}",
            "webhook_secret": SECRET,
            "database_url": f"sqlite:///{tmp_path / 'own.db'}",  # no other test's tasks
            "data_dir": tmp_path,
        }
        settings = submitter.Settings(_env_file=None, **values)  # type: ignore[call-arg]
        path = jobs(tmp_path / "jobs.jsonl", 26)
        console = Console(file=io.StringIO(), width=120)
        outcomes = Outcomes()
        async with submitter.BFL(settings=settings) as bfl:
            with Progress(console=console) as progress:
                running = asyncio.create_task(
                    run_batch(
                        bfl,
                        path,
                        concurrency=26,
                        model="flux-dev",
                        retry_uncertain=False,
                        progress=progress,
                        outcomes=outcomes,
                    )
                )
                deadline = time.monotonic() + 30
                while not progress.tasks or "waiting" not in progress.tasks[0].description:
                    assert time.monotonic() < deadline, "the bar never said it was waiting"
                    await asyncio.sleep(0.05)
                assert progress.tasks[0].description == "waiting for a slot (24 tasks active)"
                await asyncio.sleep(0.5)  # still waiting: nothing more has finished
                assert progress.tasks[0].completed == len(outcomes.submitted) == 24
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running
    assert len(outcomes.interrupted) == 2  # saved as sending; the rerun settles them
    assert outcomes.not_attempted == []
    assert sorted(states(path).values()) == ["sending"] * 2 + ["submitted"] * 24


@pytest.mark.slow
def test_ctrl_c_stops_a_batch_and_says_what_was_saved(tmp_path: Path, closed_port: int) -> None:
    with sandbox(task_seconds=30) as api:
        env: dict[str, Any] = {
            **os.environ,
            "BFL_API_KEY": "k",
            "BFL_API_URL": api,
            "RECEIVER_PUBLIC_URL": f"http://127.0.0.1:{closed_port}",
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'own.db'}",
            "BFL_SUBMIT_DATA_DIR": str(tmp_path),
            "TTY_COMPATIBLE": "1",  # the progress bar draws as on a terminal
            "TTY_INTERACTIVE": "1",
            "COLUMNS": "160",
        }
        path = jobs(tmp_path / "jobs.jsonl", 30)
        stderr = tmp_path / "stderr.txt"
        with stderr.open("w") as errors:
            proc = subprocess.Popen(
                [*BATCH, str(path), "--concurrency", "8"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
            try:
                deadline = time.monotonic() + 60
                while "waiting for a slot" not in stderr.read_text():
                    assert proc.poll() is None, stderr.read_text()
                    assert time.monotonic() < deadline, stderr.read_text()
                    time.sleep(0.1)
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    said = stderr.read_text()
    assert proc.returncode == 130, said
    assert "Traceback" not in said
    assert said.count("the receiver does not answer") == 1  # the CLI's note, not the log too
    assert "24 line(s) submitted in this run" in said
    assert f"every step is saved in {path}.state" in " ".join(said.split())
    assert "Rerun to resume" in said
    assert list(states(path).values()).count("submitted") == 24
