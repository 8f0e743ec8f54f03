"""The store: events and the durable job queue behind them.

One interface, two engines (SQLite embedded, PostgreSQL for replicas), one state machine::

    record(notice) ──▶ event row + jobs          (idempotent on task id)

    job:  queued ──claim──▶ running ──complete──▶ done
            ▲                 │  │
            │  retry(delay)   │  └──bury──▶ dead ──replay──▶ queued
            └─────────────────┘
             lease expired (reap), or handed back unfinished (release)

Every transition out of ``running`` is fenced: it names the lease token the claim returned, and
does nothing (returns False) when the lease was lost to the reaper and claimed again elsewhere.
A ``download`` job, once done, creates one ``handler`` job per handler in the same transaction.

Submissions (what the submitter sent) live beside the events::

    prepare_submission(ref) ──POST──▶ bind_submission(ref, task_id) ──▶ terminal event
                                                       └─ reconcile: poll when no webhook came

A submission is prepared under a fresh reference *before* the POST, so a webhook that beats the
POST's answer (it carries the reference in its URL) still finds the metadata. An event's
``metadata`` is copied from its submission when either side arrives second. When the webhook
URL carries metadata itself (``receiver.correlation``), that metadata is the event's: the
submitter writes the same to its submission, so the two agree; if they ever differ, the URL's
(authenticated by the per-task secret) wins, and the store's fills in only an empty one.

A reference authenticates one task. A submission bound to a task (its POST's answer) names
it; until then, the first task recorded under the reference claims it (the ``webhook_refs``
table), whether a submission is prepared, or none exists at all (a submitter sharing no store
with this receiver, or a forged reference). Any other task id under that reference is refused
with ForeignReference. The check and the claim happen in ``record``'s own transaction.

An event's ``task_kind`` is decided when it is recorded, by webhook and poll alike: a finetune
when its submission (by reference or task id) was made to the ``finetune`` endpoint, or when
the notice itself names a finetune (``result.finetune_id``, for a finetune never registered
here); a generation otherwise. A finetune event gets its handler jobs at once, never a download.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from receiver.events import Status, TaskKind
from receiver.payload import Notice

#: The submissions' endpoint for a finetune's training (``POST /v1/finetune``).
FINETUNE_ENDPOINT = "finetune"


def names_finetune(notice: Notice) -> bool:
    """True when the notice itself says it is about a training: ``result: {"finetune_id"}``
    and no sample, as the sandbox's get_result and webhook of a training have it (BFL's are
    not documented). A result with a sample is an image, finetuned inference included."""
    result = notice.payload.get("result")
    return isinstance(result, dict) and "finetune_id" in result and "sample" not in result


class JobKind(StrEnum):
    DOWNLOAD = "download"
    HANDLER = "handler"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


class Via(StrEnum):
    """How an event's notice arrived."""

    WEBHOOK = "webhook"
    POLLING = "polling"
    """The reconciler polled ``get_result``: no webhook came (yet)."""


class StoreMissing(Exception):
    """``open`` was told not to create a store and there is none where it looked: a mistyped
    path, a command run from another folder, a deleted file. ``where`` names the place."""

    def __init__(self, where: str) -> None:
        super().__init__(f"no store at {where}")
        self.where = where


#: A handler's traceback is kept up to this many characters (its end: the failing frames and
#: the exception), so a runaway message cannot grow the store.
MAX_TRACEBACK_CHARS = 8192


def cap_traceback(text: str | None) -> str | None:
    """``text`` cut to its last MAX_TRACEBACK_CHARS characters, marked when cut."""
    if text is None or len(text) <= MAX_TRACEBACK_CHARS:
        return text
    return "[... cut ...]\n" + text[-MAX_TRACEBACK_CHARS:]


#: How a download job's error starts when its sample's host was refused (not in
#: RECEIVER_SAMPLE_HOSTS): `events` marks such a task refused, not failed.
REFUSED = "refused: "


