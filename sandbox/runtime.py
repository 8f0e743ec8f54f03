"""What the lifespan opens and the routes share: state, the HTTP client, background work."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from starlette.requests import Request

from sandbox.images import render
from sandbox.settings import SandboxSettings
from sandbox.tasks import Accounts, FinetuneStore, Task, TaskStore

log = logging.getLogger("sandbox")

#: Rendered images kept for repeated downloads; older ones are rendered again (deterministic).
IMAGE_CACHE_SIZE = 32


@dataclass(eq=False)
class Runtime:
    """The sandbox's state for one app instance; nothing of it is global."""

    settings: SandboxSettings
    client: httpx.AsyncClient
    """Sends webhooks and fetches input-image URLs (allowlisted hosts only)."""
    signing_key: bytes
    tasks: TaskStore = field(default_factory=TaskStore)
    accounts: Accounts = field(init=False)
    finetunes: FinetuneStore = field(default_factory=FinetuneStore)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _images: OrderedDict[str, bytes] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.accounts = Accounts(self.settings.credits)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background until it ends or the app shuts down."""
        job = asyncio.get_running_loop().create_task(work)
        self._background.add(job)
        job.add_done_callback(self._finished)

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._background.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.error("background job failed", exc_info=job.exception())

    async def image(self, task: Task) -> bytes:
        """The encoded result of ``task``, rendered once in a thread and then cached."""
        assert task.render is not None
        cached = self._images.get(task.id)
        if cached is None:
            cached = await asyncio.to_thread(render, task.render)
            self._images[task.id] = cached
            while len(self._images) > IMAGE_CACHE_SIZE:
                self._images.popitem(last=False)
        return cached

    async def close(self) -> None:
        """Cancel background work (pending webhooks die with the process, as at a crash)."""
        jobs = list(self._background)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


def runtime_of(request: Request) -> Runtime:
    """The Runtime the lifespan put in the request's state."""
    return cast(Runtime, request.state.sandbox)
