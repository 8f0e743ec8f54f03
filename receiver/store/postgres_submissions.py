"""The PostgreSQL side of submissions: the same queries as SQLite's, in PostgreSQL's words."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from receiver.store.base import (
    FINETUNE_ENDPOINT,
    TERMINAL_STATUSES,
    UNBOUND_ACTIVE_SECONDS,
    Submission,
)
from receiver.store.postgres_rows import NOW
from receiver.store.rows import submission_from

#: The database's clock, as epoch seconds (as in postgres.py).

_UNFINISHED = """NOT EXISTS (SELECT 1 FROM events e WHERE e.task_id = s.task_id
                                AND e.status = ANY($1::text[]))"""

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


async def prepare(pool: Pool, ref: str, endpoint: str, metadata: dict[str, Any]) -> None:
    await pool.execute(
        f"""INSERT INTO submissions (ref, endpoint, metadata, submitted_at)
            VALUES ($1, $2, $3, {NOW})""",
        ref,
        endpoint,
        json.dumps(metadata),
    )


async def bind(pool: Pool, ref: str, task_id: str, polling_url: str | None) -> None:
    async with pool.acquire() as c, c.transaction():
        await c.execute(
            "UPDATE submissions SET task_id = $2, polling_url = $3 WHERE ref = $1",
            ref,
            task_id,
            polling_url,
        )
        # The webhook may have come first: give its event the metadata now.
        await c.execute(
            """UPDATE events SET metadata = s.metadata FROM submissions s
               WHERE s.ref = $1 AND events.task_id = $2 AND events.metadata = '{}'::jsonb""",
            ref,
            task_id,
        )


async def forget(pool: Pool, ref: str) -> None:
    await pool.execute("DELETE FROM submissions WHERE ref = $1", ref)


async def get(pool: Pool, ref: str | None, task_id: str | None) -> Submission | None:
    if ref is not None:
        row = await pool.fetchrow("SELECT * FROM submissions WHERE ref = $1", ref)
    else:
        row = await pool.fetchrow("SELECT * FROM submissions WHERE task_id = $1", task_id)
    return submission_from(row) if row is not None else None


async def active(pool: Pool, endpoint: str | None, within: float) -> int:
    count: int = await pool.fetchval(
        f"""SELECT count(*) FROM submissions s
            WHERE s.submitted_at > {NOW} - $2 AND {_UNFINISHED}
            AND (s.task_id IS NOT NULL OR s.submitted_at > {NOW} - $4)
            AND s.endpoint <> '{FINETUNE_ENDPOINT}'
            AND ($3::text IS NULL OR s.endpoint = $3)""",
        list(TERMINAL_STATUSES),
        within,
        endpoint,
        UNBOUND_ACTIVE_SECONDS,
    )
    return count


async def due(pool: Pool, older_than: float, limit: int) -> list[Submission]:
    # SKIP LOCKED is not needed: two replicas polling the same task at once waste a request,
    # and record() keeps the outcome single.
    rows = await pool.fetch(
        f"""SELECT * FROM submissions s
            WHERE s.task_id IS NOT NULL AND s.submitted_at < {NOW} - $2
            AND coalesce(s.next_poll_at, 0) <= {NOW} AND {_UNFINISHED}
            ORDER BY s.submitted_at LIMIT $3""",
        list(TERMINAL_STATUSES),
        older_than,
        limit,
    )
    return [submission_from(r) for r in rows]


async def reconciled(pool: Pool, ref: str, next_in: float) -> None:
    await pool.execute(
        f"""UPDATE submissions SET polls = polls + 1, next_poll_at = {NOW} + $2
            WHERE ref = $1""",
        ref,
        next_in,
    )
