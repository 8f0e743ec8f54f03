"""What the PostgreSQL store runs inside its transactions: recording a notice, claiming a
reference, adding handler jobs, and the fenced transitions of a running job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from receiver.events import Status, TaskKind
from receiver.payload import Notice
from receiver.store.base import (
    FINETUNE_ENDPOINT,
    ForeignReference,
    Job,
    JobState,
    RecordOutcome,
    Via,
    cap_traceback,
    names_finetune,
)
from receiver.store.postgres_rows import NOW

if TYPE_CHECKING:
    from receiver.store.postgres_schema import Connection

#: The event's task kind, decided in the recording statement: the notice names a finetune
#: ($9), or a submission it belongs to (by reference $8 or task id $7) was one.
_KIND = f"""CASE WHEN $9::boolean OR EXISTS (SELECT 1 FROM submissions
                 WHERE (ref = $8 OR task_id = $7) AND endpoint = '{FINETUNE_ENDPOINT}')
            THEN 'finetune' ELSE 'generation' END"""


async def record_notice(
    c: Connection,
    notice: Notice,
    deadline: float | None,
    handlers: Sequence[str],
    *,
    ref: str | None,
    finetune_handlers: Sequence[str],
    metadata: str | None,
    via: Via,
) -> RecordOutcome:
    if ref is not None:
        await _claim(c, ref, notice.task_id)
    fields = (
        notice.status.value,
        _text(notice.raw_status),
        _text(notice.sample_url),
        _text(notice.error),
        notice.raw,  # JSON text: a NUL in it is still the escape \u0000, which json accepts
        deadline,
    )
    hint = names_finetune(notice)
    kind = TaskKind.GENERATION
    # Only webhooks are deliveries: a polled result is not one.
    delivered = 1 if via is Via.WEBHOOK else 0
    for _ in range(3):
        # The first delivery of a task is the common case: one statement, no lock taken.
        # The URL's metadata, else the submission's (by reference, else by task id), goes in
        # with the row.
        inserted = await c.fetchval(
            f"""INSERT INTO events (status, raw_status, sample_url, error, payload, deadline,
                    task_id, received_at, updated_at, via, deliveries, metadata, task_kind)
                VALUES ($1, $2, $3, $4, $5, $6, $7, {NOW}, {NOW}, $11, $12, coalesce($10::jsonb,
                    (SELECT metadata FROM submissions WHERE ref = $8 OR task_id = $7
                     ORDER BY ref = $8 DESC NULLS LAST LIMIT 1), '{{}}'), {_KIND})
                ON CONFLICT (task_id) DO NOTHING RETURNING task_kind""",
            *fields,
            notice.task_id,
            ref,
            hint,
            metadata,
            via.value,
            delivered,
        )
        if inserted:
            kind = TaskKind(inserted)
            break
        # Known task: lock its row so that concurrent deliveries (on any replica) decide in
        # turn, each seeing what the one before committed.
        old = await c.fetchval(
            "SELECT status FROM events WHERE task_id = $1 FOR UPDATE", notice.task_id
        )
        if old is None:  # pruned between the two statements: insert it afresh
            continue
        if Status(old).terminal or not notice.status.terminal:
            # Already final, or nothing new: count the delivery, keep what was recorded first
            # (a late Pending must not overwrite a Ready).
            await c.execute(
                f"""UPDATE events SET deliveries = deliveries + $3, updated_at = {NOW},
                        metadata = {_fill_metadata("$2")} WHERE task_id = $1""",
                notice.task_id,
                metadata,
                delivered,
            )
            return RecordOutcome.DUPLICATE if Status(old).terminal else RecordOutcome.PROGRESS
        updated = await c.fetchval(
            f"""UPDATE events SET status = $1, raw_status = $2, sample_url = $3, error = $4,
                    payload = $5, deadline = $6, deliveries = deliveries + $11,
                    updated_at = {NOW}, via = $12,
                    metadata = {_fill_metadata("$10")},
                    task_kind = CASE WHEN task_kind = 'finetune' THEN 'finetune' ELSE {_KIND} END
                WHERE task_id = $7 RETURNING task_kind""",
            *fields,
            notice.task_id,
            ref,
            hint,
            metadata,
            delivered,
            via.value,
        )
        kind = TaskKind(updated)
        break
    else:
        raise RuntimeError(f"event {notice.task_id!r} kept vanishing while being recorded")
    if not notice.status.terminal:
        return RecordOutcome.PROGRESS
    if kind is TaskKind.FINETUNE:
        await add_handler_jobs(c, notice.task_id, finetune_handlers)
    elif notice.status is Status.READY and notice.sample_url:
        await c.execute(
            f"""INSERT INTO jobs (task_id, kind, state, run_at, created_at, updated_at)
                VALUES ($1, 'download', 'queued', {NOW}, {NOW}, {NOW})""",
            notice.task_id,
        )
    else:
        await add_handler_jobs(c, notice.task_id, handlers)
    return RecordOutcome.NEW


def _fill_metadata(param: str) -> str:
    """The URL's metadata (``param``) replaces an event's only while that one is empty."""
    return f"coalesce(CASE WHEN metadata = '{{}}'::jsonb THEN {param}::jsonb END, metadata)"


async def _claim(c: Connection, ref: str, task_id: str) -> None:
    """Raise ForeignReference unless ``ref`` is ``task_id``'s: bound to it, or claimed by it
    now or before (see base.py). One statement: the submission's binding, and the claim's
    owner; ON CONFLICT DO UPDATE locks a claim made concurrently (by any replica) and returns
    its owner once that one commits."""
    row = await c.fetchrow(
        f"""WITH bound AS (SELECT task_id FROM submissions WHERE ref = $1),
                claim AS (
                    INSERT INTO webhook_refs (ref, task_id, claimed_at)
                    SELECT $1, $2, {NOW}
                    WHERE NOT EXISTS (SELECT 1 FROM bound WHERE task_id IS NOT NULL)
                    ON CONFLICT (ref) DO UPDATE SET ref = excluded.ref
                    RETURNING task_id)
            SELECT (SELECT task_id FROM bound) AS bound, (SELECT task_id FROM claim) AS owner""",
        ref,
        task_id,
    )
    assert row is not None
    owner = row["bound"] if row["bound"] is not None else row["owner"]
    if owner != task_id:
        raise ForeignReference(ref)


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL (SQLite can): a NUL the sender decoded from ``\\u0000``
    must not make a webhook unrecordable, so it becomes U+FFFD, the replacement character."""
    return value.replace("\x00", "\ufffd") if value else value


