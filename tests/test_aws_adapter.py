"""``receiver.serverless.aws``, called in process with events in AWS's documented shapes.

A real store (both engines), a loopback delivery server for the samples, the receiver app
through Mangum. The Lambda context is the one seam here: a small stand-in with the remaining
time (tests/test_aws_runtime.py runs the same handler under the real runtime client).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from receiver import Event
from receiver.serverless.aws import DrainFailed, LambdaReceiver, lambda_settings
from receiver.settings import Settings
from receiver.store import JobState
from tests import aws_events
from tests.support import (
    SECRET,
    Delivery,
    Recorder,
    as_handler,
    delivery_server,
    read_store,
    ready,
    settings_for,
)

SECRET_HEADERS = {"x-webhook-secret": SECRET}
WRONG = "wrong-secret-77aa5c"


@dataclass
class Context:
    """What the adapter reads from Lambda's context object."""

    seconds: float
    aws_request_id: str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@pytest.fixture
def delivery() -> Iterator[Delivery]:
    with delivery_server() as server:
        yield server


def _settings(tmp_path: Path, store_url: str, delivery: Delivery, **kw: Any) -> Settings:
    return settings_for(tmp_path, database_url=store_url, sample_hosts=(delivery.host,), **kw)


@pytest.fixture
def lambda_receiver(
    tmp_path: Path, store_url: str, delivery: Delivery
) -> Iterator[tuple[LambdaReceiver, Recorder, Settings]]:
    recorder = Recorder()
    settings = _settings(tmp_path, store_url, delivery)
    adapter = LambdaReceiver(settings, handlers={"rec": as_handler(recorder)})
    try:
        yield adapter, recorder, settings
    finally:
        adapter.close()


def _json(answer: dict[str, Any]) -> Any:
    return json.loads(answer["body"])


def _no_tasks_left(adapter: LambdaReceiver) -> bool:
    warm = adapter._warm
    assert warm is not None
    return not asyncio.all_tasks(warm.loop)


@pytest.mark.parametrize("shape", [aws_events.function_url, aws_events.http_api])
def test_a_payload_2_webhook_is_recorded_then_processed_inline_before_the_answer(
    lambda_receiver: tuple[LambdaReceiver, Recorder, Settings], delivery: Delivery, shape: Any
) -> None:
    adapter, recorder, settings = lambda_receiver
    event = shape(ready("t1", delivery.add("t1.jpg")), SECRET_HEADERS)
    answer = adapter(event, Context(30))
    assert answer["statusCode"] == 200
    body = _json(answer)
    assert (body["task_id"], body["outcome"]) == ("t1", "new")
    # Inline by default on Lambda: the download and the handler ran before the answer.
    assert body["inline"]["done"] == 2
    assert body["inline"]["finished"]
    assert recorder.task_ids() == ["t1"]
    assert recorder.images[0] == delivery.samples["t1.jpg"].body
    jobs = read_store(settings, lambda s: s.jobs_for("t1"))
    assert {j.state for j in jobs} == {JobState.DONE}
    assert _no_tasks_left(adapter)  # nothing would run while Lambda freezes the process


def test_a_rest_api_webhook_with_a_base64_body_verifies_its_hmac_over_the_exact_bytes(
    lambda_receiver: tuple[LambdaReceiver, Recorder, Settings],
) -> None:
    adapter, recorder, _ = lambda_receiver
    # Bytes a JSON round trip would change (spacing, key order, an escaped é): only the
    # exact bytes carry the signature.
    raw = b'{"status":"Error",  "id":"t2", "error":"caf\\u00e9"}'
    headers = {"X-BFL-Signature": aws_events.signature(raw, SECRET)}
    answer = adapter(aws_events.rest_api(raw, headers, base64_body=True), Context(30))
    assert answer["statusCode"] == 200, answer
    assert _json(answer)["task_id"] == "t2"
    assert [e.error for e in recorder.events] == ["café"]
    bad = {"X-BFL-Signature": aws_events.signature(raw + b" ", SECRET)}
    refused = adapter(aws_events.rest_api(raw, bad, base64_body=True), Context(30))
    assert refused["statusCode"] == 401


