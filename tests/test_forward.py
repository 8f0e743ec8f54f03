"""``receiver.integrations.forward:send`` end to end: a real receiver forwards to a real backend
on loopback, which checks every request with the official ``standardwebhooks`` verifier."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.cli import main
from receiver.events import Event, Status
from receiver.integrations import forward
from receiver.integrations.forward import (
    ForwardConfigError,
    Forwarder,
    ForwardSettings,
    RetryLater,
    load_settings,
    retry_after,
)
from receiver.settings import Settings
from receiver.store.base import Job, JobRun, JobState
from tests.servers import serve
from tests.support import (
    Delivery,
    Sample,
    delivery_server,
    eventually,
    jpeg_bytes,
    read_store,
    ready,
    running_receiver,
    settings_for,
)

HANDLER = "receiver.integrations.forward:send"
OLD_SECRET = "whsec_" + base64.b64encode(b"old-forward-key-0123456789abcdef").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"new-forward-key-fedcba9876543210").decode()


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class Backend:
    """The user's backend: records every forward, answers from a script (then 200)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.received: list[Received] = []
        self.elsewhere_hits = 0
        self.url = ""
        self.app = Starlette(
            routes=[
                Route("/hook", self._hook, methods=["POST"]),
                Route("/elsewhere", self._elsewhere, methods=["GET", "POST"]),
            ]
        )

    @property
    def hook(self) -> str:
        return f"{self.url}/hook"

    async def _hook(self, request: Request) -> Response:
        self.received.append(Received(dict(request.headers), await request.body()))
        answer = self.answers.pop(0) if self.answers else Answer()
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    async def _elsewhere(self, request: Request) -> Response:
        self.elsewhere_hits += 1
        return Response(status_code=200)

    def verified(self, secret: str, index: int = -1) -> Any:
        """The JSON of a forward, after the official library checked its signature."""
        got = self.received[index]
        return Webhook(secret).verify(got.body, got.headers)


@contextmanager
def backend(*answers: Answer) -> Iterator[Backend]:
    server = Backend(*answers)
    with serve(server.app) as url:
        server.url = url
        yield server


@contextmanager
def forwarding(
    tmp_path: Path, to: Backend, delivery: Delivery, **forward_settings: Any
) -> Iterator[tuple[Settings, Any]]:
    """A receiver whose only handler forwards to ``to`` with these ``FORWARD_*`` values."""
    settings = settings_for(
        tmp_path,
        sample_hosts=(delivery.host,),
        handler_max_attempts=forward_settings.pop("max_attempts", 5),
    )
    values: dict[str, Any] = {"url": to.hook, "secret": NEW_SECRET, **forward_settings}
    forwarder = Forwarder(ForwardSettings(_env_file=None, **values))  # type: ignore[call-arg]
    with running_receiver(settings, {HANDLER: forwarder.send}) as r:
        yield settings, r


def job_of(settings: Settings, task_id: str) -> Job | None:
    """The forward's job for this task (None until the image is stored)."""
    jobs: list[Job] = read_store(settings, lambda s: s.jobs_for(task_id))
    return next((j for j in jobs if j.handler == HANDLER), None)


def settled(settings: Settings, task_id: str, state: JobState) -> Job:
    def reached() -> Job | None:
        job = job_of(settings, task_id)
        return job if job is not None and job.state is state else None

    eventually(lambda: reached() is not None, timeout=20)
    job = reached()
    assert job is not None
    return job


def test_forward_is_signed_and_carries_the_stored_image(tmp_path: Path) -> None:
    image = jpeg_bytes()
    with delivery_server() as delivery, backend() as to:
        sample = delivery.add("a.jpg")
        with forwarding(tmp_path, to, delivery) as (settings, r):
            r.post(ready("t-ok", sample))
            settled(settings, "t-ok", JobState.DONE)
    document = to.verified(NEW_SECRET)
    assert document["type"] == "task.ready"
    data = document["data"]
    assert data["task_id"] == "t-ok"
    assert (data["status"], data["kind"]) == ("ready", "ready")
    assert data["error"] is None
    assert data["finetune_id"] is None
    assert data["metadata"] == {}
    stored = data["image"]
    assert stored["content_type"] == "image/jpeg"
    assert stored["size"] == len(image)
    assert stored["sha256"] == hashlib.sha256(image).hexdigest()
    assert Path(stored["location"]).read_bytes() == image
    assert "base64" not in stored  # FORWARD_IMAGE=url by default
    body = to.received[0].body.decode()
    assert delivery.url not in body  # BFL's signed sample URL is never passed on
    headers = to.received[0].headers
    assert headers["webhook-id"] == f"t-ok:{HANDLER}"
    assert headers["content-type"] == "application/json"