class ForeignReference(Exception):
    """The webhook's reference belongs to another task (its submission is bound to it, or
    another task claimed it first): a per-task secret authenticates one task only, even if it
    leaked. Nothing was recorded."""


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
    task_kind: TaskKind = TaskKind.GENERATION
    """A finetune's training or a generation; decided when the event was recorded."""
    via: Via = Via.WEBHOOK
    """How the terminal notice arrived; ``deliveries`` counts webhooks only."""


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
    waited: float = 0.0
    """Seconds this job has been deferred by rate limits (``defer``) since it was queued or
    last replayed; the worker bounds it."""


@dataclass(frozen=True, slots=True)
class JobRun:
    """One finished attempt of a job, kept for ``show``."""

    job_id: int
    attempt: int
    outcome: str
    error: str | None
    finished_at: float
    traceback: str | None = None
    """The handler's traceback for a failed run (capped at MAX_TRACEBACK_CHARS)."""


@dataclass(frozen=True, slots=True)
class Submission:
    """A task the submitter sent, with what it wants handlers to know."""

    ref: str
    """A random reference, made before the POST; carried in the webhook URL."""
    endpoint: str
    metadata: dict[str, Any]
    submitted_at: float
    task_id: str | None
    """None until BFL's answer to the POST is recorded."""
    polling_url: str | None
    polls: int
    """How often the reconciler has polled it."""
    next_poll_at: float | None


#: A submission prepared but never bound (its POST failed in a way that may or may not have
#: reached BFL) counts as active this long, not the whole ``within`` window.
UNBOUND_ACTIVE_SECONDS = 600.0

