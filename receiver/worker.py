"""The job runner: claims due jobs, downloads samples, runs handlers, retries, buries.

One loop per process claims as many jobs as it has free slots and runs each in its own task;
a job's lease is renewed while it runs, so only a crashed process's jobs ever expire. A reaper
returns those to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable

import httpx

from receiver.download import DownloadError, fetch_sample
from receiver.events import Event, StoredImage
from receiver.handlers import HandlerSet
from receiver.metrics import Metrics
from receiver.render import hide_queries, literal
from receiver.settings import Settings
from receiver.storage import Storage
from receiver.store.base import EventRecord, ImageRecord, Job, JobKind, Store

log = logging.getLogger("receiver.worker")

MAX_HANDLER_BACKOFF = 300.0
MAX_DOWNLOAD_BACKOFF = 30.0
MAX_DOWNLOAD_ATTEMPTS = 20


def backoff(base: float, attempt: int, cap: float) -> float:
    """Exponential backoff with jitter: about base·2^(attempt-1), never over cap."""
    delay: float = min(cap, base * 2 ** max(attempt - 1, 0))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        storage: Storage,
        handlers: HandlerSet,
        client: httpx.AsyncClient,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.handlers = handlers
        self.client = client
        self.metrics = metrics
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self._running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._slot_freed = asyncio.Event()

    async def run(self) -> None:
        """Claim and run jobs until cancelled; then hand back what is still running."""
        tasks = [asyncio.create_task(self._claim_loop()), asyncio.create_task(self._lease_loop())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await self._release_running()

    async def _claim_loop(self) -> None:
        capacity = self.settings.workers
        while True:
            free = capacity - len(self._running)
            jobs = (
                await self.store.claim(self.owner, free, self.settings.job_lease_seconds)
                if free
                else []
            )
            for job in jobs:
                task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
                self._running[job.id] = (job, task)
            if len(jobs) == free and free:
                continue  # more may be due
            if free == 0 or len(self._running) == capacity:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            else:
                await self.store.wait_for_work(self.settings.poll_interval_seconds)

    async def _lease_loop(self) -> None:
        """Renew leases of running jobs and reap expired ones (other processes' crashes)."""
        every = self.settings.job_lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            running = [job for job, _ in self._running.values()]
            if running:
                held = await self.store.renew(running, self.settings.job_lease_seconds)
                for job in running:
                    if job.id not in held and job.id in self._running:
                        log.warning("lost the lease of job %s; cancelling it", job.id)
                        self._running[job.id][1].cancel()
            await self.store.reap()

    async def _release_running(self) -> None:
        """On shutdown, stop running jobs and queue them again at once, not after the lease."""
        running = list(self._running.values())
        for _, task in running:
            task.cancel()
        for job, task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self.store.retry(job, "receiver shut down while running", 0)

    async def _run(self, job: Job) -> None:
        try:
            if job.kind is JobKind.DOWNLOAD:
                await self._download(job)
            else:
                await self._handle(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s crashed in the worker itself", job.id)
            with contextlib.suppress(Exception):
                await self.store.retry(job, "internal error (see logs)", 5.0)
        finally:
            self._running.pop(job.id, None)
            self._slot_freed.set()

    async def _download(self, job: Job) -> None:
        event = await self.store.get_event(job.task_id)
        if event is None or not event.sample_url:
            await self.store.bury(job, "event has no sample URL")
            return
        deadline = event.deadline or (event.received_at + self.settings.sample_ttl_seconds)
        started = time.monotonic()
        try:
            got = await fetch_sample(
                self.client,
                event.sample_url,
                allowed_hosts=self.settings.sample_hosts,
                max_bytes=self.settings.max_sample_bytes,
                staging_dir=self.storage.staging_dir(),
                deadline=deadline,
            )
        except DownloadError as exc:
            await self._download_failed(job, exc, deadline)
            return
        blob = await self.storage.put(
            got.path, sha256=got.sha256, size=got.size, content_type=got.content_type
        )
        image = ImageRecord(blob.location, blob.content_type, blob.size, blob.sha256)
        names = self.handlers.names_for(event.status)
        if await self.store.complete_download(job, image, names):
            self.metrics.downloads.labels("ok").inc()
            self.metrics.download_bytes.inc(got.size)
            self.metrics.download_seconds.observe(time.monotonic() - started)
            self.metrics.url_seconds_left.observe(max(0.0, deadline - time.time()))
            log.info("task %s: stored %s (%d bytes)", job.task_id, blob.location, blob.size)

    async def _download_failed(self, job: Job, exc: DownloadError, deadline: float) -> None:
        delay = backoff(1.0, job.attempts, MAX_DOWNLOAD_BACKOFF)
        hopeless = (
            not exc.transient
            or job.attempts >= MAX_DOWNLOAD_ATTEMPTS
            or time.time() + delay >= deadline
        )
        if hopeless:
            reason = (
                exc.reason if not exc.transient else f"gave up before the URL expired: {exc.reason}"
            )
            log.warning("task %s: download dead: %s", job.task_id, reason)
            self.metrics.downloads.labels("dead").inc()
            await self.store.bury(job, reason)
        else:
            self.metrics.downloads.labels("retry").inc()
            await self.store.retry(job, exc.reason, delay)

    async def _handle(self, job: Job) -> None:
        handler = self.handlers.get(job.handler)
        if handler is None:
            await self.store.bury(job, f"handler {job.handler!r} is not configured here")
            return
        if job.attempts > self.settings.handler_max_attempts:
            # Claimed again and again without finishing: its runs keep killing the process.
            await self.store.bury(job, "lease expired on every attempt (did the process crash?)")
            return
        record = await self.store.get_event(job.task_id)
        if record is None:
            await self.store.bury(job, "the event was pruned")
            return
        event = self._event(record, job)
        try:
            async with asyncio.timeout(self.settings.handler_timeout_seconds):
                await handler(event)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            # Kept with the run (the store caps it) for `bfl-receiver show`.
            trace = traceback.format_exc()
            if job.attempts >= self.settings.handler_max_attempts:
                log.warning(
                    "task %s: handler %s dead after %d attempts: %s",
                    job.task_id,
                    job.handler,
                    job.attempts,
                    literal(hide_queries(error)),
                )
                self.metrics.handler_runs.labels(job.handler, "dead").inc()
                await self.store.bury(job, error, traceback=trace)
            else:
                delay = backoff(
                    self.settings.handler_backoff_seconds, job.attempts, MAX_HANDLER_BACKOFF
                )
                log.info(
                    "task %s: handler %s failed (attempt %d of %d), retrying in %.1f s: %s",
                    job.task_id,
                    job.handler,
                    job.attempts,
                    self.settings.handler_max_attempts,
                    delay,
                    literal(hide_queries(error)),
                )
                self.metrics.handler_runs.labels(job.handler, "retry").inc()
                await self.store.retry(job, error, delay, traceback=trace)
            return
        self.metrics.handler_runs.labels(job.handler, "ok").inc()
        await self.store.complete(job)

    def _event(self, record: EventRecord, job: Job) -> Event:
        image = None
        if record.image is not None:
            image = StoredImage(
                location=record.image.location,
                content_type=record.image.content_type,
                size=record.image.size,
                sha256=record.image.sha256,
                _reader=_reader(self.storage, record.image.location),
            )
        return Event(
            task_id=record.task_id,
            status=record.status,
            image=image,
            metadata=record.metadata,
            payload=record.payload,
            attempt=job.attempts,
            idempotency_key=f"{record.task_id}:{job.handler}",
            error=record.error,
        )


def _reader(storage: Storage, location: str) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        return await storage.read(location)

    return read