def test_rotation_signs_with_each_secret_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("FORWARD_SECRET", f"{OLD_SECRET}, {NEW_SECRET}")
    monkeypatch.setattr(forward, "_default", Forwarder())  # this test's FORWARD_* only
    with backend() as to:
        monkeypatch.setenv("FORWARD_URL", to.hook)
        settings = settings_for(tmp_path)
        with running_receiver(settings, {HANDLER: forward.send}) as r:
            r.post({"id": "t-err", "status": "Error", "error": "out of credits"})
            settled(settings, "t-err", JobState.DONE)
    signatures = to.received[0].headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures)
    for secret in (OLD_SECRET, NEW_SECRET):
        data = to.verified(secret)["data"]
        assert (data["task_id"], data["kind"], data["image"]) == ("t-err", "error", None)
        assert data["error"] == "out of credits"
    with pytest.raises(Exception, match="signature"):
        to.verified("whsec_" + base64.b64encode(b"some-other-key-00000000").decode())


def test_retry_after_a_500_keeps_the_webhook_id(tmp_path: Path) -> None:
    with delivery_server() as delivery, backend(Answer(500, {"retry-after": "1"})) as to:
        sample = delivery.add("a.jpg")
        with forwarding(tmp_path, to, delivery) as (settings, r):
            r.post(ready("t-retry", sample))
            job = settled(settings, "t-retry", JobState.DONE)
            runs: list[JobRun] = read_store(settings, lambda s: s.runs_for("t-retry"))
    assert job.attempts == 2
    first, second = to.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"t-retry:{HANDLER}"
    assert first.body == second.body  # the same event, byte for byte
    to.verified(NEW_SECRET, 0)
    to.verified(NEW_SECRET, 1)
    (failed,) = [run.error for run in runs if run.job_id == job.id and run.error]
    assert "500 Internal Server Error" in failed
    assert "Retry-After 1 s" in failed


def test_410_gone_is_dead_at_once_and_says_to_remove_the_endpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with delivery_server() as delivery, backend(Answer(410, body=b"endpoint retired")) as to:
        sample = delivery.add("a.jpg")
        with forwarding(tmp_path, to, delivery, max_attempts=5) as (settings, r):
            r.post(ready("t-gone", sample))
            job = settled(settings, "t-gone", JobState.DEAD)
            assert r.metric("bfl_hooks_dead_jobs") == 1
    assert job.attempts == 1
    assert len(to.received) == 1
    assert job.last_error is not None
    assert "410 Gone" in job.last_error
    assert "endpoint retired" in job.last_error
    assert "remove the endpoint" in job.last_error
    assert any("remove this endpoint" in m for m in caplog.messages)
    assert any("dead at once" in m for m in caplog.messages)


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    with delivery_server() as delivery, backend() as to:
        moved = Answer(302, {"location": f"{to.url}/elsewhere?token=hidden"})
        to.answers = [moved, moved]
        sample = delivery.add("a.jpg")
        with forwarding(tmp_path, to, delivery, max_attempts=2) as (settings, r):
            r.post(ready("t-moved", sample))
            job = settled(settings, "t-moved", JobState.DEAD)
    assert to.elsewhere_hits == 0
    assert len(to.received) == 2  # a failure, retried like any other
    assert job.last_error is not None
    assert "redirected (302)" in job.last_error
    assert "not followed" in job.last_error
    assert "hidden" not in job.last_error  # the target's query is not repeated


def test_an_unreachable_backend_is_retried_then_dead(tmp_path: Path) -> None:
    with backend() as to:
        closed = to.hook  # the backend stops: nothing listens on its port any more
    settings = settings_for(tmp_path, handler_max_attempts=2)
    values: dict[str, Any] = {"url": closed, "secret": NEW_SECRET}
    forwarder = Forwarder(ForwardSettings(_env_file=None, **values))  # type: ignore[call-arg]
    with running_receiver(settings, {HANDLER: forwarder.send}) as r:
        r.post({"id": "t-down", "status": "Error", "error": "x"})
        job = settled(settings, "t-down", JobState.DEAD)
    assert job.attempts == 2
    assert job.last_error is not None
    assert "ConnectError" in job.last_error


