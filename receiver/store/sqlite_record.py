"""What the SQLite store runs inside its transactions: recording a notice, claiming a
reference, adding handler jobs, and the fenced transitions of a running job."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

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

#: The event's task kind, decided in the recording statement: the notice names a finetune (the
#: first parameter), or a submission it belongs to (by reference or task id) was one.
_KIND = f"""CASE WHEN ? OR EXISTS (SELECT 1 FROM submissions WHERE (ref = ? OR task_id = ?)
                 AND endpoint = '{FINETUNE_ENDPOINT}') THEN 'finetune' ELSE 'generation' END"""


def record_notice(
    c: sqlite3.Connection,
    notice: Notice,
    deadline: float | None,
    handlers: Sequence[str],
    *,
    ref: str | None,
    finetune_handlers: Sequence[str],
    metadata: str | None,
    via: Via,
) -> RecordOutcome:
    now = time.time()
    if ref is not None:
        _claim(c, ref, notice.task_id, now)
    fields = (
        notice.status.value,
        notice.raw_status,
        notice.sample_url,
        notice.error,
        notice.raw,
        deadline,
    )
    # Only webhooks are deliveries: a polled result is not one.
    delivered = 1 if via is Via.WEBHOOK else 0
    # The metadata is the URL's, else the submission's (found by the webhook's reference,
    # else by task id), and the submission says whether this is a finetune: one indexed
    # lookup and one plain insert per new webhook, cheaper than either folded into the other.
    kind_params = (names_finetune(notice), ref, notice.task_id)
    if ref is None:
        sub = c.execute(
            "SELECT metadata, endpoint FROM submissions WHERE task_id = ?", (notice.task_id,)
        ).fetchone()
    else:
        sub = c.execute(
            """SELECT metadata, endpoint FROM submissions WHERE ref = ? OR task_id = ?
               ORDER BY ref = ? DESC LIMIT 1""",
            (ref, notice.task_id, ref),
        ).fetchone()
    kind = (
        TaskKind.FINETUNE
        if kind_params[0] or (sub is not None and sub[1] == FINETUNE_ENDPOINT)
        else TaskKind.GENERATION
    )
    meta = metadata if metadata is not None else (sub[0] if sub is not None else "{}")
    inserted = c.execute(
        """INSERT INTO events (status, raw_status, sample_url, error, payload, deadline,
               task_id, received_at, updated_at, via, deliveries, metadata, task_kind)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (task_id) DO NOTHING""",
        (*fields, notice.task_id, now, now, via.value, delivered, meta, kind.value),
    ).rowcount
    if not inserted:
        known = Status(
            c.execute("SELECT status FROM events WHERE task_id = ?", (notice.task_id,)).fetchone()[
                0
            ]
        )
        if known.terminal or not notice.status.terminal:
            # Already final, or nothing new: count the delivery, keep what was recorded first
            # (a late Pending must not overwrite a Ready).
            c.execute(
                f"""UPDATE events SET deliveries = deliveries + ?, updated_at = ?,
                        metadata = {_FILL_METADATA} WHERE task_id = ?""",
                (delivered, now, metadata, notice.task_id),
            )
            return RecordOutcome.DUPLICATE if known.terminal else RecordOutcome.PROGRESS
        updated = c.execute(
            f"""UPDATE events SET status = ?, raw_status = ?, sample_url = ?, error = ?,
                   payload = ?, deadline = ?, deliveries = deliveries + ?, updated_at = ?,
                   via = ?, metadata = {_FILL_METADATA},
                   task_kind = CASE WHEN task_kind = 'finetune' THEN 'finetune' ELSE {_KIND} END
               WHERE task_id = ? RETURNING task_kind""",
            (*fields, delivered, now, via.value, metadata, *kind_params, notice.task_id),
        ).fetchall()
        kind = TaskKind(updated[0][0])
    if not notice.status.terminal:
        return RecordOutcome.PROGRESS
    if kind is TaskKind.FINETUNE:
        add_handler_jobs(c, notice.task_id, finetune_handlers, now)
    elif notice.status is Status.READY and notice.sample_url:
        c.execute(
            """INSERT INTO jobs (task_id, kind, state, run_at, created_at, updated_at)
               VALUES (?, 'download', 'queued', ?, ?, ?)""",
            (notice.task_id, now, now, now),
        )
    else:
        add_handler_jobs(c, notice.task_id, handlers, now)
    return RecordOutcome.NEW


#: The URL's metadata (the parameter) replaces an event's only while that one is empty.
_FILL_METADATA = "coalesce(CASE WHEN metadata = '{}' THEN ? END, metadata)"


def _claim(c: sqlite3.Connection, ref: str, task_id: str, now: float) -> None:
    """Raise ForeignReference unless ``ref`` is ``task_id``'s: bound to it, or claimed by it
    now or before (see base.py). The caller's transaction makes check and claim one step."""
    bound = c.execute("SELECT task_id FROM submissions WHERE ref = ?", (ref,)).fetchone()
    if bound is not None and bound[0] is not None:
        if bound[0] != task_id:
            raise ForeignReference(ref)
        return
    c.execute(
        "INSERT OR IGNORE INTO webhook_refs (ref, task_id, claimed_at) VALUES (?, ?, ?)",
        (ref, task_id, now),
    )
    owner = c.execute("SELECT task_id FROM webhook_refs WHERE ref = ?", (ref,)).fetchone()[0]
    if owner != task_id:
        raise ForeignReference(ref)


def add_handler_jobs(
    c: sqlite3.Connection, task_id: str, handlers: Sequence[str], now: float
) -> None:
    c.executemany(
        """INSERT OR IGNORE INTO jobs (task_id, kind, handler, state, run_at, created_at,
               updated_at) VALUES (?, 'handler', ?, 'queued', ?, ?, ?)""",
        [(task_id, name, now, now, now) for name in handlers],
    )


def finish(
    c: sqlite3.Connection,
    job: Job,
    state: JobState,
    error: str | None,
    outcome: str,
    *,
    run_at: float | None = None,
    tb: str | None = None,
) -> bool:
    """Move a running job on, fenced by its lease; record the attempt (and its traceback)."""
    now = time.time()
    cur = c.execute(
        """UPDATE jobs SET state = ?, lease = NULL, lease_until = NULL, last_error = ?,
               run_at = coalesce(?, run_at), updated_at = ?
           WHERE id = ? AND lease = ? AND state = 'running'""",
        (state.value, error, run_at, now, job.id, job.lease),
    )
    if cur.rowcount == 0:
        return False
    c.execute(
        """INSERT INTO job_runs (job_id, attempt, outcome, error, finished_at, traceback)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (job.id, job.attempts, outcome, error, now, cap_traceback(tb)),
    )
    return True
