"""Where submissions are registered: the receiver's store, if it exists and answers.

Registration is what counts BFL's limits across processes and lets the receiver's reconciler
poll a task whose webhook never comes. It is optional: the metadata travels in the webhook URL
(receiver.correlation), so a submitter that can reach no store warns once and submits anyway.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import asyncpg

from receiver.store import Store, open_store, store_location
from receiver.store.base import StoreMissing

log = logging.getLogger("submitter")

#: How long the submitter tries to reach the receiver's store before submitting without it.
STORE_OPEN_TIMEOUT = 10.0
#: Errors that mean "no store to register in": absent, unreachable, refused, not a database.
_STORE_ERRORS = (
    StoreMissing,
    OSError,
    TimeoutError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
#: Store locations already warned about in this process: the warning is said once.
_warned: set[str] = set()


async def open_existing_store(url: str) -> tuple[Store | None, str | None]:
    """The receiver's store, if it exists and answers; else None, with a warning: logged, and
    returned for the caller to show (once per process and location, else None).

    Never creates a store: a SQLite file that is not there stays not there (a submitter in
    another folder must not make a store of its own that no receiver reads).
    """
    store = open_store(url, create=False)
    try:
        await asyncio.wait_for(store.open(), STORE_OPEN_TIMEOUT)
    except _STORE_ERRORS as exc:
        await store.close()
        where = store_location(url)
        if where in _warned:
            return None, None
        _warned.add(where)
        sqlite = url.startswith("sqlite:///")
        missing = sqlite and not await asyncio.to_thread(Path(where).is_file)
        why = "it does not exist" if missing else type(exc).__name__
        warning = (
            f"cannot register submissions in the receiver's store at {where} ({why}): no limit "
            "counting across processes and no reconciliation when a webhook never comes; "
            "the metadata still travels in the webhook URL"
        )
        log.warning("%s", warning)
        return None, warning
    return store, None
