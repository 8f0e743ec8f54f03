"""One job, from claim to its end: a download stored, a handler run, and what its outcome
makes of the job (done, retried, deferred by a rate limit, skipped, dead).

``Worker`` (``receiver.worker``) claims jobs and keeps their leases; it hands each one to a
``JobRunner``. A job's own transition is applied by ``settle``, which tries again while the
store fails, so a store hiccup at the end of a handler run does not turn into a second run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from receiver.download import Downloaded, DownloadError, HostRefused, fetch_sample
from receiver.events import Event, StoredImage, TaskKind
from receiver.handlers import HandlerSet, PermanentError, RateLimited, RetryLater, Skipped
from receiver.health import Health, describe
from receiver.loops import backoff
from receiver.metrics import Metrics
from receiver.render import hide_queries, literal
from receiver.settings import Settings
from receiver.storage import Storage, StoredBlob
from receiver.store.base import REFUSED, EventRecord, ImageRecord, Job, Store

# The worker's own log lines, wherever in it they are written.
log = logging.getLogger("receiver.worker")

MAX_HANDLER_BACKOFF = 300.0
MAX_DOWNLOAD_BACKOFF = 30.0
MAX_DOWNLOAD_ATTEMPTS = 20
#: How long a downloaded image is kept trying to reach a storage that fails (S3 down, a full
#: disk). Its signed URL may be dead by then, so these bytes are the only copy; well inside the
#: hour after which a staging file counts as abandoned (receiver.storage.local).
STORE_RETRY_SECONDS = 1800.0
MAX_STORE_BACKOFF = 30.0
#: The longest wait a handler's RetryLater (a remote Retry-After) can ask for.
MAX_RETRY_LATER = 3600.0
#: Between tries of a job's own transition while the store is failing.
MAX_SETTLE_BACKOFF = 5.0
#: /readyz's warning while the last sample from an unknown host was refused.
SAMPLE_HOSTS_WARNING = "sample hosts"
#: /readyz's warning while downloaded images cannot be put in storage.
STORAGE_WARNING = "storage"


@dataclass(eq=False)
class JobRunner:
    """Runs one job at a time per call; shared by a worker's pools."""

    settings: Settings
    store: Store
    storage: Storage
    handlers: HandlerSet
    client: httpx.AsyncClient
    metrics: Metrics
    health: Health
    outcomes: Counter[str]
    """Jobs ended, by outcome: done, retry, deferred, dead (the worker's, for drains)."""
    waiting_for_storage: Callable[[Job, bool], None] = lambda job, waiting: None
    """Told when a downloaded job starts (True) and stops (False) waiting for the storage: the
    worker frees its download slot meanwhile, so other URLs are fetched before they expire."""

    async def settle(
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

    async def download(self, job: Job) -> None:
        event = await self.store.get_event(job.task_id)
        if event is None or not event.sample_url:
            await self.settle(job, "dead", lambda: self.store.bury(job, "event has no sample URL"))
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
        blob = await self._keep(job, got)
        if blob is None:
            return
        image = ImageRecord(blob.location, blob.content_type, blob.size, blob.sha256)
        names = self.handlers.names_for(event.status)
        stored = False

        async def complete() -> bool:
            nonlocal stored
            stored = await self.store.complete_download(job, image, names)
            return stored

        await self.settle(job, "the stored image", complete, outcome="done")
        if stored:
            self.health.clear_warning(SAMPLE_HOSTS_WARNING)
            self.health.clear_warning(STORAGE_WARNING)
            self.metrics.downloads.labels("ok").inc()
            self.metrics.download_bytes.inc(got.size)
            self.metrics.download_seconds.observe(time.monotonic() - started)
            self.metrics.url_seconds_left.observe(max(0.0, deadline - time.time()))
            log.info("task %s: stored %s (%d bytes)", job.task_id, blob.location, blob.size)

    async def _keep(self, job: Job, got: Downloaded) -> StoredBlob | None:
        """Put the downloaded file in storage, trying again while storage fails; None once the
        job is dead for it (after STORE_RETRY_SECONDS). The job keeps its lease meanwhile, but
        not its download slot (``waiting_for_storage``): the next URLs are fetched into the
        staging folder, and wait there too, rather than expire in the queue."""
        failures = 0
        started = time.monotonic()
        try:
            while True:
                try:
                    blob = await self.storage.put(
                        got.path, sha256=got.sha256, size=got.size, content_type=got.content_type
                    )
                except Exception as exc:
                    if not failures:
                        self.waiting_for_storage(job, True)
                    failures += 1
                    reason = describe(exc)
                    self.metrics.storage_errors.inc()
                    # A warning, not "not ready": webhooks are still recorded without storage,
                    # and out of rotation no download would come to clear it.
                    self.health.warn(STORAGE_WARNING, f"cannot store images: {reason}")
                    if time.monotonic() - started >= STORE_RETRY_SECONDS:
                        why = (
                            f"downloaded, but the storage failed for {STORE_RETRY_SECONDS:g} s:"
                            f" {reason}"
                        )
                        log.error("task %s: download dead: %s", job.task_id, why)
                        self.metrics.downloads.labels("dead").inc()
                        await self.settle(job, "dead", functools.partial(self.store.bury, job, why))
                        return None
                    log.warning(
                        "task %s: cannot store the downloaded image yet (%s); keeping it and "
                        "trying again",
                        job.task_id,
                        reason,
                    )
                    await asyncio.sleep(backoff(1.0, failures, MAX_STORE_BACKOFF))
                    continue
                if failures:
                    log.info("task %s: stored after %d failed tries", job.task_id, failures)
                return blob
        finally:
            if failures:
                self.waiting_for_storage(job, False)
            # Consumed when stored; otherwise given up (dead, or the job handed back on
            # shutdown or a lost lease, to be downloaded again while its URL lives).
            got.path.unlink(missing_ok=True)

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
        await self.settle(job, "dead", lambda: self.store.bury(job, reason))

    async def _download_failed(self, job: Job, exc: DownloadError, deadline: float) -> None:
        if exc.local:
            self.health.warn(STORAGE_WARNING, f"cannot stage downloads: {exc.reason}")
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
            await self.settle(job, "dead", lambda: self.store.bury(job, reason))
        else:
            log.info("task %s: download failed, retrying in %.1f s: %s", job.task_id, delay, exc)
            self.metrics.downloads.labels("retry").inc()
            await self.settle(job, "retry", lambda: self.store.retry(job, exc.reason, delay))

    async def handle(self, job: Job) -> None:
        handler = self.handlers.get(job.handler)
        if handler is None:
            reason = f"handler {job.handler!r} is not configured here"
            await self.settle(job, "dead", lambda: self.store.bury(job, reason))
            return
        if job.attempts > self.settings.handler_max_attempts:
            # Claimed again and again without finishing: its runs keep killing the process.
            reason = "lease expired on every attempt (did the process crash?)"
            await self.settle(job, "dead", lambda: self.store.bury(job, reason))
            return
        record = await self.store.get_event(job.task_id)
        if record is None:
            await self.settle(job, "dead", lambda: self.store.bury(job, "the event was pruned"))
            return
        event = self._event(record, job)
        try:
            async with asyncio.timeout(self.settings.handler_timeout_seconds):
                await handler(event)
        except Exception as exc:
            await self._handler_failed(job, exc)
            return
        self.metrics.handler_runs.labels(job.handler, "ok").inc()
        await self.settle(job, "done", lambda: self.store.complete(job))

    async def _skipped(self, job: Job, exc: Skipped) -> None:
        reason = f"skipped: {exc}"[:2000]
        log.info("task %s: handler %s %s", job.task_id, job.handler, literal(reason))
        self.metrics.handler_runs.labels(job.handler, "skipped").inc()
        await self.settle(job, "done", lambda: self.store.complete(job, skipped=reason))

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
        await self.settle(job, "deferred", lambda: self.store.defer(job, reason, wait))
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
            await self.settle(job, "dead", lambda: self.store.bury(job, error, traceback=trace))
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
        await self.settle(
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
