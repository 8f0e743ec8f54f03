"""Events and jobs in PostgreSQL, shared by several receiver replicas.

The SQLite store's tables and state machine (see ``base.py``), made safe for many processes:

- Claims lock due rows with ``FOR UPDATE SKIP LOCKED``: replicas claiming at once take disjoint
  jobs without waiting on each other. The reaper skips locked rows the same way.
- Every time (leases, ``run_at``, ``received_at``) is the database's clock, so replicas whose
  clocks disagree still agree on when a lease ran out.
- Wake-ups cross processes with LISTEN/NOTIFY: each store listens on a dedicated connection;
  a change that makes jobs due (new event, finished download, replay, reap) is announced with a
  NOTIFY after it commits. Idle workers still poll at their interval, which covers a lost
  notification (a crash between commit and NOTIFY, a dropped listening connection).
- Finished jobs leave the claim path at once: the partial indexes cover only ``queued`` and
  ``running`` rows. The rows themselves go with their event: ``prune`` (``bfl-receiver prune``)
  deletes events whose jobs have all ended, and the foreign keys cascade to jobs and runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from receiver.dsn import dsn_target, split_connect_timeout
from receiver.events import Status
from receiver.payload import Notice
from receiver.store import postgres_submissions as submissions
from receiver.store.base import (
    TERMINAL_STATUSES,
    EventRecord,
    ImageRecord,
    Job,
    JobKind,
    JobRun,
    JobState,
    QueueCounts,
    RecordOutcome,
    Store,
    StoreMissing,
    Submission,
    Via,
)
from receiver.store.postgres_record import add_handler_jobs, finish, record_notice
from receiver.store.postgres_rows import NOW, rowcount
from receiver.store.postgres_schema import migrate
from receiver.store.postgres_wake import Wakeups
from receiver.store.rows import event_from, job_from, run_from

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy


class PostgresStore(Store):
    """Events and jobs in PostgreSQL, through a connection pool; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 60.0,
        create: bool = True,
    ) -> None:
        self.url, self._connect_timeout = split_connect_timeout(url)
        self.create = create
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._wake = Wakeups(self.url)

    @property
    def pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL store is not open")
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=self._min_size,
            max_size=self._max_size,
            command_timeout=self._command_timeout,
            timeout=self._connect_timeout,
        )
        try:
            async with self._pool.acquire() as conn:
                if not self.create and await conn.fetchval(
                    "SELECT to_regclass('schema_version') IS NULL"
                ):
                    # The database exists but no receiver ever used it: a wrong URL.
                    raise StoreMissing(f"{dsn_target(self.url)} (it has no receiver schema)")
                await migrate(conn)
            await self._wake.start(self._pool)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._wake.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        async with self._cut_on_cancel() as c:  # a probe's timeout is not held up
            await c.fetchval("SELECT 1")

    @contextlib.asynccontextmanager
    async def _cut_on_cancel(
        self, *, atomic: bool = False
    ) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection (in a transaction when ``atomic``) that is closed at once when
        its caller is cancelled, by a webhook's or a probe's timeout.

        asyncpg's own cleanup (ROLLBACK, then the connection's reset on release) talks to the
        server, and against a hung one (a stalled disk, a paused VM, a SIGSTOP) it waits as
        long as the hang: the caller's timeout would not end the wait. Cutting the socket ends
        it now, and the server rolls back a transaction whose connection is gone.
        """
        async with self.pool.acquire() as c:
            transaction = c.transaction() if atomic else None
            try:
                if transaction is not None:
                    await transaction.start()
                yield c
                if transaction is not None:
                    await transaction.commit()
            except asyncio.CancelledError:
                c.terminate()
                raise
            except BaseException:
                if transaction is not None and not c.is_closed():
                    # The error to report is the one raised; a rollback that fails too (the
                    # transaction never started, the connection broke) adds nothing to it.
                    with contextlib.suppress(Exception):
                        await transaction.rollback()
                raise

    async def record(
        self,
        notice: Notice,
        *,
        deadline: float | None,
        handlers: Sequence[str],
        ref: str | None = None,
        finetune_handlers: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        via: Via = Via.WEBHOOK,
    ) -> RecordOutcome:
        meta = json.dumps(metadata) if metadata is not None else None

        # Cut on cancel: a webhook's timeout (receiver.app.RECORD_TIMEOUT) is not held up by
        # a rollback when the server hangs.
        async with self._cut_on_cancel(atomic=True) as c:
            outcome = await record_notice(
                c,
                notice,
                deadline,
                handlers,
                ref=ref,
                finetune_handlers=finetune_handlers,
                metadata=meta,
                via=via,
            )
        if outcome is RecordOutcome.NEW:
            self._wake.announce()
        return outcome

    async def prepare_submission(self, ref: str, endpoint: str, metadata: dict[str, Any]) -> None:
        await submissions.prepare(self.pool, ref, endpoint, metadata)

    async def bind_submission(self, ref: str, task_id: str, polling_url: str | None) -> None:
        await submissions.bind(self.pool, ref, task_id, polling_url)

    async def forget_submission(self, ref: str) -> None:
        await submissions.forget(self.pool, ref)

    async def get_submission(
        self, *, ref: str | None = None, task_id: str | None = None
    ) -> Submission | None:
        return await submissions.get(self.pool, ref, task_id)

    async def active_submissions(self, endpoint: str | None = None, *, within: float) -> int:
        return await submissions.active(self.pool, endpoint, within)

    async def due_for_reconcile(self, older_than: float, limit: int) -> list[Submission]:
        return await submissions.due(self.pool, older_than, limit)

    async def reconciled(self, ref: str, next_in: float) -> None:
        await submissions.reconciled(self.pool, ref, next_in)

    async def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        kind: JobKind | None = None,
        *,
        task_id: str | None = None,
    ) -> list[Job]:
        if limit <= 0:
            return []
        # A fragment of its own, not "$5 IS NULL OR ...": a generic plan could not use the
        # (task_id, ...) index for inline processing's claims then.
        of_task, task_args = ("AND task_id = $5", [task_id]) if task_id is not None else ("", [])
        rows = await self.pool.fetch(
            f"""WITH due AS (
                    SELECT id FROM jobs WHERE state = 'queued' AND run_at <= {NOW}
                    AND ($4::text IS NULL OR kind = $4) {of_task}
                    ORDER BY run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
                UPDATE jobs SET state = 'running', attempts = attempts + 1, lease = $1,
                    lease_until = {NOW} + $2, updated_at = {NOW}
                FROM due WHERE jobs.id = due.id
                RETURNING jobs.*""",
            f"{owner}/{uuid.uuid4().hex}",
            lease_seconds,
            limit,
            kind.value if kind is not None else None,
            *task_args,
        )
        return sorted((job_from(r) for r in rows), key=lambda j: (j.run_at, j.id))

    async def renew(self, jobs: Sequence[Job], lease_seconds: float) -> set[int]:
        if not jobs:
            return set()
        rows = await self.pool.fetch(
            f"""UPDATE jobs SET lease_until = {NOW} + $1
                FROM unnest($2::bigint[], $3::text[]) AS held (id, lease)
                WHERE jobs.id = held.id AND jobs.lease = held.lease AND jobs.state = 'running'
                RETURNING jobs.id""",
            lease_seconds,
            [job.id for job in jobs],
            [job.lease for job in jobs],
        )
        return {r["id"] for r in rows}

    async def complete(self, job: Job, *, skipped: str | None = None) -> bool:
        outcome = "ok" if skipped is None else "skipped"
        return await finish(self.pool, job, JobState.DONE, skipped, outcome)

    async def complete_download(
        self, job: Job, image: ImageRecord, handlers: Sequence[str]
    ) -> bool:
        async with self.pool.acquire() as c, c.transaction():
            if not await finish(c, job, JobState.DONE, None, "ok"):
                return False
            await c.execute(
                f"""UPDATE events SET image_location = $1, image_content_type = $2,
                        image_size = $3, image_sha256 = $4, updated_at = {NOW}
                    WHERE task_id = $5""",
                image.location,
                image.content_type,
                image.size,
                image.sha256,
                job.task_id,
            )
            await add_handler_jobs(c, job.task_id, handlers)
        if handlers:
            self._wake.announce()
        return True

    async def retry(
        self, job: Job, error: str, delay: float, *, traceback: str | None = None
    ) -> bool:
        return await finish(
            self.pool, job, JobState.QUEUED, error, "retry", delay=delay, tb=traceback
        )

    async def bury(self, job: Job, error: str, *, traceback: str | None = None) -> bool:
        return await finish(self.pool, job, JobState.DEAD, error, "dead", tb=traceback)

    async def release(self, job: Job, reason: str) -> bool:
        async with self.pool.acquire() as c, c.transaction():
            if not await finish(c, job, JobState.QUEUED, reason, "released", delay=0.0):
                return False
            await c.execute(
                "UPDATE jobs SET attempts = greatest(attempts - 1, 0) WHERE id = $1", job.id
            )
        self._wake.announce()
        return True

    async def defer(self, job: Job, reason: str, delay: float) -> bool:
        async with self.pool.acquire() as c, c.transaction():
            if not await finish(c, job, JobState.QUEUED, reason, "rate limited", delay=delay):
                return False
            await c.execute(
                """UPDATE jobs SET attempts = greatest(attempts - 1, 0), waited = waited + $2
                   WHERE id = $1""",
                job.id,
                delay,
            )
        return True

    async def reap(self) -> int:
        # SKIP LOCKED: a row locked right now is being claimed, renewed or finished; leave it
        # to the next round rather than wait (and never deadlock with another replica's reaper).
        rows = await self.pool.fetch(
            f"""WITH expired AS (
                    UPDATE jobs SET state = 'queued', lease = NULL, lease_until = NULL,
                        run_at = {NOW}, updated_at = {NOW}, last_error = 'lease expired'
                    WHERE id IN (SELECT id FROM jobs WHERE state = 'running'
                                 AND lease_until < {NOW} FOR UPDATE SKIP LOCKED)
                    RETURNING id, attempts)
                INSERT INTO job_runs (job_id, attempt, outcome, error, finished_at)
                SELECT id, attempts, 'lease expired', 'lease expired', {NOW} FROM expired
                RETURNING job_id"""
        )
        if rows:
            self._wake.announce()
        return len(rows)

    async def replay(self, task_id: str | None = None, *, include_done: bool = False) -> int:
        status = await self.pool.execute(
            f"""UPDATE jobs SET state = 'queued', attempts = 0, waited = 0, lease = NULL,
                    lease_until = NULL, run_at = {NOW}, updated_at = {NOW}
                WHERE (state = 'dead' OR ($1 AND state = 'done' AND kind = 'handler'))
                AND ($2::text IS NULL OR task_id = $2)""",
            include_done,
            task_id,
        )
        replayed = rowcount(status)
        if replayed:
            self._wake.announce()
        return replayed

    async def wait_for_work(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll interval
        await self._wake.wait(timeout)

    async def get_event(self, task_id: str) -> EventRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM events WHERE task_id = $1", task_id)
        return event_from(row) if row is not None else None

    async def list_events(
        self, *, status: Status | None = None, limit: int = 100, dead_only: bool = False
    ) -> list[EventRecord]:
        rows = await self.pool.fetch(
            """SELECT * FROM events WHERE ($1::text IS NULL OR status = $1)
               AND (NOT $3 OR EXISTS (SELECT 1 FROM jobs WHERE jobs.task_id = events.task_id
                                      AND jobs.state = 'dead'))
               ORDER BY received_at DESC, task_id LIMIT $2""",
            status.value if status is not None else None,
            limit,
            dead_only,
        )
        return [event_from(r) for r in rows]

    async def jobs_of(self, task_ids: Sequence[str]) -> list[Job]:
        rows = await self.pool.fetch(
            "SELECT * FROM jobs WHERE task_id = ANY($1::text[]) ORDER BY task_id, id",
            list(task_ids),
        )
        return [job_from(r) for r in rows]

    async def dead_jobs(self, limit: int = 100) -> list[Job]:
        rows = await self.pool.fetch(
            """SELECT * FROM jobs WHERE state = 'dead'
               ORDER BY updated_at DESC, id DESC LIMIT $1""",
            limit,
        )
        return [job_from(r) for r in rows]

    async def image_hashes(self) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT image_sha256 FROM events WHERE image_sha256 IS NOT NULL"
        )
        return {r["image_sha256"] for r in rows}

    async def jobs_for(self, task_id: str) -> list[Job]:
        rows = await self.pool.fetch("SELECT * FROM jobs WHERE task_id = $1 ORDER BY id", task_id)
        return [job_from(r) for r in rows]

    async def runs_for(self, task_id: str) -> list[JobRun]:
        rows = await self.pool.fetch(
            """SELECT r.* FROM job_runs r JOIN jobs j ON j.id = r.job_id
               WHERE j.task_id = $1 ORDER BY r.finished_at, r.job_id""",
            task_id,
        )
        return [run_from(r) for r in rows]

    async def counts(self) -> QueueCounts:
        rows = await self.pool.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        by_state = {r["state"]: r["n"] for r in rows}
        return QueueCounts(
            queued=by_state.get("queued", 0),
            running=by_state.get("running", 0),
            dead=by_state.get("dead", 0),
            done=by_state.get("done", 0),
        )

    async def prune(self, older_than: float) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            pruned = await conn.fetch(
                f"""DELETE FROM events WHERE received_at < {NOW} - $1 AND NOT EXISTS (
                        SELECT 1 FROM jobs WHERE jobs.task_id = events.task_id
                        AND jobs.state IN ('queued', 'running'))
                    RETURNING task_id, status""",
                older_than,
            )
            # A finished task's submission and claim go with its event (see Store.prune).
            ended = [r["task_id"] for r in pruned if r["status"] in TERMINAL_STATUSES]
            await conn.execute("DELETE FROM submissions WHERE task_id = ANY($1::text[])", ended)
            await conn.execute("DELETE FROM webhook_refs WHERE task_id = ANY($1::text[])", ended)
            await conn.execute(
                f"DELETE FROM submissions WHERE task_id IS NULL AND submitted_at < {NOW} - $1",
                older_than,
            )
        return len(pruned)