@pytest.mark.parametrize("cap", [1024 * 1024, 100])
def test_inline_image_under_and_over_the_cap(tmp_path: Path, cap: int) -> None:
    image = jpeg_bytes(64)
    assert 100 < len(image) < 1024 * 1024
    with delivery_server() as delivery, backend() as to:
        sample = delivery.add("a.jpg", Sample(body=image))
        with forwarding(tmp_path, to, delivery, image="inline", inline_max_bytes=cap) as (s, r):
            r.post(ready("t-inline", sample))
            settled(s, "t-inline", JobState.DONE)
    stored = to.verified(NEW_SECRET)["data"]["image"]
    assert stored["sha256"] == hashlib.sha256(image).hexdigest()
    if cap > len(image):
        assert base64.b64decode(stored["base64"]) == image
        assert "omitted" not in stored
    else:
        assert "base64" not in stored
        assert "FORWARD_INLINE_MAX_BYTES (100)" in stored["omitted"]
        assert str(len(image)) in stored["omitted"]


def test_missing_forward_url_is_dead_with_reason_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORWARD_URL", raising=False)
    monkeypatch.setenv("FORWARD_SECRET", NEW_SECRET)
    monkeypatch.setattr(forward, "_default", Forwarder())
    settings = settings_for(tmp_path, handler_max_attempts=5)
    with running_receiver(settings, {HANDLER: forward.send}) as r:
        r.post({"id": "t-nourl", "status": "Error", "error": "x"})
        job = settled(settings, "t-nourl", JobState.DEAD)
        assert r.client.get("/healthz").status_code == 200
        assert r.post({"id": "t-next", "status": "Pending"}).status_code == 200
    assert job.attempts == 1
    assert job.last_error is not None
    assert "FORWARD_URL is not set" in job.last_error


def test_bad_settings_are_clear_and_never_echo_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    typo = "whsec_this-is!not@base64-but-still-secret"
    monkeypatch.setenv("FORWARD_SECRET", f"{NEW_SECRET},{typo}")
    monkeypatch.setenv("FORWARD_URL", "ftp://example.invalid/hook")
    with pytest.raises(ForwardConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "FORWARD_SECRET" in message
    assert "FORWARD_URL" in message
    assert "still-secret" not in message
    assert NEW_SECRET.removeprefix("whsec_") not in message
    # Unpadded base64 and a missing prefix are accepted, as the official libraries accept them.
    monkeypatch.setenv("FORWARD_URL", "https://example.invalid/hook")
    monkeypatch.setenv("FORWARD_SECRET", NEW_SECRET.rstrip("="))
    assert len(load_settings().keys) == 1


def test_no_secret_in_logs_errors_show_or_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)
    answers = (Answer(503, {"retry-after": formatdate(usegmt=True)}), Answer(410))
    with delivery_server() as delivery, backend(*answers) as to:
        sample = delivery.add("a.jpg")
        with forwarding(tmp_path, to, delivery, secret=f"{OLD_SECRET},{NEW_SECRET}") as (s, r):
            r.post(ready("t-quiet", sample))
            job = settled(s, "t-quiet", JobState.DEAD)
            metrics = r.client.get("/metrics").text
            runs: list[JobRun] = read_store(s, lambda st: st.runs_for("t-quiet"))
    monkeypatch.setenv("RECEIVER_DATABASE_URL", s.database_url)
    shown = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["show", "t-quiet", "--json"])
    assert shown.exit_code == 0, shown.output
    assert job.attempts == 2
    outputs = [
        caplog.text,
        metrics,
        shown.output,
        *(f"{run.error} {run.traceback}" for run in runs),
    ]
    assert "410" in shown.output
    for secret in (OLD_SECRET, NEW_SECRET):
        raw = secret.removeprefix("whsec_")
        for text in outputs:
            assert raw not in text
            assert base64.b64decode(raw).decode() not in text


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_800_000_000.0
    assert retry_after("30", now) == 30.0
    assert retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90.0)
    assert retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None


def test_a_429_raises_retry_later_carrying_the_wait() -> None:
    event = Event(
        task_id="t-busy",
        status=Status.ERROR,
        image=None,
        metadata={"user": 7},
        payload={},
        attempt=1,
        idempotency_key=f"t-busy:{HANDLER}",
        error="nope",
    )
    with backend(Answer(429, {"retry-after": "7"}, b"slow down")) as to:
        values: dict[str, Any] = {"url": to.hook, "secret": NEW_SECRET}
        forwarder = Forwarder(ForwardSettings(_env_file=None, **values))  # type: ignore[call-arg]
        with pytest.raises(RetryLater) as caught:
            anyio.run(forwarder.send, event)
    assert caught.value.retry_after == 7.0
    assert "429 Too Many Requests: slow down" in str(caught.value)
    assert to.verified(NEW_SECRET)["data"]["metadata"] == {"user": 7}
