"""A handler for the container test (tests/test_image.py), mounted into the image: it reads the
stored image as a user's handler would and writes what it saw, as JSON, to
``$BFL_TEST_HANDLED/<task id>.json``. Standard library and ``receiver`` only: nothing else of
tests/ is in the image."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from receiver import Event


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


async def record(event: Event) -> None:
    image = await event.image.read() if event.image else None
    seen = {
        "task_id": event.task_id,
        "status": event.status,
        "sha256": hashlib.sha256(image).hexdigest() if image is not None else None,
    }
    target = Path(os.environ["BFL_TEST_HANDLED"]) / f"{event.task_id}.json"
    await asyncio.to_thread(_write, target, json.dumps(seen))
