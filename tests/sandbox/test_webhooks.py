"""Webhooks really arrive: shapes, secret and signature, retries, and every webhook fault."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.verify import VerificationError, verify
from sandbox import SandboxSettings, create_app
from tests.sandbox.conftest import KEY, Sink, StartSandbox, settings
from tests.servers import serve, wait_until

SECRET = "s3cret-for-tests"


@pytest.fixture(scope="module")
def sandbox_b() -> Iterator[str]:
    """A sandbox sending shape B, signed."""
    with serve(create_app(settings(webhook_shape="b", sign_webhooks=True))) as url:
        yield url


def submit(
    client: httpx.Client,
    base: str,
    hook: str,
    prompt: str = "a webhook",
    fault: str | None = None,
    **body: Any,
) -> dict[str, Any]:
    payload = {"prompt": prompt, "webhook_url": hook, "webhook_secret": SECRET, **body}
    headers = {**KEY, **({"X-Sandbox-Fault": fault} if fault else {})}
    response = client.post(f"{base}/v1/flux-dev", json=payload, headers=headers)
    assert response.status_code == 200, response.text
    submitted: dict[str, Any] = response.json()
    return submitted


class SlowSink:
    """A webhook receiver that takes ``delays[n]`` seconds to answer its n-th call (200)."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.received: list[bytes] = []
        self.answered: list[int] = []
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        n = len(self.received)
        self.received.append(await request.body())
        await anyio.sleep(self.delays[n] if n < len(self.delays) else 0.0)
        self.answered.append(n)
        return Response(status_code=200)


def bodies(sink: Sink, name: str) -> list[dict[str, Any]]:
    return [json.loads(call.body) for call in sink.calls(name)]


def test_ready_webhook_has_shape_a_and_the_secret(
    sandbox: str, client: httpx.Client, sink: Sink
) -> None:
    submitted = submit(client, sandbox, sink.hook("a"))
    wait_until(lambda: sink.calls("a"))
    call = sink.calls("a")[0]
    assert call.headers["x-webhook-secret"] == SECRET
    assert call.headers["content-type"] == "application/json"
    assert "x-bfl-signature" not in call.headers  # off by default
    body = bodies(sink, "a")[0]
    assert set(body) == {"id", "status", "result", "timestamp"}  # as in BFL's webhook guide
    assert body["id"] == submitted["id"]
    assert body["status"] == "Ready"
    ended = datetime.fromisoformat(body["timestamp"])  # ISO 8601, in UTC
    assert ended.utcoffset() == timedelta(0)
    assert abs(ended.timestamp() - time.time()) < 60
    assert body["result"]["sample"].startswith(f"{sandbox}/delivery/")
    assert client.get(body["result"]["sample"]).status_code == 200
    # What the webhook says, get_result says too.
    assert client.get(submitted["polling_url"]).json()["result"] == body["result"]
    verify(call.body, call.headers, [SECRET])


def test_shape_b_and_signature(sandbox_b: str, client: httpx.Client, sink: Sink) -> None:
    submitted = submit(client, sandbox_b, sink.hook("b"))
    wait_until(lambda: sink.calls("b"))
    call = sink.calls("b")[0]
    body = bodies(sink, "b")[0]
    assert body["task_id"] == submitted["id"]
    assert body["status"] == "SUCCESS"
    assert body["result"]["sample"]
    assert call.headers["x-bfl-signature"].startswith("sha256=")
    # The receiver's own verify accepts the signature alone.
    verify(call.body, {"x-bfl-signature": call.headers["x-bfl-signature"]}, [SECRET])


def test_without_a_secret_no_secret_header_is_sent(
    sandbox: str, client: httpx.Client, sink: Sink
) -> None:
    hook = sink.hook("no-secret")
    client.post(f"{sandbox}/v1/flux-dev", json={"webhook_url": hook}, headers=KEY)
    wait_until(lambda: sink.calls("no-secret"))
    assert "x-webhook-secret" not in sink.calls("no-secret")[0].headers


def test_failed_delivery_is_retried_on_the_schedule(
    start_sandbox: StartSandbox, client: httpx.Client, sink: Sink
) -> None:
    base = start_sandbox(webhook_retry_delays=(0.2, 0.4, 5.0))
    submit(client, base, sink.hook("retry", fail_first=2))
    wait_until(lambda: len(sink.calls("retry")) == 3)
    calls = sink.calls("retry")
    assert calls[1].at - calls[0].at >= 0.19
    assert calls[2].at - calls[1].at >= 0.39
    time.sleep(0.3)
    assert len(sink.calls("retry")) == 3  # the third was taken: no more retries
    assert calls[0].body == calls[2].body


def test_the_defaults_are_the_webhook_guides_schedule_and_timeout() -> None:
    defaults = SandboxSettings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.webhook_retry_delays == (1.0, 5.0, 30.0)
    assert defaults.webhook_timeout_seconds == 30.0


