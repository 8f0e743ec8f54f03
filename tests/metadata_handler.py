"""A handler for tests that run the receiver as a separate process: each event's task id,
status and metadata become one JSON line in the file named by ``BFL_TEST_METADATA``."""

from __future__ import annotations

import asyncio
import json
import os

from receiver import Event


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as sink:
        sink.write(line + "\n")


async def record(event: Event) -> None:
    line = json.dumps({"task_id": event.task_id, "status": event.status, "meta": event.metadata})
    await asyncio.to_thread(_append, os.environ["BFL_TEST_METADATA"], line)
