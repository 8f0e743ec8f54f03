"""Dead jobs are visible where the README says (``events --dead``, a jobs column, ``dead``), and
every failed run keeps its traceback for ``show``; on both engines, through a real receiver."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from receiver import Event
from receiver.cli import main
from tests.support import Recorder, as_handler, eventually, running_receiver, settings_for


def run(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "300"}).invoke(main, list(args))


def give_up(event: Event) -> None:
    # A frame of its own, so the kept traceback has something to show beyond the worker.
    raise ValueError(f"cannot post to chat for {event.task_id}\x00 (NUL and all)")


@pytest.fixture
def with_dead(
    tmp_path: Path,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Path:
    """Task ``doomed``: handler ``chat`` dies after 2 attempts, ``save`` succeeds.
    Task ``fine``: both succeed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECEIVER_DATABASE_URL", store_url)
    settings = settings_for(tmp_path, database_url=store_url, handler_max_attempts=2)
    saved = Recorder()

    async def chat(event: Event) -> None:
        if event.task_id == "doomed":
            give_up(event)

    caplog.set_level(logging.INFO, logger="receiver.worker")
    with running_receiver(settings, {"chat": chat, "save": as_handler(saved)}) as r:
        r.post({"id": "doomed", "status": "Error", "error": "gpu on fire"})
        r.post({"id": "fine", "status": "Error", "error": "just a failed task"})
        eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 1 and len(saved.events) == 2)
        eventually(
            lambda: r.metric("bfl_hooks_handler_runs_total", handler="chat", outcome="ok") == 1
        )
    return tmp_path


def test_dead_lists_dead_jobs_with_their_last_error(with_dead: Path) -> None:
    out = run("dead")
    assert out.exit_code == 0, out.output
    assert "doomed" in out.output
    assert "chat" in out.output
    # PostgreSQL text cannot hold NUL: that store keeps U+FFFD in its place.
    assert any(
        f"ValueError: cannot post to chat for doomed{nul} (NUL and all)" in out.output
        for nul in ("\\x00", "\ufffd")
    )
    assert "fine" not in out.output
    [job] = [json.loads(line) for line in run("dead", "--json").output.splitlines()]
    assert (job["task_id"], job["handler"], job["state"], job["attempts"]) == (
        "doomed",
        "chat",
        "dead",
        2,
    )
    assert job["last_error"].startswith("ValueError: cannot post to chat for doomed")


def test_events_shows_job_states_and_filters_dead(with_dead: Path) -> None:
    listing = run("events")
    assert listing.exit_code == 0, listing.output
    doomed = next(line for line in listing.output.splitlines() if "doomed" in line)
    fine = next(line for line in listing.output.splitlines() if "fine" in line)
    assert "dead 1, done 1" in doomed
    assert "done 2" in fine
    dead_only = run("events", "--dead", "--json").output.splitlines()
    assert [json.loads(line)["task_id"] for line in dead_only] == ["doomed"]
    assert json.loads(dead_only[0])["jobs"] == {"dead": 1, "done": 1}


def test_show_keeps_every_runs_traceback(with_dead: Path) -> None:
    shown = json.loads(run("show", "doomed", "--json").output)
    failed = [r for r in shown["runs"] if r["outcome"] in ("retry", "dead")]
    assert [r["outcome"] for r in failed] == ["retry", "dead"]
    for r in failed:
        assert r["traceback"].startswith("Traceback (most recent call last)")
        assert "in give_up" in r["traceback"]
        assert "ValueError: cannot post to chat" in r["traceback"]
    assert all(r["traceback"] is None for r in shown["runs"] if r["outcome"] == "ok")
    text = run("show", "doomed").output
    assert "traceback of job" in text
    assert "in give_up" in text


def test_every_retry_is_logged_at_info_with_its_error(
    with_dead: Path, caplog: pytest.LogCaptureFixture
) -> None:
    retries = [
        r
        for r in caplog.get_records("setup")  # the receiver ran in the fixture
        if r.levelno == logging.INFO and "retrying in" in r.getMessage()
    ]
    assert len(retries) == 1
    message = retries[0].getMessage()
    assert "task doomed: handler chat failed (attempt 1 of 2)" in message
    assert "ValueError: cannot post to chat for doomed\\x00" in message  # escaped, one line


def test_dead_with_none_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = settings_for(tmp_path)
    monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
    with running_receiver(settings):
        pass  # creates the store
    out = run("dead")
    assert (out.exit_code, out.output) == (0, "no dead jobs\n")
    assert run("dead", "--json").output == ""
