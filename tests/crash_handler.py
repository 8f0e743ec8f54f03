"""A handler for tests that run the receiver as a separate process.

Every run is logged to a SQLite file named by ``BFL_TEST_EFFECTS``; the effect itself is keyed by
``event.idempotency_key``, the way a real handler makes a re-run harmless.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3

from receiver import Event


def _write(path: str, key: str, attempt: int, has_image: bool) -> None:
    with sqlite3.connect(path, timeout=30) as db:
        db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, attempt INTEGER, image INTEGER)")
        db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
        db.execute("INSERT INTO runs VALUES (?, ?, ?)", (key, attempt, has_image))
        db.execute("INSERT OR IGNORE INTO effects VALUES (?)", (key,))


async def record(event: Event) -> None:
    await asyncio.sleep(0.02)  # long enough for a kill to land mid-run
    image = event.image is not None and len(await event.image.read()) == event.image.size
    await asyncio.to_thread(
        _write, os.environ["BFL_TEST_EFFECTS"], event.idempotency_key, event.attempt, image
    )
