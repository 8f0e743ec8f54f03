"""The SQLite store's schema, versioned by ``PRAGMA user_version``, and its migration."""

from __future__ import annotations

import sqlite3

# Each entry migrates the schema from version i to i+1 (PRAGMA user_version).
MIGRATIONS = [
    """
    CREATE TABLE events (
        task_id     TEXT PRIMARY KEY,
        status      TEXT NOT NULL,
        raw_status  TEXT NOT NULL,
        sample_url  TEXT,
        error       TEXT,
        payload     TEXT NOT NULL,
        metadata    TEXT NOT NULL DEFAULT '{}',
        received_at REAL NOT NULL,
        updated_at  REAL NOT NULL,
        deliveries  INTEGER NOT NULL DEFAULT 1,
        deadline    REAL,
        image_location     TEXT,
        image_content_type TEXT,
        image_size         INTEGER,
        image_sha256       TEXT
    );
    CREATE INDEX events_received ON events (received_at);
    CREATE TABLE jobs (
        id         INTEGER PRIMARY KEY,
        task_id    TEXT NOT NULL REFERENCES events (task_id) ON DELETE CASCADE,
        kind       TEXT NOT NULL,
        handler    TEXT NOT NULL DEFAULT '',
        state      TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        lease      TEXT,
        lease_until REAL,
        last_error TEXT,
        run_at     REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (task_id, kind, handler)
    );
    CREATE INDEX jobs_due ON jobs (state, run_at);
    CREATE TABLE job_runs (
        job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        attempt     INTEGER NOT NULL,
        outcome     TEXT NOT NULL,
        error       TEXT,
        finished_at REAL NOT NULL
    );
    CREATE INDEX job_runs_job ON job_runs (job_id);
    """,
    """
    CREATE TABLE submissions (
        ref          TEXT PRIMARY KEY,
        task_id      TEXT UNIQUE,
        endpoint     TEXT NOT NULL,
        polling_url  TEXT,
        metadata     TEXT NOT NULL DEFAULT '{}',
        submitted_at REAL NOT NULL,
        polls        INTEGER NOT NULL DEFAULT 0,
        next_poll_at REAL
    );
    CREATE INDEX submissions_time ON submissions (submitted_at);
    """,
    # A finetune's event (a training ended) is dispatched to its own handlers, never downloaded.
    """
    ALTER TABLE events ADD COLUMN task_kind TEXT NOT NULL DEFAULT 'generation'
    """,
    # The task that first claimed a reference no bound submission names (see base.py).
    """
    CREATE TABLE webhook_refs (
        ref        TEXT PRIMARY KEY,
        task_id    TEXT NOT NULL,
        claimed_at REAL NOT NULL
    );
    """,
    # How the terminal notice came (webhook or polling), and each failed run's traceback.
    """
    ALTER TABLE events ADD COLUMN via TEXT NOT NULL DEFAULT 'webhook';
    ALTER TABLE job_runs ADD COLUMN traceback TEXT;
    """,
    # Seconds a job has waited out rate limits (Store.defer), bounded by the worker.
    """
    ALTER TABLE jobs ADD COLUMN waited REAL NOT NULL DEFAULT 0
    """,
]


def migrate(c: sqlite3.Connection) -> None:
    version = c.execute("PRAGMA user_version").fetchone()[0]
    for i, script in enumerate(MIGRATIONS[version:], start=version):
        for statement in filter(str.strip, script.split(";")):
            c.execute(statement)
        c.execute(f"PRAGMA user_version = {i + 1}")
