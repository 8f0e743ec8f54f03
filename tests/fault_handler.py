"""Handlers for the fault tests, which run the receiver as a separate process.

Each run is logged to the SQLite file named by ``BFL_TEST_EFFECTS`` (never the receiver's own
store, which the tests lock, fill or delete): a ``start`` row when a run begins, an ``end`` row
when it finishes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3

from receiver import Event


def _log(key: str, attempt: int, phase: str) -> None:
    with sqlite3.connect(os.environ["BFL_TEST_EFFECTS"], timeout=30) as db:
        db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, attempt INTEGER, phase TEXT)")
        db.execute("INSERT INTO runs VALUES (?, ?, ?)", (key, attempt, phase))


async def slow(event: Event) -> None:
    """Takes ``BFL_TEST_SLEEP`` seconds, like a handler waiting on a chat API."""
    await asyncio.to_thread(_log, event.idempotency_key, event.attempt, "start")
    await asyncio.sleep(float(os.environ.get("BFL_TEST_SLEEP", "3")))
    await asyncio.to_thread(_log, event.idempotency_key, event.attempt, "end")


async def flaky(event: Event) -> None:
    """Fails its first attempt, so that every task has a retry coming due."""
    if event.attempt == 1:
        await asyncio.to_thread(_log, event.idempotency_key, event.attempt, "fail")
        raise RuntimeError("failing the first attempt on purpose")
    await asyncio.to_thread(_log, event.idempotency_key, event.attempt, "end")


def runs(path: str, phase: str = "end") -> list[tuple[str, int]]:
    """(key, attempt) of every run that reached ``phase``."""
    if not os.path.exists(path):
        return []
    with sqlite3.connect(path, timeout=30) as db:
        db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, attempt INTEGER, phase TEXT)")
        return db.execute("SELECT key, attempt FROM runs WHERE phase = ?", (phase,)).fetchall()
