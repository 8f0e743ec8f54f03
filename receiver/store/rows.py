"""Database rows as the store's records, for both engines (``sqlite3.Row`` and
``asyncpg.Record`` are both read by column name)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from receiver.events import Status, TaskKind
from receiver.store.base import (
    EventRecord,
    ImageRecord,
    Job,
    JobKind,
    JobRun,
    JobState,
    Submission,
    Via,
)


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def event_from(r: Row) -> EventRecord:
    image = None
    if r["image_location"] is not None:
        image = ImageRecord(
            r["image_location"], r["image_content_type"], r["image_size"], r["image_sha256"]
        )
    return EventRecord(
        task_id=r["task_id"],
        status=Status(r["status"]),
        raw_status=r["raw_status"],
        sample_url=r["sample_url"],
        error=r["error"],
        payload=json.loads(r["payload"]),
        metadata=json.loads(r["metadata"]),
        received_at=r["received_at"],
        updated_at=r["updated_at"],
        deliveries=r["deliveries"],
        deadline=r["deadline"],
        image=image,
        task_kind=TaskKind(r["task_kind"]),
        via=Via(r["via"]),
    )


def job_from(r: Row) -> Job:
    return Job(
        id=r["id"],
        task_id=r["task_id"],
        kind=JobKind(r["kind"]),
        handler=r["handler"],
        state=JobState(r["state"]),
        attempts=r["attempts"],
        lease=r["lease"],
        last_error=r["last_error"],
        run_at=r["run_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        waited=r["waited"],
    )


def run_from(r: Row) -> JobRun:
    return JobRun(
        r["job_id"], r["attempt"], r["outcome"], r["error"], r["finished_at"], r["traceback"]
    )


def submission_from(r: Row) -> Submission:
    return Submission(
        ref=r["ref"],
        endpoint=r["endpoint"],
        metadata=json.loads(r["metadata"]),
        submitted_at=r["submitted_at"],
        task_id=r["task_id"],
        polling_url=r["polling_url"],
        polls=r["polls"],
        next_poll_at=r["next_poll_at"],
    )
