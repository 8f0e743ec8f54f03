"""What the client hands back: submitted tasks and their results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from submitter._errors import TaskFailed
from submitter.models import Status


@dataclass(frozen=True)
class Task:
    """A submitted task: what BFL answered, and what we sent with it."""

    id: str
    endpoint: str
    polling_url: str | None
    """As BFL returned it (None when it answered in the webhook shape without one)."""
    ref: str | None = None
    """The submission's reference: in its webhook URL and the receiver's store (None when
    neither carries one)."""
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    submitted_at: float = 0.0
    webhook: bool = False
    """Whether BFL was asked to call the receiver when the task ends."""
    region: str | None = None
    """The legacy region (eu1/us1) of a finetune or finetuned inference, else None."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``--json`` and state files)."""
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "polling_url": self.polling_url,
            "ref": self.ref,
            "cost": self.cost,
            "input_mp": self.input_mp,
            "output_mp": self.output_mp,
            "metadata": self.metadata,
            "submitted_at": self.submitted_at,
            "webhook": self.webhook,
            "region": self.region,
        }


@dataclass(frozen=True)
class Result:
    """One get_result answer."""

    id: str
    status: Status
    result: dict[str, Any] | None
    progress: float | None
    details: dict[str, Any] | None
    raw: dict[str, Any]
    """The JSON as received."""

    @classmethod
    def from_json(cls, data: dict[str, Any], task_id: str) -> Result:
        """Parse a ResultResponse; an unknown status is kept Pending-like out of caution."""
        try:
            status = Status(str(data.get("status")))
        except ValueError:
            status = Status.PENDING
        result = data.get("result")
        details = data.get("details")
        progress = data.get("progress")
        return cls(
            id=str(data.get("id") or task_id),
            status=status,
            result=result if isinstance(result, dict) else None,
            progress=float(progress) if isinstance(progress, int | float) else None,
            details=details if isinstance(details, dict) else None,
            raw=data,
        )

    @property
    def sample(self) -> str | None:
        """The signed image URL (valid about 10 minutes) of a Ready task."""
        value = (self.result or {}).get("sample")
        return value if isinstance(value, str) else None

    @property
    def ok(self) -> bool:
        """The task is Ready (its image is at ``sample``)."""
        return self.status is Status.READY

    def raise_for_status(self) -> Result:
        """Return self if the task is Ready (or still running); raise TaskFailed otherwise."""
        if self.status.terminal and not self.ok:
            reason = self.details or {}
            raise TaskFailed(f"task {self.id} ended {self.status.value}: {reason}", self)
        return self