#: Statuses after which a task changes no more (stored as ``Status`` values).
TERMINAL_STATUSES = tuple(s.value for s in Status if s.terminal)


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
        self,
        notice: Notice,
        *,
        deadline: float | None,
        handlers: Sequence[str],
        ref: str | None = None,
        finetune_handlers: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        via: Via = Via.WEBHOOK,
    ) -> RecordOutcome:
        """Durably record a notice; on the first terminal one, create its jobs.

        A Ready notice with a sample creates one download job (its handlers come when it is
        done); any other terminal notice creates a handler job for each of ``handlers`` now.
        A finetune's (see the module docstring) creates a job for each of
        ``finetune_handlers`` instead, and never a download.
        ``ref`` is the submission reference the webhook URL carried: the new event takes that
        submission's metadata (else the metadata of the submission bound to its task id).
        ``metadata``, the metadata the URL itself carried, wins over both (and fills in an
        existing event's empty metadata).
        Raises ForeignReference, recording nothing, if ``ref`` belongs to another task (bound
        to it, or claimed by it first); else the first task recorded under ``ref`` claims it.
        ``via`` says how the notice came: a terminal one sets the event's ``via``, and only
        webhooks count as ``deliveries``. Returns only once the change is committed.
        """

    @abc.abstractmethod
    async def prepare_submission(self, ref: str, endpoint: str, metadata: dict[str, Any]) -> None:
        """Before the POST: remember what is being submitted, under a fresh ``ref``."""

    @abc.abstractmethod
    async def bind_submission(self, ref: str, task_id: str, polling_url: str | None) -> None:
        """After the POST: the task id BFL gave it and where to poll it. Copies the metadata to
        the task's event if the webhook came first."""

    @abc.abstractmethod
    async def forget_submission(self, ref: str) -> None:
        """The POST was refused (422, 402...): no task exists, drop the prepared row."""

    @abc.abstractmethod
    async def get_submission(
        self, *, ref: str | None = None, task_id: str | None = None
    ) -> Submission | None: ...

    @abc.abstractmethod
    async def active_submissions(self, endpoint: str | None = None, *, within: float) -> int:
        """Submissions made in the last ``within`` seconds whose task has no terminal event
        yet (prepared-only ones for UNBOUND_ACTIVE_SECONDS at most): what counts against BFL's
        concurrency limits. Finetune trainings are not tasks under those limits: never counted."""

    @abc.abstractmethod
    async def due_for_reconcile(self, older_than: float, limit: int) -> list[Submission]:
        """Bound submissions older than ``older_than`` seconds, with no terminal event, whose
        next poll is due: oldest first."""

    @abc.abstractmethod
    async def reconciled(self, ref: str, next_in: float) -> None:
        """Count one poll of ``ref`` and schedule the next one ``next_in`` seconds from now."""

    @abc.abstractmethod
    async def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        kind: JobKind | None = None,
        *,
        task_id: str | None = None,
    ) -> list[Job]:
        """Take up to ``limit`` due queued jobs (of ``kind`` only, and of ``task_id`` only, if
        given), the longest due first, leased to ``owner``. ``task_id`` is for inline
        processing: a webhook's request runs its own task's jobs (``receiver.inline``)."""

    @abc.abstractmethod
    async def renew(self, jobs: Sequence[Job], lease_seconds: float) -> set[int]:
        """Extend the leases still held; returns the ids of the jobs still ours."""

    @abc.abstractmethod
    async def complete(self, job: Job, *, skipped: str | None = None) -> bool:
        """running → done; with ``skipped`` (the reason), the run is recorded as skipped: the
        handler had nothing to do for this event."""

    @abc.abstractmethod
    async def complete_download(
        self, job: Job, image: ImageRecord, handlers: Sequence[str]
    ) -> bool:
        """running → done for a download, storing the image and creating its handler jobs."""

    @abc.abstractmethod
    async def retry(
        self, job: Job, error: str, delay: float, *, traceback: str | None = None
    ) -> bool:
        """running → queued, due after ``delay`` seconds; the run keeps ``traceback``."""

    @abc.abstractmethod
    async def bury(self, job: Job, error: str, *, traceback: str | None = None) -> bool:
        """running → dead, with the reason (and the run's ``traceback``)."""

    @abc.abstractmethod
    async def release(self, job: Job, reason: str) -> bool:
        """running → queued, due now, and the attempt not counted: the job was handed back
        unfinished (a shutdown past its grace period), not failed."""

    @abc.abstractmethod
    async def defer(self, job: Job, reason: str, delay: float) -> bool:
        """running → queued, due after ``delay`` seconds, the attempt not counted and
        ``delay`` added to ``waited``: a rate limit turned the run away, nothing failed."""

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
        self, *, status: Status | None = None, limit: int = 100, dead_only: bool = False
    ) -> list[EventRecord]:
        """Newest first; with ``dead_only``, only events with a dead job."""

    @abc.abstractmethod
    async def jobs_for(self, task_id: str) -> list[Job]: ...

    @abc.abstractmethod
    async def jobs_of(self, task_ids: Sequence[str]) -> list[Job]:
        """The jobs of several tasks at once (for listings), by task then id."""

    @abc.abstractmethod
    async def dead_jobs(self, limit: int = 100) -> list[Job]:
        """Dead jobs, most recently buried first, with their last error."""

    @abc.abstractmethod
    async def image_hashes(self) -> set[str]:
        """The sha256 of every image an event still refers to (for pruning images)."""

    @abc.abstractmethod
    async def runs_for(self, task_id: str) -> list[JobRun]: ...

    @abc.abstractmethod
    async def counts(self) -> QueueCounts: ...

    @abc.abstractmethod
    async def prune(self, older_than: float) -> int:
        """Delete events received more than ``older_than`` seconds ago whose jobs have all
        ended (done or dead), with their jobs and runs; how many events.

        A finished task's submission and reference claim go with its event: left behind, the
        submission would look unfinished and be polled again. Submissions older than the cutoff
        that never got a task id (their POST never answered) go too. A task still running
        keeps its submission, so the reconciler goes on polling it."""
