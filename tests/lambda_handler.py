"""The handler the Lambda runtime tests configure (``tests.lambda_handler:run``).

Every run is logged to the SQLite file named by ``BFL_TEST_EFFECTS``, with the invocation it
ran in: awslambdaric sets ``_X_AMZN_TRACE_ID`` to each invocation's trace id before calling the
function, so a run that wakes up inside a later invocation is logged under that one's id.
A task whose id starts with ``slow`` takes ``BFL_TEST_SLEEP`` seconds on its first run only.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3

from receiver import Event

SCHEMA = "CREATE TABLE IF NOT EXISTS runs (task_id TEXT, phase TEXT, trace TEXT, attempt INT)"


def _log(task_id: str, phase: str, attempt: int) -> None:
    with sqlite3.connect(os.environ["BFL_TEST_EFFECTS"], timeout=30) as db:
        db.execute(SCHEMA)
        trace = os.environ.get("_X_AMZN_TRACE_ID", "")
        db.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (task_id, phase, trace, attempt))


def _started_before(task_id: str) -> bool:
    with sqlite3.connect(os.environ["BFL_TEST_EFFECTS"], timeout=30) as db:
        db.execute(SCHEMA)
        row = db.execute("SELECT 1 FROM runs WHERE task_id = ?", (task_id,)).fetchone()
        return row is not None


async def run(event: Event) -> None:
    first = not await asyncio.to_thread(_started_before, event.task_id)
    await asyncio.to_thread(_log, event.task_id, "start", event.attempt)
    if first and event.task_id.startswith("slow"):
        await asyncio.sleep(float(os.environ.get("BFL_TEST_SLEEP", "5")))
    await asyncio.to_thread(_log, event.task_id, "end", event.attempt)


def runs(path: str) -> list[tuple[str, str, str]]:
    """(task_id, phase, trace id) of every logged step, in order."""
    if not os.path.exists(path):
        return []
    with sqlite3.connect(path, timeout=30) as db:
        db.execute(SCHEMA)
        return db.execute("SELECT task_id, phase, trace FROM runs ORDER BY rowid").fetchall()
