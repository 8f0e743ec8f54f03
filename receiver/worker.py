"""The job runner: claims due jobs, downloads samples, runs handlers, retries, buries.

Downloads and handler runs have pools of their own (``RECEIVER_DOWNLOAD_WORKERS``,
``RECEIVER_HANDLER_WORKERS``): a signed URL dies 10 minutes after the webhook, so a download
must never wait behind handlers that hang on a chat API. Each pool claims as many due jobs of
its kind as it has free slots, the longest due first, and runs each in its own task; a job's
lease is renewed while it runs, so only a crashed process's jobs ever expire, and a reaper
returns those to the queue.

Every loop here survives store errors (``receiver.loops``): a locked, full or restarting store
stops the work only until it answers again, and ``/readyz`` says so meanwhile. A job's own
transition (done, retry, dead) is retried the same way while the job is still ours, so a store
hiccup at the end of a handler run does not turn into a second run.

Shutdown (``stop``) claims nothing more, lets running jobs finish within a grace period, then
hands back what is left at once: queued again, its attempt not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from receiver.download import DownloadError, HostRefused, fetch_sample
from receiver.events import Event, StoredImage, TaskKind
from receiver.handlers import HandlerSet, PermanentError, RateLimited, RetryLater, Skipped
from receiver.health import Health, describe
from receiver.loops import backoff, run_forever, watch
from receiver.metrics import Metrics
from receiver.render import hide_queries, literal
from receiver.settings import Settings
from receiver.storage import Storage
from receiver.store.base import REFUSED, EventRecord, ImageRecord, Job, JobKind, Store

log = logging.getLogger("receiver.worker")

MAX_HANDLER_BACKOFF = 300.0
MAX_DOWNLOAD_BACKOFF = 30.0
MAX_DOWNLOAD_ATTEMPTS = 20
#: The longest wait a handler's RetryLater (a remote Retry-After) can ask for.
MAX_RETRY_LATER = 3600.0
#: Between tries of a job's own transition while the store is failing.
MAX_SETTLE_BACKOFF = 5.0
#: /readyz's warning while the last sample from an unknown host was refused.
SAMPLE_HOSTS_WARNING = "sample hosts"

__all__ = ["Worker", "backoff"]


@dataclass(eq=False)
class _Pool:
    """The slots of one job kind."""

    kind: JobKind
    capacity: int
    running: dict[int, tuple[Job, asyncio.Task[None]]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when jobs of this kind may be due, or a slot was freed."""

    @property
    def free(self) -> int:
        return self.capacity - len(self.running)


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
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.handlers = handlers
        self.client = client
        self.metrics = metrics
        self.health = health if health is not None else Health()
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self._pools = {
            JobKind.DOWNLOAD: _Pool(JobKind.DOWNLOAD, settings.download_workers),
            JobKind.HANDLER: _Pool(JobKind.HANDLER, settings.handler_workers),
        }
        self._claimers: list[asyncio.Task[None]] = []
        self._keeper: asyncio.Task[None] | None = None
        self.outcomes: Counter[str] = Counter()
        """Jobs this worker ended, by outcome: done, retry, dead, handed_back (for drains)."""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming and keeping leases, in background tasks of the running loop."""
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            (f"{kind.value} worker", functools.partial(self._claim_step, pool))
            for kind, pool in self._pools.items()
        ]
        loops.append(("wake-ups", self._wake_step))
        for name, step in loops:
            task = asyncio.create_task(self._forever(name, step), name=f"receiver-{name}")
            watch(task, name, self.health, log)
            self._claimers.append(task)
        self._keeper = asyncio.create_task(
            self._forever("lease keeper", self._lease_step), name="receiver-leases"
        )
        watch(self._keeper, "lease keeper", self.health, log)

    async def stop(self, grace: float, *, why: str = "shutting down") -> None:
        """Claim nothing more; give running jobs ``grace`` seconds; hand back the rest.
        ``why`` starts the log lines and the handed-back jobs' reason."""
        for task in self._claimers:
            task.cancel()
        await asyncio.gather(*self._claimers, return_exceptions=True)
        self._claimers.clear()
        running = [task for pool in self._pools.values() for _, task in pool.running.values()]
        if running:
            if grace > 0:
                log.info("%s: waiting up to %.0f s for %d job(s)", why, grace, len(running))
            # Leases are still renewed meanwhile, so no other replica takes these jobs.
            _, late = await asyncio.wait(running, timeout=grace)
            if late:
                log.warning("%s: handing back %d unfinished job(s)", why, len(late))
            await self._hand_back(f"handed back unfinished: {why}")
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None

    async def drain(self, claim_until: float, end: float, *, task_id: str | None = None) -> bool:
        """Run due jobs until none is due and none runs, claiming until ``claim_until`` and
        letting jobs run until ``end`` (``time.monotonic()`` values); then hand back at once
        whatever still runs. True when the queue went idle before ``claim_until``.

        With ``task_id``, only that task's jobs (inline processing, ``receiver.inline``)."""
        if task_id is None:  # inline processing skips it: one query less before the answer
            await self.store.reap()  # jobs of a process that died or froze mid-job come back
        self._keeper = asyncio.create_task(
            self._forever("lease keeper", self._lease_step), name="receiver-leases"
        )
        idle = False
        try:
            while (left := claim_until - time.monotonic()) > 0:
                claimed = 0
                for pool in self._pools.values():
                    claimed += await self._claim(pool, task_id)
                running = self._running()
                if not running and not claimed:
                    idle = True
                    break
                # A job's end frees a slot and may have made jobs (a download's handlers).
                await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if running := self._running():
                await asyncio.wait(running, timeout=max(0.0, end - time.monotonic()))
        finally:
            await self.stop(grace=0, why="the budget was spent")
        return idle

    def _running(self) -> list[asyncio.Task[None]]:
        return [task for pool in self._pools.values() for _, task in pool.running.values()]

    async def _hand_back(self, reason: str) -> None:
        jobs = [entry for pool in self._pools.values() for entry in pool.running.values()]
        for _, task in jobs:
            task.cancel()
        for job, task in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                if await self.store.release(job, reason):
                    self.outcomes["handed_back"] += 1
            except Exception as exc:  # the lease will expire and the reaper hands it back
                log.warning("could not hand back job %s: %s", job.id, describe(exc))

    async def _forever(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        await run_forever(name, step, health=self.health, log=log)

    # -- the loops ---------------------------------------------------------------------------

    async def _claim_step(self, pool: _Pool) -> None:
        # Clear before claiming: a wake-up that comes while the claim runs stays set.
        pool.wake.clear()
        free = pool.free
        if free > 0 and await self._claim(pool) == free:
            return  # all taken: more may be due
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.poll_interval_seconds):
                await pool.wake.wait()

    async def _claim(self, pool: _Pool, task_id: str | None = None) -> int:
        """Claim as many due jobs (of ``task_id`` only, if given) as the pool has free slots
        and start them; how many."""
        free = pool.free
        if free <= 0:
            return 0
        jobs = await self.store.claim(
            self.owner, free, self.settings.job_lease_seconds, kind=pool.kind, task_id=task_id
        )
        for job in jobs:
            task = asyncio.create_task(self._run(pool, job), name=f"job-{job.id}")
            pool.running[job.id] = (job, task)
        return len(jobs)

    async def _wake_step(self) -> None:
        """Turn the store's wake-ups (new jobs here or on a replica) into each pool's."""
        await self.store.wait_for_work(self.settings.poll_interval_seconds)
        for pool in self._pools.values():
            pool.wake.set()

    async def _lease_step(self) -> None:
        """Renew leases of running jobs and reap expired ones (other processes' crashes)."""
        await asyncio.sleep(self.settings.job_lease_seconds / 3)
        running = {
            job_id: entry for pool in self._pools.values() for job_id, entry in pool.running.items()
        }
        if running:
            held = await self.store.renew(
                [job for job, _ in running.values()], self.settings.job_lease_seconds
            )
            for job_id, (job, task) in running.items():
                if job_id not in held and not task.done():
                    log.warning("lost the lease of job %s; cancelling it", job.id)
                    task.cancel()
        await self.store.reap()

    # -- one job -----------------------------------------------------------------------------

    async def _run(self, pool: _Pool, job: Job) -> None:
        try:
            if job.kind is JobKind.DOWNLOAD:
                await self._download(job)
            else:
                await self._handle(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s failed in the worker itself", job.id)
            reason = f"internal error: {describe(exc)}"
            await self._settle(job, "retry", lambda: self.store.retry(job, reason, 5.0))
        finally:
            pool.running.pop(job.id, None)
            pool.wake.set()

    async def _settle(
        self,
        job: Job,
        what: str,
        transition: Callable[[], Awaitable[bool]],
        *,
        outcome: str | None = None,
    ) -> None:
        """Apply a job's transition, trying again while the store fails.

        The job stays in its pool meanwhile, so the lease keeper renews its lease; if the lease
        is lost after all (the store was gone for longer than the lease), the keeper cancels
        this, and the fenced transition could not have applied anyway.
        """
        failures = 0
        while True:
            try:
                applied = await transition()
            except Exception as exc:
                failures += 1
                self.health.fail("job results", describe(exc))
                log.warning(
                    "job %s: cannot record %s yet (%s); trying again", job.id, what, describe(exc)
                )
                await asyncio.sleep(backoff(0.5, failures, MAX_SETTLE_BACKOFF))
                continue
            if failures:
                self.health.ok("job results")
            if applied:  # not when the lease was lost: the job is another worker's now
                self.outcomes[outcome or what] += 1
            return

    async def _download(self, job: Job) -> None:
        event = await self.store.get_event(job.task_id)
        if event is None or not event.sample_url:
            await self._settle(job, "dead", lambda: self.store.bury(job, "event has no sample URL"))
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
        except HostRefused as exc:
            await self._host_refused(job, exc)
            return
        except DownloadError as exc:
            await self._download_failed(job, exc, deadline)
            return
        blob = await self.storage.put(
            got.path, sha256=got.sha256, size=got.size, content_type=got.content_type
        )
        image = ImageRecord(blob.location, blob.content_type, blob.size, blob.sha256)
        names = self.handlers.names_for(event.status)
        stored = False

        async def complete() -> bool:
            nonlocal stored
            stored = await self.store.complete_download(job, image, names)
            return stored

        await self._settle(job, "the stored image", complete, outcome="done")
        if stored:
            self.health.clear_warning(SAMPLE_HOSTS_WARNING)
            self.metrics.downloads.labels("ok").inc()
            self.metrics.download_bytes.inc(got.size)
            self.metrics.download_seconds.observe(time.monotonic() - started)
            self.metrics.url_seconds_left.observe(max(0.0, deadline - time.time()))
            log.info("task %s: stored %s (%d bytes)", job.task_id, blob.location, blob.size)

    async def _host_refused(self, job: Job, exc: HostRefused) -> None:
        """Never fetched, and impossible to miss: BFL may serve some accounts from a host the
        allowlist does not know, and then every image would be lost without a word."""
        log.warning(
            "task %s: sample refused, its host %r is not allowed: %s. If that host is BFL's, "
            "add it to RECEIVER_SAMPLE_HOSTS and replay the task (bfl-receiver replay %s)",
            job.task_id,
            exc.host,
            exc.reason,
            job.task_id,
        )
        self.metrics.downloads.labels("host_refused").inc()
        self.health.warn(
            SAMPLE_HOSTS_WARNING,
            f"a sample from {exc.host!r} was refused (task {job.task_id}): {exc.reason}",
        )
        reason = REFUSED + exc.reason
        await self._settle(job, "dead", lambda: self.store.bury(job, reason))

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
            await self._settle(job, "dead", lambda: self.store.bury(job, reason))
        else:
            log.info("task %s: download failed, retrying in %.1f s: %s", job.task_id, delay, exc)
            self.metrics.downloads.labels("retry").inc()
            await self._settle(job, "retry", lambda: self.store.retry(job, exc.reason, delay))

    async def _handle(self, job: Job) -> None:
        handler = self.handlers.get(job.handler)
        if handler is None:
            reason = f"handler {job.handler!r} is not configured here"
            await self._settle(job, "dead", lambda: self.store.bury(job, reason))
            return
        if job.attempts > self.settings.handler_max_attempts:
            # Claimed again and again without finishing: its runs keep killing the process.
            reason = "lease expired on every attempt (did the process crash?)"
            await self._settle(job, "dead", lambda: self.store.bury(job, reason))
            return
        record = await self.store.get_event(job.task_id)
        if record is None:
            await self._settle(job, "dead", lambda: self.store.bury(job, "the event was pruned"))
            return
        event = self._event(record, job)
        try:
            async with asyncio.timeout(self.settings.handler_timeout_seconds):
                await handler(event)
        except Exception as exc:
            await self._handler_failed(job, exc)
            return
        self.metrics.handler_runs.labels(job.handler, "ok").inc()
        await self._settle(job, "done", lambda: self.store.complete(job))

    async def _skipped(self, job: Job, exc: Skipped) -> None:
        reason = f"skipped: {exc}"[:2000]
        log.info("task %s: handler %s %s", job.task_id, job.handler, literal(reason))
        self.metrics.handler_runs.labels(job.handler, "skipped").inc()
        await self._settle(job, "done", lambda: self.store.complete(job, skipped=reason))

    async def _rate_limited(self, job: Job, exc: RateLimited) -> bool:
        """Defer the job without using up an attempt, while its waits stay within the bound;
        False when they would not (the caller then retries it as an ordinary failure)."""
        wait = min(max(exc.retry_after, 0.0), MAX_RETRY_LATER)
        bound = self.settings.rate_limit_max_wait_seconds
        if job.waited + wait > bound:
            log.info(
                "task %s: handler %s rate limited again, but it has waited %.0f s in all "
                "(RECEIVER_RATE_LIMIT_MAX_WAIT_SECONDS=%g): this wait counts as an attempt",
                job.task_id,
                job.handler,
                job.waited,
                bound,
            )
            return False
        reason = f"rate limited, waiting {wait:.1f} s: {exc}"[:2000]
        log.info("task %s: handler %s %s", job.task_id, job.handler, literal(hide_queries(reason)))
        self.metrics.handler_runs.labels(job.handler, "rate_limited").inc()
        await self._settle(job, "deferred", lambda: self.store.defer(job, reason, wait))
        return True

    async def _handler_failed(self, job: Job, exc: Exception) -> None:
        if isinstance(exc, Skipped):
            await self._skipped(job, exc)
            return
        if isinstance(exc, RateLimited) and await self._rate_limited(job, exc):
            return
        if isinstance(exc, TimeoutError):
            error = f"timed out after {self.settings.handler_timeout_seconds:g} s"
        else:
            error = f"{type(exc).__name__}: {exc}"[:2000]
        # Kept with the run (the store caps it) for `bfl-receiver show`.
        trace = "".join(traceback.format_exception(exc))
        shown = literal(hide_queries(error))
        permanent = isinstance(exc, PermanentError)
        if permanent or job.attempts >= self.settings.handler_max_attempts:
            log.warning(
                "task %s: handler %s dead %s: %s",
                job.task_id,
                job.handler,
                "at once (permanent error)" if permanent else f"after {job.attempts} attempts",
                shown,
            )
            self.metrics.handler_runs.labels(job.handler, "dead").inc()
            await self._settle(job, "dead", lambda: self.store.bury(job, error, traceback=trace))
            return
        delay = backoff(self.settings.handler_backoff_seconds, job.attempts, MAX_HANDLER_BACKOFF)
        if isinstance(exc, RetryLater) and exc.retry_after:
            delay = max(delay, min(exc.retry_after, MAX_RETRY_LATER))
        log.info(
            "task %s: handler %s failed (attempt %d of %d), retrying in %.1f s: %s",
            job.task_id,
            job.handler,
            job.attempts,
            self.settings.handler_max_attempts,
            delay,
            shown,
        )
        self.metrics.handler_runs.labels(job.handler, "retry").inc()
        await self._settle(
            job, "retry", lambda: self.store.retry(job, error, delay, traceback=trace)
        )

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
            # A finetune's task id is its finetune id (BFL: get_result?id=<finetune_id>).
            finetune_id=record.task_id if record.task_kind is TaskKind.FINETUNE else None,
        )


def _reader(storage: Storage, location: str) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        return await storage.read(location)

    return read
