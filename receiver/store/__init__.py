"""Event and job stores, chosen by the scheme of ``RECEIVER_DATABASE_URL``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from receiver.store.base import (
    EventRecord,
    ImageRecord,
    Job,
    JobKind,
    JobRun,
    JobState,
    QueueCounts,
    RecordOutcome,
    Store,
    Submission,
)

__all__ = [
    "EventRecord",
    "ImageRecord",
    "Job",
    "JobKind",
    "JobRun",
    "JobState",
    "QueueCounts",
    "RecordOutcome",
    "Store",
    "Submission",
    "open_store",
    "opened_store",
]


def open_store(url: str) -> Store:
    """A store for ``sqlite:///path`` or ``postgresql://...`` (not yet opened)."""
    if url.startswith("sqlite:"):
        from receiver.store.sqlite import SQLiteStore  # noqa: PLC0415 - load one engine only

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from receiver.store.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore(url)
    raise ValueError(f"unsupported database URL (expected sqlite:/// or postgresql://): {url!r}")


@contextlib.asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[Store]:
    """The store at ``url``, open for the block (for commands and scripts)."""
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