async def add_handler_jobs(c: Connection, task_id: str, handlers: Sequence[str]) -> None:
    await c.execute(
        f"""INSERT INTO jobs (task_id, kind, handler, state, run_at, created_at, updated_at)
            SELECT $1, 'handler', name, 'queued', {NOW}, {NOW}, {NOW}
            FROM unnest($2::text[]) AS name
            ON CONFLICT (task_id, kind, handler) DO NOTHING""",
        task_id,
        list(handlers),
    )


async def finish(
    c: Connection | asyncpg.Pool[asyncpg.Record],
    job: Job,
    state: JobState,
    error: str | None,
    outcome: str,
    *,
    delay: float | None = None,
    tb: str | None = None,
) -> bool:
    """Move a running job on, fenced by its lease, and record the attempt: one statement."""
    finished = await c.fetchval(
        f"""WITH moved AS (
                UPDATE jobs SET state = $1, lease = NULL, lease_until = NULL, last_error = $2,
                    run_at = coalesce({NOW} + $3::double precision, run_at), updated_at = {NOW}
                WHERE id = $4 AND lease = $5 AND state = 'running'
                RETURNING id, attempts)
            INSERT INTO job_runs (job_id, attempt, outcome, error, finished_at, traceback)
            SELECT id, attempts, $6, $2, {NOW}, $7 FROM moved
            RETURNING true""",
        state.value,
        # A handler's exception may carry a NUL, which PostgreSQL text cannot hold.
        _text(error),
        delay,
        job.id,
        job.lease,
        outcome,
        _text(cap_traceback(tb)),
    )
    return bool(finished)
