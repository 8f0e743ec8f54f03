"""The burst benchmark's handler: checks it was given the whole image, nothing more."""

from __future__ import annotations

from receiver import Event


async def check(event: Event) -> None:
    if event.image is None or event.image.size < 1_000_000:
        raise RuntimeError(f"task {event.task_id}: no image or a short one")
