"""A finetune's end reaches its handlers: ``bfl-submit finetune create -m ...`` → the sandbox
trains → one finetune event, by webhook or, when none comes, by the reconciler's polling."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import receiver
from receiver import Event
from receiver import Settings as ReceiverSettings
from receiver.events import Status
from receiver.handlers import HandlerSet
from receiver.reconciler import finetune_backoff
from sandbox import create_app
from tests.sandbox.conftest import settings as sandbox_settings
from tests.servers import serve
from tests.submitter.conftest import cli, cli_json
from tests.support import (
    SECRET,
    Receiver,
    Recorder,
    eventually,
    read_store,
    running_receiver,
    settings_for,
)


def selective(kinds: tuple[str, ...] | None, recorder: Recorder) -> receiver.Handler:
    """A handler that records what it gets, narrowed with ``@receiver.on(*kinds)``."""

    async def handler(event: Event) -> None:
        await recorder(event)

    return receiver.on(*kinds)(handler) if kinds else handler


@dataclass
class Stage:
    api: str
    receiver: Receiver
    receiver_settings: ReceiverSettings
    finetunes: Recorder
    """``@on("finetune")``"""
    everything: Recorder
    """undecorated: ``"*"``"""
    ready: Recorder
    """``@on("ready")``: generations only"""

    def env(self, tmp: Path, **overrides: str | None) -> dict[str, str | None]:
        values: dict[str, str | None] = {
            "BFL_API_KEY": f"key-{tmp.name}",
            "BFL_API_URL": self.api,
            "BFL_REGION": None,
            "RECEIVER_PUBLIC_URL": self.receiver.url,
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DATABASE_URL": self.receiver_settings.database_url,
            "BFL_SUBMIT_DATA_DIR": str(tmp / "submitter"),
            "BFL_FINETUNE_WEBHOOK": None,
        }
        values.update(overrides)
        return values


@contextmanager
def stage(tmp: Path, database_url: str, reconcile_after: float) -> Iterator[Stage]:
    """The sandbox (trainings take 0.3 s) and a receiver that polls it, with three handlers."""
    finetunes, everything, ready = Recorder(), Recorder(), Recorder()
    handlers = {
        "ft": selective(("finetune",), finetunes),
        "all": selective(None, everything),
        "ready": selective(("ready",), ready),
    }
    with serve(create_app(sandbox_settings(finetune_seconds=0.3))) as api:
        settings = settings_for(
            tmp,
            database_url=database_url,
            sample_hosts=(api.removeprefix("http://"),),
            reconcile_after=reconcile_after,
            bfl_api_key="reconciler",
            bfl_api_url=api,
        )
        with running_receiver(settings, handlers) as r:
            yield Stage(api, r, settings, finetunes, everything, ready)


def training_folder(root: Path) -> Path:
    root.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (i * 60, 90, 140)).save(root / f"dog{i}.jpg")
    return root


def create_finetune(st: Stage, tmp: Path, comment: str, **env: str | None) -> dict[str, Any]:
    out = cli(
        st.env(tmp, **env),
        "finetune",
        "create",
        str(training_folder(tmp / "mydog")),
        "--mode",
        "character",
        "--trigger-word",
        "MYDOG",
        "--comment",
        comment,
        "-m",
        "chat_id=42",
        "-m",
        "who=ana",
        "--json",
    )
    assert out.exit_code == 0, out.output
    task: dict[str, Any] = cli_json(out)["task"]
    return task


def assert_one_finetune_event(st: Stage, finetune_id: str) -> Event:
    eventually(lambda: st.finetunes.events and st.everything.events, timeout=30)
    event = st.finetunes.events[0]
    assert event.task_id == finetune_id
    assert event.finetune_id == finetune_id
    assert event.kind == "finetune"
    assert event.status is Status.READY
    assert event.metadata == {"chat_id": 42, "who": "ana"}
    assert event.image is None  # a training yields no image, and nothing is downloaded
    assert st.everything.events[0].finetune_id == finetune_id  # "*" means every event
    jobs = read_store(st.receiver_settings, lambda s: s.jobs_for(finetune_id))
    assert sorted(j.handler for j in jobs) == ["all", "ft"]  # no download, no "ready"
    return event


def test_finetune_webhook_reaches_finetune_handlers(tmp_path: Path, store_url: str) -> None:
    # Polling would come only after a minute: the webhook is what tells the end here.
    with stage(tmp_path, store_url, reconcile_after=60.0) as st:
        task = create_finetune(st, tmp_path, "mydog")
        assert task["webhook"] is True
        assert "eu1" in task["polling_url"] or "us1" in task["polling_url"]
        event = assert_one_finetune_event(st, task["id"])
        assert event.payload["task_id"] == task["id"]  # the training's webhook body
        assert st.receiver.metric("bfl_hooks_webhooks_total", outcome="new") == 1
        assert st.receiver.metric("bfl_hooks_reconcile_polls_total", outcome="recovered") == 0
        assert st.ready.events == []
        assert len(st.finetunes.events) == 1


def test_finetune_without_webhook_is_finished_by_polling(tmp_path: Path, store_url: str) -> None:
    with stage(tmp_path, store_url, reconcile_after=0.3) as st:
        task = create_finetune(st, tmp_path, "mydog [sandbox:drop-webhook]")
        event = assert_one_finetune_event(st, task["id"])
        assert event.payload["result"] == {"finetune_id": task["id"]}  # get_result's answer
        assert st.receiver.metric("bfl_hooks_webhooks_total", outcome="new") == 0
        assert st.receiver.metric("bfl_hooks_reconcile_polls_total", outcome="recovered") == 1
        # Hours-long back-off: polled at 0.3 s (still training), then not before 1.5 s.
        assert st.receiver.metric("bfl_hooks_reconcile_polls_total", outcome="pending") <= 2
        assert st.ready.events == []


def test_finetune_webhook_can_be_switched_off(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'receiver.db'}"
    with stage(tmp_path, database_url, reconcile_after=0.3) as st:
        task = create_finetune(st, tmp_path, "mydog", BFL_FINETUNE_WEBHOOK="false")
        assert task["webhook"] is False
        assert_one_finetune_event(st, task["id"])
        assert st.receiver.metric("bfl_hooks_webhooks_total", outcome="new") == 0


def test_webhook_of_an_unregistered_finetune_still_reaches_finetune_handlers(
    tmp_path: Path, store_url: str
) -> None:
    with stage(tmp_path, store_url, reconcile_after=60.0) as st:
        body = {"task_id": "ft-elsewhere", "status": "Ready", "result": {"finetune_id": "x"}}
        assert st.receiver.post(body).json()["outcome"] == "new"
        eventually(lambda: st.finetunes.events and st.everything.events)
        event = st.finetunes.events[0]
        assert (event.kind, event.finetune_id, event.metadata) == ("finetune", "ft-elsewhere", {})
        # A generation's webhook, alongside, is not a finetune.
        st.receiver.post({"id": "gen-1", "status": "Error", "message": "nope"})
        eventually(lambda: len(st.everything.events) == 2)
        assert len(st.finetunes.events) == 1


def test_failure_message_is_the_event_error(tmp_path: Path) -> None:
    with stage(tmp_path, f"sqlite:///{tmp_path / 'r.db'}", reconcile_after=60.0) as st:
        body = {
            "id": "gen-failed",
            "status": "Error",
            "error": "content_policy_violation",
            "message": "The prompt violated content policy",
            "timestamp": "2025-01-15T10:30:00Z",
        }
        assert st.receiver.post(body).json()["outcome"] == "new"
        eventually(lambda: st.everything.events)
        event = st.everything.events[0]
        assert event.error == "The prompt violated content policy"
        assert event.kind == "error"
        assert event.finetune_id is None
        assert event.payload["timestamp"] == "2025-01-15T10:30:00Z"


def test_on_finetune_selects_finetune_events_and_star_keeps_every_event() -> None:
    handlers = HandlerSet(
        {
            "ft": selective(("finetune",), Recorder()),
            "all": selective(None, Recorder()),
            "ready": selective(("ready",), Recorder()),
            "failed": selective(("error", "finetune"), Recorder()),
        }
    )
    assert handlers.names_for(Status.READY, finetune=True) == ["all", "failed", "ft"]
    assert handlers.names_for(Status.ERROR, finetune=True) == ["all", "failed", "ft"]
    assert handlers.names_for(Status.PENDING, finetune=True) == []
    assert handlers.names_for(Status.READY) == ["all", "ready"]
    assert handlers.names_for(Status.ERROR) == ["all", "failed"]
    with pytest.raises(ValueError, match="finetune"):
        receiver.on("finetunes")


def test_finetune_backoff_is_fitted_to_hours() -> None:
    minute = 60.0
    assert finetune_backoff(1 * minute, 60.0) == 5 * minute  # never sooner than 5 minutes
    assert finetune_backoff(30 * minute, 60.0) == 10 * minute  # a third of the age
    assert finetune_backoff(60 * minute, 60.0) == 20 * minute
    assert finetune_backoff(5 * 60 * minute, 60.0) == 30 * minute  # never later than 30


def test_a_refused_training_leaves_no_submission(tmp_path: Path) -> None:
    database = tmp_path / "receiver.db"
    with stage(tmp_path, f"sqlite:///{database}", reconcile_after=60.0) as st:
        out = cli(
            st.env(tmp_path),
            "finetune",
            "create",
            str(training_folder(tmp_path / "mydog")),
            "--mode",
            "character",
            "--comment",
            "mydog [sandbox:no-such-fault]",  # the sandbox answers 422
            "-m",
            "chat_id=1",
        )
        assert out.exit_code == 3, out.output
        with sqlite3.connect(database) as db:
            assert db.execute("SELECT count(*) FROM submissions").fetchone() == (0,)
        db.close()
        again = tmp_path / "again"
        again.mkdir()
        create_finetune(st, again, "mydog")  # one that is taken is recorded
        with sqlite3.connect(database) as db:
            rows = db.execute("SELECT endpoint, task_id IS NOT NULL FROM submissions").fetchall()
        db.close()
        assert rows == [("finetune", 1)]
