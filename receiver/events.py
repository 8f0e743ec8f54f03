"""What handlers receive: the typed event, its status and the stored image."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class Status(StrEnum):
    """A task's status, normalised over both webhook shapes seen from BFL."""

    READY = "ready"
    PENDING = "pending"
    ERROR = "error"
    REQUEST_MODERATED = "request_moderated"
    CONTENT_MODERATED = "content_moderated"
    TASK_NOT_FOUND = "task_not_found"
    UNKNOWN = "unknown"

    @property
    def kind(self) -> Kind:
        """The coarse class ``@receiver.on`` filters by."""
        return _KINDS[self]

    @property
    def terminal(self) -> bool:
        """True when the task will not change again, so handlers run."""
        return self.kind in ("ready", "error", "moderated")


Kind = Literal["ready", "error", "moderated", "pending", "unknown", "finetune"]


class TaskKind(StrEnum):
    """What a task is: a generation (an image to download) or a finetune's training (none)."""

    GENERATION = "generation"
    FINETUNE = "finetune"


_KINDS: dict[Status, Kind] = {
    Status.READY: "ready",
    Status.PENDING: "pending",
    Status.ERROR: "error",
    Status.TASK_NOT_FOUND: "error",
    Status.REQUEST_MODERATED: "moderated",
    Status.CONTENT_MODERATED: "moderated",
    Status.UNKNOWN: "unknown",
}


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image the receiver downloaded and keeps; ``location`` is a path or a URL."""

    location: str
    content_type: str
    size: int
    sha256: str
    _reader: Callable[[], Awaitable[bytes]] = field(repr=False, compare=False)

    async def read(self) -> bytes:
        """The image's bytes, from wherever the storage backend keeps them."""
        return await self._reader()


@dataclass(frozen=True, slots=True)
class Event:
    """One finished task, as a handler sees it."""

    task_id: str
    status: Status
    image: StoredImage | None
    metadata: dict[str, Any]
    """What the submitter attached (a chat id, a user id...); empty when unknown."""
    payload: dict[str, Any]
    """The webhook's JSON, as received."""
    attempt: int
    """1 on the first run of this handler for this task, 2 on its first retry..."""
    idempotency_key: str
    """Stable for one (task, handler): use it to make your side effects happen once."""
    error: str | None = None
    """BFL's error text for failed tasks, when it sent one."""
    finetune_id: str | None = None
    """Set on a finetune event (a training ended): the finetune's id, which is also its
    ``task_id``; None for generations."""

    @property
    def kind(self) -> Kind:
        """``"finetune"`` for a finetune event (whatever its status: see ``status``), else the
        status's kind: ``"ready"``, ``"error"`` or ``"moderated"``."""
        return "finetune" if self.finetune_id is not None else self.status.kind
