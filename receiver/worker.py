"""The worker: claims due jobs and keeps their leases; ``receiver.jobrun`` runs each one
(downloads samples, runs handlers, retries, defers, buries).

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
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from receiver.handlers import HandlerSet
from receiver.health import Health, describe
from receiver.jobrun import JobRunner
from receiver.loops import backoff, run_forever, watch
from receiver.metrics import Metrics
from receiver.settings import Settings
from receiver.storage import Storage
from receiver.store.base import Job, JobKind, Store

log = logging.getLogger("receiver.worker")

__all__ = ["Worker", "backoff"]


@dataclass(eq=False)
class _Pool:
    """The slots of one job kind."""

    kind: JobKind
    capacity: int
    running: dict[int, tuple[Job, asyncio.Task[None]]] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)
    """Running jobs that hold no slot: downloads done, waiting for the storage to answer."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when jobs of this kind may be due, or a slot was freed."""

    @property
    def free(self) -> int:
        return self.capacity - len(self.running) + len(self.idle)


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
        self._runner = JobRunner(
            settings,
            store,
            storage,
            handlers,
            client,
            metrics,
            self.health,
            self.outcomes,
            self._waiting_for_storage,
        )

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

    def _waiting_for_storage(self, job: Job, waiting: bool) -> None:
        pool = self._pools[JobKind.DOWNLOAD]
        if waiting:
            pool.idle.add(job.id)
            pool.wake.set()  # a slot is free
        else:
            pool.idle.discard(job.id)

    async def _run(self, pool: _Pool, job: Job) -> None:
        try:
            if job.kind is JobKind.DOWNLOAD:
                await self._runner.download(job)
            else:
                await self._runner.handle(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s failed in the worker itself", job.id)
            reason = f"internal error: {describe(exc)}"
            await self._runner.settle(job, "retry", lambda: self.store.retry(job, reason, 5.0))
        finally:
            pool.running.pop(job.id, None)
            pool.idle.discard(job.id)
            pool.wake.set()
