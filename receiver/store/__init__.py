"""Event and job stores, chosen by the scheme of ``RECEIVER_DATABASE_URL``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

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
    StoreMissing,
    Submission,
    Via,
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
    "StoreMissing",
    "Submission",
    "Via",
    "open_store",
    "opened_store",
    "store_location",
]


def open_store(url: str, *, create: bool = True) -> Store:
    """A store for ``sqlite:///path`` or ``postgresql://...`` (not yet opened).

    With ``create=False`` (the read commands), ``open`` raises StoreMissing instead of creating
    a store that is not there: a new empty one would hide a wrong path.
    """
    if url.startswith("sqlite:"):
        from receiver.store.sqlite import SQLiteStore  # noqa: PLC0415 - load one engine only

        return SQLiteStore(url, create=create)
    if url.startswith(("postgresql://", "postgres://")):
        from receiver.store.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore(url, create=create)
    # The URL may hold a password: name the scheme only.
    scheme, colon, _ = url.partition(":")
    named = f" (scheme {scheme!r})" if colon and scheme.isalnum() else ""
    raise ValueError(f"unsupported database URL{named}: expected sqlite:/// or postgresql://")


@contextlib.asynccontextmanager
async def opened_store(url: str, *, create: bool = True) -> AsyncIterator[Store]:
    """The store at ``url``, open for the block (for commands and scripts)."""
    store = open_store(url, create=create)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def store_location(url: str) -> str:
    """Where ``url`` points, fit for a message: a SQLite path, or PostgreSQL's user, host,
    port and database, never the password."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port
    except ValueError:
        return "an unreadable database URL"
    user = f"{parts.username}@" if parts.username else ""
    where = f"{host}:{port}" if port else host
    return f"{parts.scheme}://{user}{where}{parts.path}"