def test_the_store_and_client_are_opened_once_per_environment(
    lambda_receiver: tuple[LambdaReceiver, Recorder, Settings],
) -> None:
    adapter, recorder, _ = lambda_receiver
    opened = []
    for i in range(3):
        payload = {"id": f"e{i}", "status": "Error", "error": "x"}
        answer = adapter(aws_events.function_url(payload, SECRET_HEADERS), Context(30))
        assert answer["statusCode"] == 200
        warm = adapter._warm
        assert warm is not None
        opened.append((warm.services.store, warm.services.client, warm.loop))
    assert all(o == opened[0] for o in opened)  # the same objects: nothing reopened
    assert not opened[0][1].is_closed
    assert sorted(recorder.task_ids()) == ["e0", "e1", "e2"]


def test_inline_work_past_the_remaining_time_is_handed_back_and_a_drain_finishes_it(
    tmp_path: Path, store_url: str, delivery: Delivery
) -> None:
    runs: list[str] = []

    async def slow_first(event: Event) -> None:
        runs.append(event.task_id)
        if len(runs) == 1:
            await asyncio.sleep(60)

    settings = _settings(tmp_path, store_url, delivery)
    adapter = LambdaReceiver(settings, handlers={"slow": slow_first})
    try:
        payload = {"id": "s1", "status": "Error", "error": "x"}
        started = time.monotonic()
        # 3 s left in the invocation: inline stops 1 s before that, whatever the cap.
        answer = adapter(aws_events.function_url(payload, SECRET_HEADERS), Context(3))
        took = time.monotonic() - started
        assert answer["statusCode"] == 200  # answered whatever the handler did
        inline = _json(answer)["inline"]
        assert (inline["handed_back"], inline["finished"]) == (1, False)
        assert took < 3.0
        assert _no_tasks_left(adapter)  # the cut run is not left to wake up later
        [job] = read_store(settings, lambda s: s.jobs_for("s1"))
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)  # handed back, not counted

        summary = adapter(aws_events.scheduled(), Context(20))
        assert (summary["done"], summary["queued"], summary["finished"]) == (1, 0, True)
        assert runs == ["s1", "s1"]
        [job] = read_store(settings, lambda s: s.jobs_for("s1"))
        assert job.state is JobState.DONE
        assert _no_tasks_left(adapter)
    finally:
        adapter.close()


def test_a_failing_handler_never_changes_the_webhooks_answer(
    tmp_path: Path, store_url: str, delivery: Delivery
) -> None:
    recorder = Recorder(fail_times=10)
    settings = _settings(tmp_path, store_url, delivery)
    adapter = LambdaReceiver(settings, handlers={"rec": as_handler(recorder)})
    try:
        payload = {"id": "f1", "status": "Error", "error": "x"}
        answer = adapter(aws_events.function_url(payload, SECRET_HEADERS), Context(30))
        assert answer["statusCode"] == 200
        assert _json(answer)["inline"]["retried"] == 1
        [job] = read_store(settings, lambda s: s.jobs_for("f1"))
        assert (job.state, job.attempts) == (JobState.QUEUED, 1)
        assert "handler failed on purpose" in (job.last_error or "")
    finally:
        adapter.close()


def test_inline_budget_set_to_zero_leaves_the_jobs_for_the_scheduled_drain(
    tmp_path: Path, store_url: str, delivery: Delivery
) -> None:
    recorder = Recorder()
    settings = _settings(tmp_path, store_url, delivery, inline_budget_seconds=0)
    adapter = LambdaReceiver(settings, handlers={"rec": as_handler(recorder)})
    try:
        answer = adapter(
            aws_events.function_url(ready("q1", delivery.add("q1.jpg")), SECRET_HEADERS),
            Context(30),
        )
        assert answer["statusCode"] == 200
        assert "inline" not in _json(answer)
        assert recorder.seen == []
        assert delivery.hits == []
        summary = adapter(aws_events.scheduled(), Context(20))
        assert (summary["done"], summary["finished"]) == (2, True)  # download, then handler
        assert recorder.task_ids() == ["q1"]
    finally:
        adapter.close()


