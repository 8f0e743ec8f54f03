"""A task finished by polling is shown "by polling", never as a delivery; and a receiver that
refused a task's webhook for its secret, then got the task by polling, says why once. Through
the real sandbox, a real receiver and its reconciler."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from receiver.cli import main
from receiver.refusals import MAX_REMEMBERED, RefusedWebhooks
from receiver.settings import Settings
from receiver.verify import derive_secret
from tests.support import Receiver, Recorder, as_handler, eventually, read_store, running_receiver
from tests.test_reconciler import reconciling, sandbox, submit

HINT = "the secret the submitter used is not one this receiver accepts"


def run(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "300"}).invoke(main, list(args))


def submit_signed_with(api: str, receiver: Receiver, settings: Settings, master: str) -> str:
    """What a submitter configured with another master secret does."""
    ref = f"ref-{uuid.uuid4().hex}"
    read_store(settings, lambda s: s.prepare_submission(ref, "flux-dev", {"chat": 1}))
    resp = httpx.post(
        f"{api}/v1/flux-dev",
        headers={"x-key": "sandbox"},
        json={
            "prompt": "a lighthouse",
            "webhook_url": f"{receiver.url}/webhooks/bfl?ref={ref}",
            "webhook_secret": derive_secret(master, ref),
        },
    )
    assert resp.status_code == 200, resp.text
    task = resp.json()
    read_store(settings, lambda s: s.bind_submission(ref, task["id"], task["polling_url"]))
    return str(task["id"])


def test_a_task_finished_by_polling_is_shown_by_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    rec = Recorder()
    with sandbox() as api:
        settings = reconciling(tmp_path, api)
        monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            task_id = submit(api, r, settings, "drop-webhook", {"chat_id": 42})
            eventually(lambda: len(rec.events) == 1, timeout=20)
    [row] = [json.loads(line) for line in run("events", "--json").output.splitlines()]
    assert (row["task_id"], row["via"], row["deliveries"]) == (task_id, "polling", 0)
    listing = run("events").output
    assert "by polling" in listing
    assert "webhook" not in listing
    shown = run("show", task_id).output
    assert "by polling" in shown
    assert "webhook" not in shown
    assert HINT not in caplog.text  # no webhook was refused: no hint


def test_refused_secret_then_polling_logs_the_likely_cause_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="receiver")
    rec = Recorder()
    with sandbox() as api:
        # Polling waits long enough for the (refused) webhook to come first, even when loaded.
        settings = reconciling(tmp_path, api, reconcile_after=1.5)
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            first = submit_signed_with(api, r, settings, "another-master-secret")
            second = submit_signed_with(api, r, settings, "another-master-secret")
            eventually(lambda: len(rec.events) == 2, timeout=30)
            refused = r.metric("bfl_hooks_webhooks_total", outcome="unauthorized")
    assert refused >= 2  # the sandbox's webhooks were refused...
    hints = [rec for rec in caplog.records if HINT in rec.getMessage()]
    assert len(hints) == 1  # ...and the cause was said once, not per task
    assert first in hints[0].getMessage() or second in hints[0].getMessage()


def test_the_refusal_memory_is_bounded_and_takes_hostile_bodies() -> None:
    refused = RefusedWebhooks()
    for i in range(3 * MAX_REMEMBERED):
        refused.refused(json.dumps({"id": f"t{i}"}).encode(), ref=f"r{i}")
    assert not refused.arrived_by_polling("t0", "r0")  # the oldest were forgotten
    refused.refused(b"[" * 100_000 + b"]" * 100_000, ref=None)  # too big to look into
    refused.refused(b"[" * 5000 + b"]" * 5000, ref=None)  # nesting json cannot take
    refused.refused(b'{"id": "\\u001b[2J"}', ref=None)  # not a printable task id
    refused.refused(None, ref=None)  # the body was never read
    assert refused.arrived_by_polling(f"t{3 * MAX_REMEMBERED - 1}", None)
    assert refused.hinted
