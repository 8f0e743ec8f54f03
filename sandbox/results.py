"""What get_result answers and what a webhook carries, built from one task."""

from __future__ import annotations

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


def webhook_body(runtime: Runtime, task: Task) -> dict[str, Any]:
    """The webhook for ``task``'s end, in the configured shape ("a" or "b")."""
    status = task.outcome
    result = result_of(runtime, task) if status is Status.READY else None
    error = None if status is Status.READY else status.value
    if runtime.settings.webhook_shape == "b":
        return {
            "task_id": task.id,
            "status": SHAPE_B_STATUS.get(status, "FAILED"),
            "result": result,
            "error": error,
        }
    return {
        "id": task.id,
        "status": status.value,
        "result": result,
        "progress": None,
        "details": ERROR_DETAILS.get(status),
        "error": error,
    }
