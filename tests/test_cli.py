"""``bfl-receiver`` commands against a store a real receiver filled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from receiver.cli import main, parse_duration
from tests.support import Recorder, as_handler, eventually, running_receiver, settings_for


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store with a failed-and-dead task, a finished one and a pending one."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = settings_for(tmp_path, handler_max_attempts=1)
    monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
    broken = Recorder(fail_times=1)
    fine = Recorder()
    with running_receiver(settings, {"broken": as_handler(broken), "fine": as_handler(fine)}) as r:
        r.post({"id": "bad", "status": "Error", "error": "nope"})
        r.post({"id": "wait", "status": "Pending"})
        eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 1 and len(fine.events) == 1)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "240"}).invoke(main, list(args))


def test_events_lists_and_filters(filled: Path) -> None:
    out = run("events")
    assert out.exit_code == 0, out.output
    assert "bad" in out.output
    assert "wait" in out.output
    rows = [json.loads(line) for line in run("events", "--json").output.splitlines()]
    assert {r["task_id"] for r in rows} == {"bad", "wait"}
    pending = run("events", "--status", "pending", "--json").output.splitlines()
    assert [json.loads(line)["task_id"] for line in pending] == ["wait"]


def test_events_refuses_unknown_status(filled: Path) -> None:
    out = run("events", "--status", "sparkly")
    assert out.exit_code == 2
    assert "sparkly" in out.output


def test_show_names_every_run_and_error(filled: Path) -> None:
    out = run("show", "bad", "--json")
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["event"]["error"] == "nope"
    states = {j["handler"]: j["state"] for j in shown["jobs"]}
    assert states == {"broken": "dead", "fine": "done"}
    assert any(r["error"] == "RuntimeError: handler failed on purpose" for r in shown["runs"])
    text = run("show", "bad").output
    assert "dead" in text
    assert "handler failed on purpose" in text


def test_show_unknown_task_fails_clearly(filled: Path) -> None:
    out = run("show", "nope")
    assert out.exit_code == 1
    assert "no event for task 'nope'" in out.output


def test_replay_requeues_dead_jobs(filled: Path) -> None:
    assert run("replay", "wait").exit_code == 1  # nothing dead there
    out = run("replay", "bad")
    assert out.exit_code == 0
    assert "queued 1 job" in out.output
    assert run("replay", "--dead").output.startswith("queued 0 job")
    shown = json.loads(run("show", "bad", "--json").output)
    assert {j["handler"]: j["state"] for j in shown["jobs"]}["broken"] == "queued"
    assert run("replay", "bad", "--all-handlers").output.startswith("queued 1 job")


@pytest.mark.parametrize(
    "args", [("replay",), ("replay", "bad", "--dead"), ("replay", "--dead", "--all-handlers")]
)
def test_replay_usage_errors(filled: Path, args: tuple[str, ...]) -> None:
    out = run(*args)
    assert out.exit_code == 2


def test_prune_keeps_recent_and_refuses_bad_durations(filled: Path) -> None:
    assert run("prune", "--older-than", "30d").output == "pruned 0 event(s) older than 30d\n"
    bad = run("prune", "--older-than", "soon")
    assert bad.exit_code == 2
    assert "not a duration" in bad.output
    assert run("prune", "--older-than", "0s").output.startswith("pruned 2 event")
    assert run("events", "--json").output == ""


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("90") == 90


def test_serve_without_a_secret_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECEIVER_WEBHOOK_SECRET", raising=False)
    out = run("serve")
    assert out.exit_code == 1
    assert "RECEIVER_WEBHOOK_SECRET is not set" in out.output


def test_serve_with_a_bad_handler_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECEIVER_WEBHOOK_SECRET", "x-secret")
    monkeypatch.setenv("RECEIVER_HANDLERS", "nowhere.at_all:handler")
    out = run("serve")
    assert out.exit_code == 1
    assert "cannot import 'nowhere.at_all'" in out.output
    assert "x-secret" not in out.output


def test_bad_settings_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECEIVER_PORT", "99999")
    out = run("events")
    assert out.exit_code == 1
    assert "bad settings" in out.output


def test_unsupported_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECEIVER_DATABASE_URL", "mysql://nope")
    out = run("events")
    assert out.exit_code == 1
    assert "unsupported database URL" in out.output
