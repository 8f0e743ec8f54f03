"""The receiver end to end: real uvicorn, real delivery server, real SQLite, real files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from receiver import Event, on
from receiver.store import JobState
from receiver.verify import derive_secret, sign
from tests.support import (
    SECRET,
    Recorder,
    Sample,
    as_handler,
    delivery_server,
    eventually,
    jpeg_bytes,
    png_bytes,
    read_store,
    ready,
    running_receiver,
    settings_for,
)


def test_ready_webhook_stores_image_and_runs_handler(tmp_path: Path) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        image = jpeg_bytes()
        url = delivery.add("a.jpg", Sample(body=image))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            resp = r.post(ready("task-1", url))
            assert resp.status_code == 200
            assert resp.json() == {"task_id": "task-1", "outcome": "new"}
            eventually(lambda: len(rec.events) == 1)
            event = rec.events[0]
            assert event.task_id == "task-1"
            assert event.status == "ready"
            assert event.image is not None
            assert event.image.sha256 == hashlib.sha256(image).hexdigest()
            assert event.image.size == len(image)
            assert event.image.content_type == "image/jpeg"
            assert Path(event.image.location).read_bytes() == image
            assert rec.images[0] == image
            assert event.attempt == 1
            assert event.idempotency_key == "task-1:rec"
            assert event.payload["result"]["seed"] == 1
            assert r.metric("bfl_hooks_downloads_total", outcome="ok") == 1
            assert r.metric("bfl_hooks_download_bytes_total") == len(image)
            assert r.metric("bfl_hooks_handler_runs_total", handler="rec", outcome="ok") == 1


def test_duplicate_delivery_runs_handler_once(tmp_path: Path) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        url = delivery.add("a.jpg")
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            outcomes = [r.post(ready("dup", url)).json()["outcome"] for _ in range(3)]
            assert outcomes == ["new", "duplicate", "duplicate"]
            eventually(lambda: len(rec.events) == 1)
            eventually(lambda: r.metric("bfl_hooks_queue_depth") == 0)
            assert rec.task_ids() == ["dup"]
            assert delivery.hits == ["a.jpg"]
            assert r.metric("bfl_hooks_webhook_duplicates_total") == 2
            event = read_store(settings, lambda s: s.get_event("dup"))
            assert event.deliveries == 3


def test_shape_b_payload_is_accepted(tmp_path: Path) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        url = delivery.add("b.png", Sample(body=png_bytes(), content_type="image/png"))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            body = {"task_id": "b-1", "status": "SUCCESS", "result": {"sample": url}, "error": None}
            assert r.post(body).status_code == 200
            eventually(lambda: len(rec.events) == 1)
            assert rec.events[0].status == "ready"
            assert rec.events[0].image is not None
            assert rec.events[0].image.content_type == "image/png"


def test_pending_then_ready_dispatches_once_and_late_pending_changes_nothing(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        url = delivery.add("p.jpg")
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            assert (
                r.post({"id": "p", "status": "Pending", "progress": 0.5}).json()["outcome"]
                == "progress"
            )
            assert r.post(ready("p", url)).json()["outcome"] == "new"
            assert r.post({"id": "p", "status": "Pending"}).json()["outcome"] == "duplicate"
            eventually(lambda: len(rec.events) == 1)
            event = read_store(settings, lambda s: s.get_event("p"))
            assert event.status == "ready"


def test_failures_dispatch_without_image_and_on_filters(tmp_path: Path) -> None:
    seen: dict[str, list[str]] = {"ready": [], "errors": [], "moderated": [], "all": []}

    @on("ready")
    async def only_ready(event: Event) -> None:
        seen["ready"].append(event.task_id)

    @on("error")
    async def only_errors(event: Event) -> None:
        assert event.image is None
        seen["errors"].append(f"{event.task_id}:{event.error}")

    @on("moderated")
    async def only_moderated(event: Event) -> None:
        seen["moderated"].append(event.task_id)

    async def everything(event: Event) -> None:
        seen["all"].append(event.task_id)

    handlers = {"r": only_ready, "e": only_errors, "m": only_moderated, "a": everything}
    with running_receiver(settings_for(tmp_path), handlers) as r:
        r.post({"id": "err", "status": "Error", "error": "GPU on fire"})
        r.post({"task_id": "fail", "status": "FAILED", "error": "boom"})
        r.post({"id": "mod1", "status": "Request Moderated"})
        r.post({"id": "mod2", "status": "Content Moderated"})
        r.post({"id": "gone", "status": "Task not found"})
        eventually(lambda: len(seen["all"]) == 5)
        eventually(lambda: len(seen["errors"]) == 3 and len(seen["moderated"]) == 2)
        assert seen["ready"] == []
        assert sorted(seen["errors"]) == ["err:GPU on fire", "fail:boom", "gone:None"]
        assert sorted(seen["moderated"]) == ["mod1", "mod2"]


def test_unknown_status_is_recorded_not_dispatched(tmp_path: Path) -> None:
    rec = Recorder()
    settings = settings_for(tmp_path)
    with running_receiver(settings, {"rec": as_handler(rec)}) as r:
        resp = r.post({"id": "weird", "status": "Sparkling"})
        assert resp.status_code == 200
        assert resp.json()["outcome"] == "progress"
    event = read_store(settings, lambda s: s.get_event("weird"))
    assert event.status == "unknown"
    assert event.raw_status == "Sparkling"
    assert read_store(settings, lambda s: s.jobs_for("weird")) == []
    assert rec.events == []


@pytest.mark.parametrize(
    ("secret", "extra", "why"),
    [
        (None, {}, "missing"),
        ("wrong-secret", {}, "wrong"),
        ("", {}, "empty"),
        (SECRET + "x", {}, "longer"),
        (None, {"x-bfl-signature": "sha256=" + "0" * 64}, "bad signature"),
        (None, {"x-bfl-signature": "garbage"}, "garbage signature"),
    ],
)
def test_bad_secret_is_refused_and_nothing_recorded(
    tmp_path: Path, secret: str | None, extra: dict[str, str], why: str
) -> None:
    settings = settings_for(tmp_path)
    with running_receiver(settings) as r:
        resp = r.post(
            ready("intruder", "https://delivery-eu1.bfl.ai/x"), secret=secret, headers=extra
        )
        assert resp.status_code == 401, why
        assert SECRET not in resp.text
        assert r.metric("bfl_hooks_webhooks_total", outcome="unauthorized") == 1
    assert read_store(settings, lambda s: s.list_events()) == []


def test_rotated_secrets_and_hmac_signature_are_accepted(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, webhook_secret="old-secret, new-secret")
    with running_receiver(settings) as r:
        assert r.post({"id": "one", "status": "Error"}, secret="old-secret").status_code == 200
        assert r.post({"id": "two", "status": "Error"}, secret="new-secret").status_code == 200
        body = json.dumps({"id": "three", "status": "Error"}).encode()
        signed = r.post(body, secret=None, headers={"x-bfl-signature": sign(body, "new-secret")})
        assert signed.status_code == 200
        # A signature of another body does not authenticate this one.
        forged = r.post(
            json.dumps({"id": "four", "status": "Error"}).encode(),
            secret=None,
            headers={"x-bfl-signature": sign(body, "new-secret")},
        )
        assert forged.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"status": "Ready"}',
        b'{"id": 42, "status": "Ready"}',
        b'{"id": "", "status": "Ready"}',
        b'{"id": "\\u0000evil", "status": "Ready"}',
        json.dumps({"id": "x" * 500, "status": "Ready"}).encode(),
        b"\xff\xfe\x00garbage",
        '{"id": "utf16", "status": "Ready"}'.encode("utf-16"),
    ],
)
def test_malformed_body_is_400_and_nothing_recorded(tmp_path: Path, body: bytes) -> None:
    settings = settings_for(tmp_path)
    with running_receiver(settings) as r:
        resp = r.post(body)
        assert resp.status_code == 400
        assert "error" in resp.json()
    assert read_store(settings, lambda s: s.list_events()) == []


def test_oversized_body_is_413_declared_or_streamed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, max_body_bytes=1024)
    big = json.dumps({"id": "big", "status": "Error", "pad": "x" * 4096}).encode()
    with running_receiver(settings) as r:
        assert r.post(big).status_code == 413

        def stream() -> httpx.SyncByteStream:
            class Chunks(httpx.SyncByteStream):
                def __iter__(self):  # type: ignore[no-untyped-def]
                    for i in range(0, len(big), 256):
                        yield big[i : i + 256]

            return Chunks()

        resp = r.client.post(
            "/webhooks/bfl", content=stream(), headers={"x-webhook-secret": SECRET}
        )
        assert resp.status_code == 413
        assert r.metric("bfl_hooks_webhooks_total", outcome="too_large") == 2
    assert read_store(settings, lambda s: s.list_events()) == []


def test_health_readiness_and_metrics(tmp_path: Path) -> None:
    with running_receiver(settings_for(tmp_path)) as r:
        assert r.client.get("/healthz").json() == {"ok": True}
        assert r.client.get("/readyz").json() == {"ok": True}
        text = r.client.get("/metrics").text
        for name in (
            "bfl_hooks_webhooks_total",
            "bfl_hooks_ack_seconds",
            "bfl_hooks_queue_depth",
            "bfl_hooks_dead_jobs",
            "bfl_hooks_download_seconds",
            "bfl_hooks_sample_url_seconds_left",
        ):
            assert name in text
        assert r.client.get("/webhooks/bfl").status_code == 405


def _dead_reason(settings: object, task_id: str) -> str:
    jobs = read_store(settings, lambda s: s.jobs_for(task_id))  # type: ignore[arg-type]
    assert [j.state for j in jobs] == [JobState.DEAD]
    return str(jobs[0].last_error)


def _wait_dead(r: object, settings: object, n: int = 1) -> None:
    eventually(lambda: r.metric("bfl_hooks_dead_jobs") == n)  # type: ignore[attr-defined]


def test_off_allowlist_host_is_never_contacted(tmp_path: Path) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        url = delivery.add("a.jpg")
        settings = settings_for(tmp_path)  # default allowlist: BFL's delivery hosts only
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            r.post(ready("ssrf", url))
            _wait_dead(r, settings)
        assert delivery.hits == []
    assert (
        _dead_reason(settings, "ssrf")
        == f"refused: sample host {delivery.host!r} is not in RECEIVER_SAMPLE_HOSTS"
    )
    assert rec.events == []


def test_redirect_off_the_allowlist_is_refused(tmp_path: Path) -> None:
    with delivery_server() as evil, delivery_server() as delivery:
        target = evil.add("x.jpg")
        url = delivery.add("hop.jpg", Sample(redirect=target))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings) as r:
            r.post(ready("hop", url))
            _wait_dead(r, settings)
        assert delivery.hits == ["hop.jpg"]
        assert evil.hits == []
    assert (
        _dead_reason(settings, "hop")
        == f"refused: sample host {evil.host!r} is not in RECEIVER_SAMPLE_HOSTS"
    )


def test_redirect_within_the_allowlist_is_followed(tmp_path: Path) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        final = delivery.add("final.jpg")
        url = delivery.add("start.jpg", Sample(redirect=final))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            r.post(ready("hops", url))
            eventually(lambda: len(rec.events) == 1)
        assert delivery.hits == ["start.jpg", "final.jpg"]


@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_sample_is_aborted(tmp_path: Path, chunked: bool) -> None:
    with delivery_server() as delivery:
        url = delivery.add("big.jpg", Sample(body=jpeg_bytes(512), chunked=chunked))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,), max_sample_bytes=1000)
        with running_receiver(settings) as r:
            r.post(ready("big", url))
            _wait_dead(r, settings)
    assert "cap" in _dead_reason(settings, "big")
    assert list((tmp_path / "samples").rglob("*.jpg")) == []
    assert list((tmp_path / "samples" / ".staging").iterdir()) == []


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (Sample(body=b"<html>hi</html>", content_type="text/html"), "not an image content type"),
        (Sample(body=b"%PDF-1.7 ...", content_type="image/jpeg"), "does not match"),
        (Sample(body=png_bytes(), content_type="image/jpeg"), "looks like image/png"),
        (Sample(body=b"", content_type="image/png"), "does not match"),
    ],
)
def test_wrong_content_is_refused(tmp_path: Path, sample: Sample, reason: str) -> None:
    with delivery_server() as delivery:
        url = delivery.add("s", sample)
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings) as r:
            r.post(ready("wrong", url))
            _wait_dead(r, settings)
    assert reason in _dead_reason(settings, "wrong")


def test_expired_url_403_ends_dead_with_reason(tmp_path: Path) -> None:
    with delivery_server() as delivery:
        url = delivery.add("old.jpg", Sample(status=403))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings) as r:
            r.post(ready("expired", url))
            _wait_dead(r, settings)
            assert r.metric("bfl_hooks_downloads_total", outcome="dead") == 1
    assert "expired or invalid" in _dead_reason(settings, "expired")
    assert delivery.hits == ["old.jpg"]


def test_url_whose_se_has_passed_is_not_fetched(tmp_path: Path) -> None:
    with delivery_server() as delivery:
        url = delivery.add("late.jpg") + "?se=2020-01-01T00%3A00%3A00Z&sp=r&sig=x"
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings) as r:
            r.post(ready("late", url))
            _wait_dead(r, settings)
        assert delivery.hits == []
    assert "expired" in _dead_reason(settings, "late")


def test_transient_failures_are_retried_within_the_deadline(tmp_path: Path) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        url = delivery.add("flaky.jpg", Sample(fail_first=2))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            r.post(ready("flaky", url))
            eventually(lambda: len(rec.events) == 1, timeout=15)
            assert r.metric("bfl_hooks_downloads_total", outcome="retry") == 2
        assert delivery.hits == ["flaky.jpg"] * 3


def test_transient_failures_past_the_deadline_end_dead(tmp_path: Path) -> None:
    with delivery_server() as delivery:
        url = delivery.add("down.jpg", Sample(status=503))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,), sample_ttl_seconds=2)
        with running_receiver(settings) as r:
            r.post(ready("down", url))
            _wait_dead(r, settings)
    # The next retry would land past the deadline, or it started just after it, or it
    # started with a sliver of time left and was cut at the deadline: all three say so.
    reason = _dead_reason(settings, "down")
    assert any(
        says in reason
        for says in (
            "gave up before the URL expired",
            "expired before the download",
            "after the download started",
        )
    ), reason


def test_failing_handler_is_retried_then_dead_then_replayed(tmp_path: Path) -> None:
    flaky = Recorder(fail_times=3)
    fine = Recorder()
    settings = settings_for(tmp_path, handler_max_attempts=3)
    handlers = {"flaky": as_handler(flaky), "fine": as_handler(fine)}
    with running_receiver(settings, handlers) as r:
        r.post({"id": "h", "status": "Error"})
        _wait_dead(r, settings)
        assert [e.attempt for e in flaky.events] == [1, 2, 3]
        assert len(fine.events) == 1  # a failing handler does not hold the others back
        assert r.metric("bfl_hooks_handler_runs_total", handler="flaky", outcome="retry") == 2
        assert r.metric("bfl_hooks_handler_runs_total", handler="flaky", outcome="dead") == 1
        runs = read_store(settings, lambda s: s.runs_for("h"))
        assert [(x.outcome, x.error) for x in runs if x.outcome != "ok"] == [
            ("retry", "RuntimeError: handler failed on purpose"),
            ("retry", "RuntimeError: handler failed on purpose"),
            ("dead", "RuntimeError: handler failed on purpose"),
        ]
        assert read_store(settings, lambda s: s.replay("h")) == 1
        eventually(lambda: len(flaky.events) == 4)
        eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 0)
        assert flaky.events[-1].attempt == 1
        assert len(fine.events) == 1


def test_per_task_secret_authenticates_its_own_task_only(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    read_store(settings, lambda s: s.prepare_submission("ref1", "flux-dev", {"chat": 9}))
    read_store(settings, lambda s: s.bind_submission("ref1", "mine", None))
    task_secret = derive_secret(SECRET, "ref1")
    with running_receiver(settings) as r:
        forged = r.client.post(
            "/webhooks/bfl?ref=ref1",
            json={"id": "someone-else", "status": "Error"},
            headers={"x-webhook-secret": task_secret},
        )
        assert forged.status_code == 401
        wrong_ref = r.client.post(
            "/webhooks/bfl?ref=other",
            json={"id": "mine", "status": "Error"},
            headers={"x-webhook-secret": task_secret},
        )
        assert wrong_ref.status_code == 401
        own = r.client.post(
            "/webhooks/bfl?ref=ref1",
            json={"id": "mine", "status": "Error"},
            headers={"x-webhook-secret": task_secret},
        )
        assert own.status_code == 200
    assert read_store(settings, lambda s: s.get_event("someone-else")) is None
    event = read_store(settings, lambda s: s.get_event("mine"))
    assert event.metadata == {"chat": 9}
