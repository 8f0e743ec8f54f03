"""Webhook delivery: wait for the task to end, then POST it, with retries and faults.

Headers: ``X-Webhook-Secret: <webhook_secret>`` as BFL documents, and with
``sign_webhooks`` also ``X-BFL-Signature``, made by the receiver's own ``sign``.
A delivery is an attempt plus one retry per ``webhook_retry_delays`` entry (BFL's webhook
guide: 1, 5 and 30 s); any 2xx within ``webhook_timeout_seconds`` (the guide: 30 s) ends it.
Redirects are not followed: a 3xx must not lead a webhook off the allowlist.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx

from receiver.verify import sign
from sandbox.results import webhook_body
from sandbox.runtime import Runtime
from sandbox.tasks import Task
from submitter.models import Status

log = logging.getLogger("sandbox.webhooks")
USER_AGENT = "bfl-sandbox-webhooks"


def webhook_headers(task: Task, body: bytes, signed: bool) -> dict[str, str]:
    """The headers of ``task``'s webhook; wrong-secret spoils both secret and signature."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    secret = task.webhook_secret
    if "wrong-secret" in task.faults:
        secret = f"{secret or ''}-not-the-secret"
    if secret is not None:
        headers["X-Webhook-Secret"] = secret
        if signed:
            headers["X-BFL-Signature"] = sign(body, secret)
    return headers


async def notify(runtime: Runtime, task: Task) -> None:
    """Background job per task with a webhook_url: sleep until it ends, then deliver."""
    assert task.webhook_url is not None
    settings = runtime.settings
    delay = task.faults.seconds("delay-webhook", settings.fault_delay_seconds)
    await asyncio.sleep(max(0.0, task.done_at - time.time()) + delay)
    if task.outcome is not Status.READY and not settings.webhook_on_failure:
        return
    if "drop-webhook" in task.faults:
        task.webhook_attempts.append("dropped (fault)")
        log.info("webhook for %s dropped (fault)", task.id)
        return
    body = json.dumps(webhook_body(runtime, task)).encode()
    headers = webhook_headers(task, body, settings.sign_webhooks)
    for _ in range(2 if "duplicate-webhook" in task.faults else 1):
        await deliver(
            runtime.client,
            task,
            body,
            headers,
            settings.webhook_retry_delays,
            timeout=settings.webhook_timeout_seconds,
        )


async def deliver(
    client: httpx.AsyncClient,
    task: Task,
    body: bytes,
    headers: dict[str, str],
    retry_delays: tuple[float, ...],
    *,
    timeout: float,  # noqa: ASYNC109 - bounds each attempt, not the whole delivery
) -> bool:
    """POST ``body`` until a 2xx or the retries run out; True when it was taken.

    An attempt fails when no 2xx has come ``timeout`` seconds after it began, however the
    time went (connecting, a slow answer, a body trickling in)."""
    assert task.webhook_url is not None
    for attempt, delay in enumerate((0.0, *retry_delays), start=1):
        await asyncio.sleep(delay)
        try:
            async with asyncio.timeout(timeout):
                response = await client.post(task.webhook_url, content=body, headers=headers)
        except TimeoutError:
            outcome = f"attempt {attempt}: no answer within {timeout:g} s"
        except httpx.HTTPError as exc:
            outcome = f"attempt {attempt}: {type(exc).__name__}"
        else:
            outcome = f"attempt {attempt}: HTTP {response.status_code}"
            if response.is_success:
                task.webhook_attempts.append(outcome)
                return True
        task.webhook_attempts.append(outcome)
        log.warning("webhook for %s to %s failed (%s)", task.id, task.webhook_url, outcome)
    return False
