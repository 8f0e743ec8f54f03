"""The embedded store: SQLite in WAL mode with ``synchronous=FULL`` and group commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from receiver.events import Status
from receiver.payload import Notice
from receiver.store.base import (
    FINETUNE_ENDPOINT,
    TERMINAL_STATUSES,
    UNBOUND_ACTIVE_SECONDS,
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
from receiver.store.rows import event_from, job_from, run_from, submission_from
from receiver.store.sqlite_db import SQLiteThread
from receiver.store.sqlite_record import add_handler_jobs, finish, record_notice
from receiver.store.sqlite_schema import migrate

_TERMINAL = ",".join("?" * len(TERMINAL_STATUSES))


def sqlite_path(url: str) -> str:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path`` or ``sqlite:///:memory:``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError(f"not a sqlite URL (expected {prefix}PATH): {url!r}")
    return url[len(prefix) :]


class SQLiteStore(Store):
    """Events and jobs in one SQLite file; one writer thread commits batches."""

    def __init__(self, url: str, *, synchronous: str = "FULL", create: bool = True) -> None:
        self.path = sqlite_path(url)
        self.create = create
        """False: open an existing file only (``sqlite3.OperationalError`` if there is none)."""
        self._db = SQLiteThread(self.path, synchronous=synchronous, create=create)
        self._work = asyncio.Event()

    @property
    def commits(self) -> int:
        return self._db.commits

    async def open(self) -> None:
        if self.path != ":memory:":
            if self.create:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            else:
                await asyncio.to_thread(_require_file, self.path)
        await asyncio.to_thread(self._db.start)
        await self._db.run(migrate)

    async def close(self) -> None:
        await asyncio.to_thread(self._db.stop)

    async def ping(self) -> None:
        await self._db.run(lambda c: c.execute("SELECT 1").fetchone())

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
        outcome = await self._db.run(
            lambda c: record_notice(
                c,
                notice,
                deadline,
                handlers,
                ref=ref,
                finetune_handlers=finetune_handlers,
                metadata=meta,
                via=via,
            )
        )
        if outcome is RecordOutcome.NEW:
            self._work.set()
        return outcome

    async def prepare_submission(self, ref: str, endpoint: str, metadata: dict[str, Any]) -> None:
        row = (ref, endpoint, json.dumps(metadata), time.time())
        await self._db.run(
            lambda c: c.execute(
                """INSERT INTO submissions (ref, endpoint, metadata, submitted_at)
                   VALUES (?, ?, ?, ?)""",
                row,
            )
        )

    async def bind_submission(self, ref: str, task_id: str, polling_url: str | None) -> None:
        def bind(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE submissions SET task_id = ?, polling_url = ? WHERE ref = ?",
                (task_id, polling_url, ref),
            )
            c.execute(
                """UPDATE events SET metadata = (SELECT metadata FROM submissions WHERE ref = ?)
                   WHERE task_id = ? AND metadata = '{}'""",
                (ref, task_id),
            )

        await self._db.run(bind)

    async def forget_submission(self, ref: str) -> None:
        await self._db.run(lambda c: c.execute("DELETE FROM submissions WHERE ref = ?", (ref,)))

    async def get_submission(
        self, *, ref: str | None = None, task_id: str | None = None
    ) -> Submission | None:
        column, value = ("ref", ref) if ref is not None else ("task_id", task_id)
        row = await self._db.run(
            lambda c: c.execute(
                f"SELECT * FROM submissions WHERE {column} = ?", (value,)
            ).fetchone()
        )
        return submission_from(row) if row is not None else None

    async def active_submissions(self, endpoint: str | None = None, *, within: float) -> int:
        def count(c: sqlite3.Connection) -> int:
            sql = f"""SELECT count(*) FROM submissions s WHERE s.submitted_at > ?
                      AND (s.task_id IS NOT NULL OR s.submitted_at > ?)
                      AND s.endpoint <> '{FINETUNE_ENDPOINT}'
                      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.task_id = s.task_id
                                      AND e.status IN ({_TERMINAL}))"""
            now = time.time()
            params: list[object] = [
                now - within,
                now - UNBOUND_ACTIVE_SECONDS,
                *TERMINAL_STATUSES,
            ]
            if endpoint is not None:
                sql += " AND s.endpoint = ?"
                params.append(endpoint)
            return int(c.execute(sql, params).fetchone()[0])

        return await self._db.run(count)

    async def due_for_reconcile(self, older_than: float, limit: int) -> list[Submission]:
        def due(c: sqlite3.Connection) -> list[sqlite3.Row]:
            now = time.time()
            return c.execute(
                f"""SELECT * FROM submissions s WHERE s.task_id IS NOT NULL
                      AND s.submitted_at < ? AND coalesce(s.next_poll_at, 0) <= ?
                      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.task_id = s.task_id
                                      AND e.status IN ({_TERMINAL}))
                    ORDER BY s.submitted_at LIMIT ?""",
                (now - older_than, now, *TERMINAL_STATUSES, limit),
            ).fetchall()

        return [submission_from(r) for r in await self._db.run(due)]

    async def reconciled(self, ref: str, next_in: float) -> None:
        at = time.time() + next_in
        await self._db.run(
            lambda c: c.execute(
                "UPDATE submissions SET polls = polls + 1, next_poll_at = ? WHERE ref = ?",
                (at, ref),
            )
        )

    async def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        kind: JobKind | None = None,
        *,
        task_id: str | None = None,
    ) -> list[Job]:
        lease = f"{owner}/{uuid.uuid4().hex}"
        kinds = [kind.value] if kind is not None else [k.value for k in JobKind]
        of_task, task_args = ("AND task_id = ?", (task_id,)) if task_id is not None else ("", ())

        def claim(c: sqlite3.Connection) -> list[Job]:
            now = time.time()
            rows = c.execute(
                f"""UPDATE jobs SET state = 'running', attempts = attempts + 1, lease = ?,
                       lease_until = ?, updated_at = ?
                   WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= ?
                                AND kind IN ({",".join("?" * len(kinds))}) {of_task}
                                ORDER BY run_at LIMIT ?)
                   RETURNING *""",
                (lease, now + lease_seconds, now, now, *kinds, *task_args, limit),
            ).fetchall()
            return sorted((job_from(r) for r in rows), key=lambda j: j.run_at)

        return await self._db.run(claim)

    async def renew(self, jobs: Sequence[Job], lease_seconds: float) -> set[int]:
        def renew(c: sqlite3.Connection) -> set[int]:
            until = time.time() + lease_seconds
            held = set()
            for job in jobs:
                cur = c.execute(
                    """UPDATE jobs SET lease_until = ?
                       WHERE id = ? AND lease = ? AND state = 'running'""",
                    (until, job.id, job.lease),
                )
                if cur.rowcount:
                    held.add(job.id)
            return held

        return await self._db.run(renew)

    async def complete(self, job: Job, *, skipped: str | None = None) -> bool:
        outcome = "ok" if skipped is None else "skipped"
        return await self._db.run(lambda c: finish(c, job, JobState.DONE, skipped, outcome))

    async def complete_download(
        self, job: Job, image: ImageRecord, handlers: Sequence[str]
    ) -> bool:
        def complete(c: sqlite3.Connection) -> bool:
            if not finish(c, job, JobState.DONE, None, "ok"):
                return False
            now = time.time()
            c.execute(
                """UPDATE events SET image_location = ?, image_content_type = ?, image_size = ?,
                       image_sha256 = ?, updated_at = ? WHERE task_id = ?""",
                (image.location, image.content_type, image.size, image.sha256, now, job.task_id),
            )
            add_handler_jobs(c, job.task_id, handlers, now)
            return True

        done = await self._db.run(complete)
        if done and handlers:
            self._work.set()
        return done

    async def retry(
        self, job: Job, error: str, delay: float, *, traceback: str | None = None
    ) -> bool:
        at = time.time() + delay
        return await self._db.run(
            lambda c: finish(c, job, JobState.QUEUED, error, "retry", run_at=at, tb=traceback)
        )

    async def bury(self, job: Job, error: str, *, traceback: str | None = None) -> bool:
        return await self._db.run(
            lambda c: finish(c, job, JobState.DEAD, error, "dead", tb=traceback)
        )

    async def release(self, job: Job, reason: str) -> bool:
        def release(c: sqlite3.Connection) -> bool:
            now = time.time()
            if not finish(c, job, JobState.QUEUED, reason, "released", run_at=now):
                return False
            c.execute("UPDATE jobs SET attempts = max(attempts - 1, 0) WHERE id = ?", (job.id,))
            return True

        released = await self._db.run(release)
        if released:
            self._work.set()
        return released

    async def defer(self, job: Job, reason: str, delay: float) -> bool:
        def defer(c: sqlite3.Connection) -> bool:
            at = time.time() + delay
            if not finish(c, job, JobState.QUEUED, reason, "rate limited", run_at=at):
                return False
            c.execute(
                "UPDATE jobs SET attempts = max(attempts - 1, 0), waited = waited + ? WHERE id = ?",
                (delay, job.id),
            )
            return True

        return await self._db.run(defer)

    async def reap(self) -> int:
        def reap(c: sqlite3.Connection) -> int:
            now = time.time()
            rows = c.execute(
                """UPDATE jobs SET state = 'queued', lease = NULL, lease_until = NULL,
                       run_at = ?, updated_at = ?, last_error = 'lease expired'
                   WHERE state = 'running' AND lease_until < ? RETURNING id, attempts""",
                (now, now, now),
            ).fetchall()
            c.executemany(
                """INSERT INTO job_runs (job_id, attempt, outcome, error, finished_at)
                   VALUES (?, ?, 'lease expired', 'lease expired', ?)""",
                [(r["id"], r["attempts"], now) for r in rows],
            )
            return len(rows)

        reaped = await self._db.run(reap)
        if reaped:
            self._work.set()
        return reaped

    async def replay(self, task_id: str | None = None, *, include_done: bool = False) -> int:
        def replay(c: sqlite3.Connection) -> int:
            now = time.time()
            where = "(state = 'dead' OR (? AND state = 'done' AND kind = 'handler'))"
            params: list[object] = [now, now, include_done]
            if task_id is not None:
                where += " AND task_id = ?"
                params.append(task_id)
            cur = c.execute(
                f"""UPDATE jobs SET state = 'queued', attempts = 0, waited = 0, lease = NULL,
                        lease_until = NULL, run_at = ?, updated_at = ?
                    WHERE {where}""",
                params,
            )
            return cur.rowcount

        replayed = await self._db.run(replay)
        if replayed:
            self._work.set()
        return replayed

    async def wait_for_work(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll interval
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        self._work.clear()

    async def get_event(self, task_id: str) -> EventRecord | None:
        row = await self._db.run(
            lambda c: c.execute("SELECT * FROM events WHERE task_id = ?", (task_id,)).fetchone()
        )
        return event_from(row) if row is not None else None

    async def list_events(
        self, *, status: Status | None = None, limit: int = 100, dead_only: bool = False
    ) -> list[EventRecord]:
        def query(c: sqlite3.Connection) -> list[sqlite3.Row]:
            where: list[str] = ["1"]
            params: list[object] = []
            if status is not None:
                where.append("status = ?")
                params.append(status.value)
            if dead_only:
                where.append(
                    """EXISTS (SELECT 1 FROM jobs WHERE jobs.task_id = events.task_id
                               AND jobs.state = 'dead')"""
                )
            return c.execute(
                f"""SELECT * FROM events WHERE {" AND ".join(where)}
                    ORDER BY received_at DESC, task_id LIMIT ?""",
                (*params, limit),
            ).fetchall()

        return [event_from(r) for r in await self._db.run(query)]

    async def jobs_of(self, task_ids: Sequence[str]) -> list[Job]:
        # One parameter whatever the count (SQLite caps bound variables): a JSON array.
        ids = json.dumps(list(task_ids))
        rows = await self._db.run(
            lambda c: c.execute(
                """SELECT * FROM jobs WHERE task_id IN (SELECT value FROM json_each(?))
                   ORDER BY task_id, id""",
                (ids,),
            ).fetchall()
        )
        return [job_from(r) for r in rows]

    async def dead_jobs(self, limit: int = 100) -> list[Job]:
        rows = await self._db.run(
            lambda c: c.execute(
                """SELECT * FROM jobs WHERE state = 'dead'
                   ORDER BY updated_at DESC, id DESC LIMIT ?""",
                (limit,),
            ).fetchall()
        )
        return [job_from(r) for r in rows]

    async def image_hashes(self) -> set[str]:
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT DISTINCT image_sha256 FROM events WHERE image_sha256 IS NOT NULL"
            ).fetchall()
        )
        return {r[0] for r in rows}

    async def jobs_for(self, task_id: str) -> list[Job]:
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT * FROM jobs WHERE task_id = ? ORDER BY id", (task_id,)
            ).fetchall()
        )
        return [job_from(r) for r in rows]

    async def runs_for(self, task_id: str) -> list[JobRun]:
        rows = await self._db.run(
            lambda c: c.execute(
                """SELECT r.* FROM job_runs r JOIN jobs j ON j.id = r.job_id
                   WHERE j.task_id = ? ORDER BY r.finished_at, r.job_id""",
                (task_id,),
            ).fetchall()
        )
        return [run_from(r) for r in rows]

    async def counts(self) -> QueueCounts:
        rows = await self._db.run(
            lambda c: c.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state").fetchall()
        )
        by_state = {r["state"]: r["n"] for r in rows}
        return QueueCounts(
            queued=by_state.get("queued", 0),
            running=by_state.get("running", 0),
            dead=by_state.get("dead", 0),
            done=by_state.get("done", 0),
        )

    async def prune(self, older_than: float) -> int:
        def prune(c: sqlite3.Connection) -> int:
            cutoff = time.time() - older_than
            pruned = c.execute(
                """DELETE FROM events WHERE received_at < ? AND NOT EXISTS (
                       SELECT 1 FROM jobs WHERE jobs.task_id = events.task_id
                       AND jobs.state IN ('queued', 'running'))
                   RETURNING task_id, status""",
                (cutoff,),
            ).fetchall()
            # A finished task's submission and claim go with its event (see Store.prune).
            ended = [(task_id,) for task_id, status in pruned if status in TERMINAL_STATUSES]
            c.executemany("DELETE FROM submissions WHERE task_id = ?", ended)
            c.executemany("DELETE FROM webhook_refs WHERE task_id = ?", ended)
            c.execute(
                "DELETE FROM submissions WHERE task_id IS NULL AND submitted_at < ?", (cutoff,)
            )
            return len(pruned)

        return await self._db.run(prune)


def _require_file(path: str) -> None:
    # The connection opens with mode=rw too (no file is ever created): this check is for the
    # message, which names the file as the current folder makes it.
    if not Path(path).is_file():
        raise StoreMissing(os.path.abspath(path))