def test_a_receiver_slower_than_the_timeout_gets_the_webhook_again(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    slow = SlowSink(delays=[1.5, 0.0])  # the first answer comes after the sandbox gave up
    with serve(slow.app) as url:
        base = start_sandbox(webhook_timeout_seconds=0.5, webhook_retry_delays=(0.1, 0.1))
        submit(client, base, f"{url}/hook")
        wait_until(lambda: len(slow.answered) == 2, timeout=15)
        time.sleep(0.4)
    assert len(slow.received) == 2  # the slow attempt, and one retry that was taken in time
    assert slow.received[0] == slow.received[1]


def test_a_receiver_that_keeps_failing_gets_every_retry_then_nothing(
    sandbox: str, client: httpx.Client, sink: Sink
) -> None:
    submit(client, sandbox, sink.hook("down", fail_first=100))
    wait_until(lambda: len(sink.calls("down")) == 3)  # one attempt, two retries (FAST)
    time.sleep(0.3)
    assert len(sink.calls("down")) == 3
    assert client.get(f"{sandbox}/healthz").status_code == 200


def test_an_unreachable_receiver_does_not_hurt_the_sandbox(
    sandbox: str, client: httpx.Client
) -> None:
    with serve(Sink().app) as gone:
        pass  # a loopback port that nobody listens on any more
    submitted = submit(client, sandbox, f"{gone}/hook/x")
    time.sleep(0.4)
    assert client.get(submitted["polling_url"]).json()["status"] == "Ready"


@pytest.mark.parametrize("how", ["header", "prompt", "settings"])
def test_drop_webhook_sends_nothing(
    sandbox: str, start_sandbox: StartSandbox, client: httpx.Client, sink: Sink, how: str
) -> None:
    base = start_sandbox(faults=("drop-webhook",)) if how == "settings" else sandbox
    prompt = "a cat [sandbox:drop-webhook]" if how == "prompt" else "a cat"
    fault = "drop-webhook" if how == "header" else None
    submitted = submit(client, base, sink.hook(f"drop-{how}"), prompt=prompt, fault=fault)
    wait_until(lambda: client.get(submitted["polling_url"]).json()["status"] == "Ready")
    time.sleep(0.3)
    assert sink.calls(f"drop-{how}") == []


def test_duplicate_webhook_is_delivered_twice(
    sandbox: str, client: httpx.Client, sink: Sink
) -> None:
    submit(client, sandbox, sink.hook("twice"), fault="duplicate-webhook")
    wait_until(lambda: len(sink.calls("twice")) == 2)
    first, second = sink.calls("twice")
    assert first.body == second.body


def test_delay_webhook_arrives_that_much_after_the_task_ended(
    sandbox: str, client: httpx.Client, sink: Sink
) -> None:
    submitted = submit(client, sandbox, sink.hook("late"), prompt="[sandbox:delay-webhook=0.8]")
    wait_until(lambda: client.get(submitted["polling_url"]).json()["status"] == "Ready")
    ready_at = time.monotonic()
    wait_until(lambda: sink.calls("late"))
    assert sink.calls("late")[0].at - ready_at >= 0.6


def test_early_webhook_comes_before_get_result_can_see_the_task(
    sandbox: str, client: httpx.Client, sink: Sink
) -> None:
    submitted = submit(client, sandbox, sink.hook("early"), fault="early-webhook=1.0")
    wait_until(lambda: sink.calls("early"))
    webhook = bodies(sink, "early")[0]
    assert webhook["status"] == "Ready"
    assert client.get(submitted["polling_url"]).json()["status"] == "Task not found"
    assert client.get(webhook["result"]["sample"]).status_code == 200  # the blob is there
    wait_until(lambda: client.get(submitted["polling_url"]).json()["status"] == "Ready")


def test_wrong_secret_fails_the_receivers_verification(
    sandbox_b: str, client: httpx.Client, sink: Sink
) -> None:
    submit(client, sandbox_b, sink.hook("wrong"), fault="wrong-secret")
    wait_until(lambda: sink.calls("wrong"))
    call = sink.calls("wrong")[0]
    assert call.headers["x-webhook-secret"] != SECRET
    with pytest.raises(VerificationError):
        verify(call.body, call.headers, [SECRET])


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("error", "Error"),
        ("request-moderated", "Request Moderated"),
        ("content-moderated", "Content Moderated"),
    ],
)
def test_failed_tasks_send_a_webhook_in_both_shapes(
    sandbox: str, sandbox_b: str, client: httpx.Client, sink: Sink, fault: str, status: str
) -> None:
    submit(client, sandbox, sink.hook(f"{fault}-a"), fault=fault)
    submit(client, sandbox_b, sink.hook(f"{fault}-b"), fault=fault)
    wait_until(lambda: sink.calls(f"{fault}-a") and sink.calls(f"{fault}-b"))
    shape_a, shape_b = bodies(sink, f"{fault}-a")[0], bodies(sink, f"{fault}-b")[0]
    # Shape A as BFL's webhook guide shows a failure: a code, a readable message, a time.
    assert set(shape_a) == {"id", "status", "error", "message", "timestamp"}
    assert shape_a["status"] == status
    assert shape_a["error"] == (
        "generation_failed" if fault == "error" else "content_policy_violation"
    )
    assert shape_a["message"].startswith("sandbox: ")
    assert datetime.fromisoformat(shape_a["timestamp"]).tzinfo is not None
    assert shape_b["status"] == "FAILED"
    assert shape_b["error"] == status


def test_webhook_on_failure_off_sends_only_ready(
    start_sandbox: StartSandbox, client: httpx.Client, sink: Sink
) -> None:
    base = start_sandbox(webhook_on_failure=False)
    hook = sink.hook("only-ready")
    failed = submit(client, base, hook, fault="error")
    submit(client, base, hook)
    wait_until(lambda: sink.calls("only-ready"))
    time.sleep(0.3)
    assert [b["status"] for b in bodies(sink, "only-ready")] == ["Ready"]
    assert client.get(failed["polling_url"]).json()["status"] == "Error"
