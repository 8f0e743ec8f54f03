"""The PostgreSQL schema, versioned, and the migration that brings a database up to date.

The tables and columns are the SQLite store's, with times as ``double precision`` epoch seconds
in both, so a record reads the same whichever engine kept it. What differs is indexing for a
shared queue: partial indexes cover only ``queued`` and ``running`` jobs, so claiming and reaping
cost the same however many finished jobs the table still holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A connection of its own or one borrowed from the pool: the same queries work on both.
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger("receiver.store.postgres")

#: Each entry migrates the schema from version i to i+1 (rows of ``schema_version``).
MIGRATIONS = [
    """
    CREATE TABLE events (
        task_id     text PRIMARY KEY,
        status      text NOT NULL,
        raw_status  text NOT NULL,
        sample_url  text,
        error       text,
        -- json, not jsonb: the webhook's body is kept as it came (key order and all).
        payload     json NOT NULL,
        metadata    jsonb NOT NULL DEFAULT '{}',
        received_at double precision NOT NULL,
        updated_at  double precision NOT NULL,
        deliveries  integer NOT NULL DEFAULT 1,
        deadline    double precision,
        image_location     text,
        image_content_type text,
        image_size         bigint,
        image_sha256       text
    );
    CREATE INDEX events_received ON events (received_at);
    CREATE INDEX events_status ON events (status, received_at);
    CREATE TABLE jobs (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id     text NOT NULL REFERENCES events (task_id) ON DELETE CASCADE,
        kind        text NOT NULL CHECK (kind IN ('download', 'handler')),
        handler     text NOT NULL DEFAULT '',
        state       text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'dead')),
        attempts    integer NOT NULL DEFAULT 0,
        lease       text,
        lease_until double precision,
        last_error  text,
        run_at      double precision NOT NULL,
        created_at  double precision NOT NULL,
        updated_at  double precision NOT NULL,
        UNIQUE (task_id, kind, handler)
    );
    CREATE INDEX jobs_due ON jobs (run_at, id) WHERE state = 'queued';
    CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';
    CREATE TABLE job_runs (
        job_id      bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        attempt     integer NOT NULL,
        outcome     text NOT NULL,
        error       text,
        finished_at double precision NOT NULL
    );
    CREATE INDEX job_runs_job ON job_runs (job_id);
    """,
    """
    CREATE TABLE submissions (
        ref          text PRIMARY KEY,
        task_id      text UNIQUE,
        endpoint     text NOT NULL,
        polling_url  text,
        metadata     jsonb NOT NULL DEFAULT '{}',
        submitted_at double precision NOT NULL,
        polls        integer NOT NULL DEFAULT 0,
        next_poll_at double precision
    );
    CREATE INDEX submissions_time ON submissions (submitted_at);
    """,
    # A finetune's event (a training ended) is dispatched to its own handlers, never downloaded.
    # A constant default: no table rewrite (PostgreSQL 11+).
    """
    ALTER TABLE events ADD COLUMN task_kind text NOT NULL DEFAULT 'generation'
        CHECK (task_kind IN ('generation', 'finetune'));
    """,
    # The task that first claimed a reference no bound submission names (see base.py).
    """
    CREATE TABLE webhook_refs (
        ref        text PRIMARY KEY,
        task_id    text NOT NULL,
        claimed_at double precision NOT NULL
    );
    """,
    # How the terminal notice came (webhook or polling), and each failed run's traceback.
    """
    ALTER TABLE events ADD COLUMN via text NOT NULL DEFAULT 'webhook'
        CHECK (via IN ('webhook', 'polling'));
    ALTER TABLE job_runs ADD COLUMN traceback text;
    """,
    # Seconds a job has waited out rate limits (Store.defer), bounded by the worker.
    """
    ALTER TABLE jobs ADD COLUMN waited double precision NOT NULL DEFAULT 0
    """,
]

#: Held while migrating, so replicas starting together apply each migration once, in turn.
#: Any fixed number works; this one is "bflhooks" in ASCII.
MIGRATION_LOCK = 0x62666C686F6F6B73


async def migrate(conn: Connection) -> int:
    """Create or update the schema in one transaction; returns the version it is now at."""
    async with conn.transaction():
        # A transaction-scoped lock: released by the commit (or rollback), never left behind.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_version (
                   version    integer PRIMARY KEY,
                   applied_at double precision NOT NULL DEFAULT date_part('epoch', now())
               )"""
        )
        version: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        if version > len(MIGRATIONS):
            # A newer receiver migrated this database (say, mid rolling upgrade or after a
            # rollback). Migrations only add, so carry on, but say so.
            log.warning(
                "database schema is at version %d, newer than this receiver's %d",
                version,
                len(MIGRATIONS),
            )
            return version
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
            log.info("database schema migrated to version %d", number)
        return len(MIGRATIONS)