def test_lambda_settings_turn_the_worker_off_and_inline_on_unless_set() -> None:
    default = lambda_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert (default.run_worker, default.inline_budget_seconds) == (False, 20.0)
    off = lambda_settings(Settings(_env_file=None, inline_budget_seconds=0))  # type: ignore[call-arg]
    assert off.inline_budget_seconds == 0


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "status", "says"),
    [
        (aws_events.sqs(), 400, "not an event this function takes"),
        ({}, 400, "not an event this function takes"),
        ([1, 2], 400, "not an event this function takes"),
        ({"requestContext": {"weird": True}}, 400, "not an event this function takes"),
        (
            {**aws_events.function_url(b"{}", SECRET_HEADERS), "body": "%%%not base64%%%"}
            | {"isBase64Encoded": True},
            400,
            "not valid base64",
        ),
        (
            aws_events.function_url(b"x" * 300_000, SECRET_HEADERS, base64_body=True),
            413,
            "body over",
        ),
        (aws_events.function_url(b"x" * 300_000, SECRET_HEADERS), 413, "body over"),
        (aws_events.function_url(b"not json", SECRET_HEADERS), 400, "JSON"),
        (aws_events.function_url({"id": "t"}, {"x-webhook-secret": WRONG}), 401, "unauth"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_no_traceback_or_secret(
    lambda_receiver: tuple[LambdaReceiver, Recorder, Settings],
    caplog: pytest.LogCaptureFixture,
    event: Any,
    status: int,
    says: str,
) -> None:
    adapter, recorder, _ = lambda_receiver
    caplog.set_level(logging.INFO)
    answer = adapter(event, Context(30))
    assert answer["statusCode"] == status
    assert says.lower() in answer["body"].lower()
    assert recorder.seen == []
    for text in (answer["body"], caplog.text):
        assert "Traceback" not in text
        assert SECRET not in text
        assert WRONG not in text


def test_an_unreachable_store_is_a_503_for_webhooks_and_a_failed_drain(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, database_url="postgresql://bfl:pw-9f8e7d@127.0.0.1:1/x")
    adapter = LambdaReceiver(settings, handlers={})
    payload = {"id": "u1", "status": "Error", "error": "x"}
    answer = adapter(aws_events.function_url(payload, SECRET_HEADERS), Context(30))
    assert answer["statusCode"] == 503
    assert answer["headers"]["retry-after"] == "5"
    assert "pw-9f8e7d" not in answer["body"]
    with pytest.raises(DrainFailed, match="cannot open the receiver") as failed:
        adapter(aws_events.scheduled(), Context(30))
    assert "pw-9f8e7d" not in str(failed.value)
    assert adapter._warm is None  # the next invocation tries again


def test_a_drain_with_too_little_time_left_fails_saying_so(
    lambda_receiver: tuple[LambdaReceiver, Recorder, Settings],
) -> None:
    adapter, _, _ = lambda_receiver
    with pytest.raises(DrainFailed, match="too little for a drain"):
        adapter(aws_events.scheduled(), Context(0.5))


@pytest.mark.parametrize(
    ("name", "value", "logged"),
    [
        ("RECEIVER_JOB_LEASE_SECONDS", "-1", "invalid settings: RECEIVER_JOB_LEASE_SECONDS"),
        ("RECEIVER_HANDLERS", "no_such_module_here:run", "no_such_module_here"),
    ],
)
def test_bad_settings_are_named_in_the_log_without_their_values(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    value: str,
    logged: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("RECEIVER_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("RECEIVER_DATABASE_URL", f"sqlite:///{tmp_path}/receiver.db")
    monkeypatch.setenv(name, value)
    adapter = LambdaReceiver()  # settings from the environment, as on Lambda
    payload = {"id": "b1", "status": "Error", "error": "x"}
    answer = adapter(aws_events.function_url(payload, SECRET_HEADERS), Context(30))
    assert answer["statusCode"] == 503
    assert logged in caplog.text
    assert "Traceback" not in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in answer["body"]
