"""PostgreSQL rows as the store's records (the same dataclasses the SQLite store returns)."""

from __future__ import annotations

import json

import asyncpg

from receiver.events import Status
from receiver.store.base import EventRecord, ImageRecord, Job, JobKind, JobState


def rowcount(status: str) -> int:
    """The row count at the end of a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def event_from(r: asyncpg.Record) -> EventRecord:
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
    )


def job_from(r: asyncpg.Record) -> Job:
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
    )
