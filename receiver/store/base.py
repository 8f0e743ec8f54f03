"""The store: events and the durable job queue behind them.

One interface, two engines (SQLite embedded, PostgreSQL for replicas), one state machine::

    record(notice) ──▶ event row + jobs          (idempotent on task id)

    job:  queued ──claim──▶ running ──complete──▶ done
            ▲                 │  │
            │  retry(delay)   │  └──bury──▶ dead ──replay──▶ queued
            └─────────────────┘
                 lease expired (reap)

Every transition out of ``running`` is fenced: it names the lease token the claim returned, and
does nothing (returns False) when the lease was lost to the reaper and claimed again elsewhere.
A ``download`` job, once done, creates one ``handler`` job per handler in the same transaction.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from receiver.events import Status
from receiver.payload import Notice


class JobKind(StrEnum):
    DOWNLOAD = "download"
    HANDLER = "handler"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


class RecordOutcome(StrEnum):
    """What ``record`` did with a notice."""

    NEW = "new"
    """First terminal notice for this task: jobs were created."""
    PROGRESS = "progress"
    """A non-terminal notice (Pending, unknown status): recorded, nothing dispatched."""
    DUPLICATE = "duplicate"
    """The task was already terminal: counted, nothing dispatched."""


@dataclass(frozen=True, slots=True)
class ImageRecord:
    location: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class EventRecord:
    task_id: str
    status: Status
    raw_status: str
    sample_url: str | None
    error: str | None
    payload: dict[str, Any]
    metadata: dict[str, Any]
    received_at: float
    updated_at: float
    deliveries: int
    deadline: float | None
    image: ImageRecord | None


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    task_id: str
    kind: JobKind
    handler: str
    """The handler's name (``module:callable``); empty for downloads."""
    state: JobState
    attempts: int
    lease: str | None
    """The fencing token of the current claim (``None`` unless running)."""
    last_error: str | None
    run_at: float
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class JobRun:
    """One finished attempt of a job, kept for ``show``."""

    job_id: int
    attempt: int
    outcome: str
    error: str | None
    finished_at: float


@dataclass(frozen=True, slots=True)
class QueueCounts:
    queued: int
    running: int
    dead: int
    done: int


class Store(abc.ABC):
    """Durable events and jobs. Every method is safe to call from many tasks at once."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot be reached."""

    @abc.abstractmethod
    async def record(
        self, notice: Notice, *, deadline: float | None, handlers: Sequence[str]
    ) -> RecordOutcome:
        """Durably record a notice; on the first terminal one, create its jobs.

        A Ready notice with a sample creates one download job (its handlers come when it is
        done); any other terminal notice creates a handler job for each of ``handlers`` now.
        Returns only once the change is committed.
        """

    @abc.abstractmethod
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        """Take up to ``limit`` due queued jobs, oldest first, leased to ``owner``."""

    @abc.abstractmethod
    async def renew(self, jobs: Sequence[Job], lease_seconds: float) -> set[int]:
        """Extend the leases still held; returns the ids of the jobs still ours."""

    @abc.abstractmethod
    async def complete(self, job: Job) -> bool:
        """running → done."""

    @abc.abstractmethod
    async def complete_download(
        self, job: Job, image: ImageRecord, handlers: Sequence[str]
    ) -> bool:
        """running → done for a download, storing the image and creating its handler jobs."""

    @abc.abstractmethod
    async def retry(self, job: Job, error: str, delay: float) -> bool:
        """running → queued, due after ``delay`` seconds."""

    @abc.abstractmethod
    async def bury(self, job: Job, error: str) -> bool:
        """running → dead, with the reason."""

    @abc.abstractmethod
    async def reap(self) -> int:
        """Return running jobs whose lease expired to the queue; how many."""

    @abc.abstractmethod
    async def replay(self, task_id: str | None = None, *, include_done: bool = False) -> int:
        """Queue dead jobs again (of one task, or all); with include_done, that task's done
        handler jobs too. Attempts start again from zero. Returns how many."""

    @abc.abstractmethod
    async def wait_for_work(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll interval
        """Return when new jobs may be due, or after ``timeout`` seconds."""

    @abc.abstractmethod
    async def get_event(self, task_id: str) -> EventRecord | None: ...

    @abc.abstractmethod
    async def list_events(
        self, *, status: Status | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """Newest first."""

    @abc.abstractmethod
    async def jobs_for(self, task_id: str) -> list[Job]: ...

    @abc.abstractmethod
    async def runs_for(self, task_id: str) -> list[JobRun]: ...

    @abc.abstractmethod
    async def counts(self) -> QueueCounts: ...

    @abc.abstractmethod
    async def prune(self, older_than: float) -> int:
        """Delete events received more than ``older_than`` seconds ago whose jobs have all
        ended (done or dead), with their jobs and runs; how many events."""
