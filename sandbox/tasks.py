"""In-memory state: tasks and their timeline, credit balances, finetunes.

A task's status is a function of the clock: Pending until ``created + duration``, then its
outcome. Nothing polls or ticks; the webhook sender sleeps until the same instant.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sandbox.faults import Faults
from sandbox.images import RenderSpec
from submitter.models import Status

#: Tasks are forgotten (get_result: Task not found) a day after they were submitted.
RETENTION_SECONDS = 24 * 3600


#: Faults that decide how a task ends.
OUTCOMES = {
    "request-moderated": Status.REQUEST_MODERATED,
    "content-moderated": Status.CONTENT_MODERATED,
    "error": Status.ERROR,
}

ERROR_DETAILS = {
    Status.REQUEST_MODERATED: {"moderation_reasons": ["sandbox: request moderated"]},
    Status.CONTENT_MODERATED: {"moderation_reasons": ["sandbox: content moderated"]},
    Status.ERROR: {"error": "sandbox: the generation failed"},
}


def outcome_of(faults: Faults) -> Status:
    """The final status ``faults`` ask for: Ready unless an outcome fault is set."""
    for name, status in OUTCOMES.items():
        if name in faults:
            return status
    return Status.READY


@dataclass(eq=False)
class Task:
    """One submitted generation (or finetune training) and what happened to it since."""

    id: str
    key: str
    endpoint: str
    region: str
    base_url: str
    """Where the client reached us: polling and delivery URLs are built on it."""
    created: float
    duration: float
    outcome: Status
    faults: Faults
    render: RenderSpec | None
    """None for finetune training, which yields no image."""
    cost: float = 0.0
    webhook_url: str | None = None
    webhook_secret: str | None = None
    hidden_for: float = 0.0
    """early-webhook: get_result says Task not found until this long after the end."""
    finetune_id: str | None = None
    polls: int = 0
    fetches: int = 0
    webhook_attempts: list[str] = field(default_factory=list)
    """One line per webhook attempt (status code or error), for logs and tests."""

    @property
    def done_at(self) -> float:
        return self.created + self.duration

    def status(self, now: float) -> tuple[Status, float | None]:
        """The status and progress (0..1) a get_result at ``now`` reports."""
        if now < self.done_at + self.hidden_for and self.hidden_for:
            return Status.NOT_FOUND, None
        if now < self.done_at:
            return Status.PENDING, round((now - self.created) / self.duration, 2)
        return self.outcome, None

    def is_active(self, now: float) -> bool:
        """Counts against the concurrency limits (BFL: "active tasks")."""
        return now < self.done_at and self.finetune_id is None


class TaskStore:
    """Every task, by id."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def add(self, task: Task) -> None:
        self._prune(task.created)
        self._tasks[task.id] = task

    def get(self, task_id: str) -> Task | None:
        task = self._tasks.get(task_id)
        if task is not None and time.time() - task.created > RETENTION_SECONDS:
            return None
        return task

    def active(self, key: str, now: float, endpoint: str | None = None) -> int:
        """How many of ``key``'s tasks (of ``endpoint``, if given) are still running."""
        return sum(
            1
            for t in self._tasks.values()
            if t.key == key and t.is_active(now) and endpoint in (None, t.endpoint)
        )

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def _prune(self, now: float) -> None:
        expired = [i for i, t in self._tasks.items() if now - t.created > RETENTION_SECONDS]
        for task_id in expired:
            del self._tasks[task_id]


class Accounts:
    """Credit balances per API key, each starting at the configured amount."""

    def __init__(self, start: float) -> None:
        self._start = start
        self._balances: dict[str, float] = {}

    def balance(self, key: str) -> float:
        return self._balances.get(key, self._start)

    def charge(self, key: str, cost: float) -> bool:
        """Take ``cost`` from ``key``'s balance; False (and nothing taken) if it is short."""
        balance = self.balance(key)
        if balance < cost:
            return False
        self._balances[key] = round(balance - cost, 4)
        return True


@dataclass(eq=False)
class Finetune:
    """A finetune: its training task, parameters, and the only region that knows it."""

    id: str
    key: str
    region: str
    task: Task
    params: dict[str, Any]
    image_count: int
    caption_count: int

    def details(self, now: float) -> dict[str, Any]:
        status, progress = self.task.status(now)
        return {
            "finetune_id": self.id,
            "status": status.value,
            "progress": progress,
            "region": self.region,
            "image_count": self.image_count,
            "caption_count": self.caption_count,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.task.created)),
            **self.params,
        }


class FinetuneStore:
    """Finetunes by id; each is visible only to its key, in its region."""

    def __init__(self) -> None:
        self._finetunes: dict[str, Finetune] = {}

    def add(self, finetune: Finetune) -> None:
        self._finetunes[finetune.id] = finetune

    def find(self, key: str, region: str, finetune_id: str) -> Finetune | None:
        found = self._finetunes.get(finetune_id)
        if found is None or found.key != key or found.region != region:
            return None
        return found

    def mine(self, key: str, region: str) -> list[str]:
        return [f.id for f in self._finetunes.values() if f.key == key and f.region == region]

    def delete(self, finetune: Finetune) -> None:
        self._finetunes.pop(finetune.id, None)
