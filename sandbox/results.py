"""What get_result answers and what a webhook carries, built from one task."""

from __future__ import annotations

import time
from typing import Any

from sandbox.delivery import signed_url
from sandbox.runtime import Runtime
from sandbox.tasks import ERROR_DETAILS, Task
from submitter.models import Status

#: Shape B's words for the statuses (seen in public receivers; BFL does not document it).
SHAPE_B_STATUS = {Status.READY: "SUCCESS", Status.PENDING: "PENDING"}


def polling_url(task: Task) -> str:
    """get_result on the region host ``task`` lives on (a path prefix on loopback)."""
    return f"{task.base_url}/{task.region}/v1/get_result?id={task.id}"


def result_of(runtime: Runtime, task: Task) -> dict[str, Any]:
    """``result`` of a Ready task: the signed sample URL and what made it."""
    if task.render is None:  # a finetune's training
        return {"finetune_id": task.finetune_id}
    expires = task.done_at + runtime.settings.delivery_ttl_seconds
    return {
        "sample": signed_url(task, runtime.signing_key, expires),
        "prompt": task.render.prompt,
        "seed": task.render.seed,
        "start_time": round(task.created, 3),
        "end_time": round(task.done_at, 3),
        "duration": round(task.duration, 3),
    }


def result_body(runtime: Runtime, task_id: str, task: Task | None, now: float) -> dict[str, Any]:
    """The spec's ResultResponse for ``task_id`` at ``now``."""
    status, progress = task.status(now) if task is not None else (Status.NOT_FOUND, None)
    body: dict[str, Any] = {
        "id": task_id,
        "status": status.value,
        "result": None,
        "progress": progress,
        "details": ERROR_DETAILS.get(status),
        "preview": None,
    }
    if task is not None and status is Status.READY:
        body["result"] = result_of(runtime, task)
    return body


#: A failure's ``error`` code and ``message`` in a webhook, as BFL's webhook guide shows them
#: (``content_policy_violation`` is the guide's example; the others follow its style).
WEBHOOK_ERRORS: dict[Status, tuple[str, str]] = {
    Status.ERROR: ("generation_failed", "sandbox: the generation failed"),
    Status.REQUEST_MODERATED: ("content_policy_violation", "sandbox: the request was moderated"),
    Status.CONTENT_MODERATED: ("content_policy_violation", "sandbox: the image was moderated"),
}


def iso_time(at: float) -> str:
    """``2026-05-01T08:46:02Z``: ISO 8601 in UTC, to the second, as in BFL's webhook guide."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _failure(status: Status, training: bool) -> dict[str, str]:
    code, message = WEBHOOK_ERRORS.get(status, ("failed", status.value))
    if training:
        code, message = "training_failed", "sandbox: the finetune's training failed"
    return {"error": code, "message": message}


def webhook_body(runtime: Runtime, task: Task) -> dict[str, Any]:
    """The webhook for ``task``'s end: a finetune's training (below), else the configured
    shape. Shape "a" is the one of BFL's webhook guide: ``{id, status, result, timestamp}``,
    and on failure ``{id, status, error, message, timestamp}``."""
    status = task.outcome
    result = result_of(runtime, task) if status is Status.READY else None
    if task.render is None:
        # A training's end, shaped like the body a public receiver of BFL's training webhooks
        # reads (gHashTag/ai-server: {task_id, status, result}); the task id is the finetune id.
        body: dict[str, Any] = {"task_id": task.id, "status": status.value, "result": result}
        if status is not Status.READY:
            body.update(_failure(status, training=True))
        body["timestamp"] = iso_time(task.done_at)
        return body
    if runtime.settings.webhook_shape == "b":
        return {
            "task_id": task.id,
            "status": SHAPE_B_STATUS.get(status, "FAILED"),
            "result": result,
            "error": None if status is Status.READY else status.value,
        }
    body = {"id": task.id, "status": status.value}
    if status is Status.READY:
        body["result"] = result
    else:
        body.update(_failure(status, training=False))
    body["timestamp"] = iso_time(task.done_at)
    return body
