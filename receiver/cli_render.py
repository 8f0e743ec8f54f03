"""How ``bfl-receiver`` shows events, jobs and runs: tables for people, strict JSON for scripts.

Everything a webhook or a handler wrote goes through ``receiver.render`` (printed literally,
controls escaped); only the labels written here are styled.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from receiver.render import dumps, hide_queries, plain
from receiver.store import EventRecord, Job, JobRun, JobState, Via
from receiver.store.base import REFUSED

#: Worst first: the order job states are summed up in.
_STATE_ORDER = (JobState.DEAD, JobState.RUNNING, JobState.QUEUED, JobState.DONE)
#: Metadata keys whose values are credentials (``discord_interaction_token``): never shown.
_SECRET_KEY = re.compile(r"(token|secret|password)$", re.IGNORECASE)


def hide_secret_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with the values of its ``*token`` / ``*secret`` / ``*password`` keys
    replaced by ``…``: a bot may hand a handler a credential that way."""
    return {k: "…" if _SECRET_KEY.search(k) else v for k, v in metadata.items()}


def console() -> Console:
    """A console that parses nothing it is given: no markup, no emoji codes, no highlighting."""
    return Console(markup=False, emoji=False, highlight=False)


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def arrival(event: EventRecord) -> str:
    """``3 webhooks``, or ``by polling`` for a task the reconciler finished (never a delivery)."""
    webhooks = f"{event.deliveries} webhook{'' if event.deliveries == 1 else 's'}"
    if event.via is Via.POLLING:
        return f"by polling (+{webhooks})" if event.deliveries else "by polling"
    return webhooks


def job_states(jobs: Iterable[Job]) -> dict[str, int]:
    """How many of a task's jobs are in each state, worst first: ``{"dead": 1, "done": 2}``;
    a download refused for its host (not in RECEIVER_SAMPLE_HOSTS) counts as ``refused``."""
    jobs = list(jobs)
    counts = Counter(job.state for job in jobs)
    refused = sum(1 for job in jobs if _refused(job))
    counts[JobState.DEAD] -= refused
    states = {state.value: counts[state] for state in _STATE_ORDER if counts[state]}
    return {"refused": refused, **states} if refused else states


def _refused(job: Job) -> bool:
    return job.state is JobState.DEAD and (job.last_error or "").startswith(REFUSED)


def states_text(states: dict[str, int]) -> Text:
    if not states:
        return Text("-")
    text = Text()
    for i, (state, n) in enumerate(states.items()):
        text.append(", " if i else "")
        text.append(f"{state} {n}", style="bold red" if state in ("dead", "refused") else "")
    return text


def event_json(event: EventRecord, jobs: Sequence[Job] | None = None) -> dict[str, Any]:
    data = asdict(event)
    # What BFL sent, minus the signatures of its sample URLs (a credential until they expire).
    for field in ("sample_url", "payload", "error"):
        data[field] = hide_queries(data[field])
    data["metadata"] = hide_secret_metadata(event.metadata)
    data["status"] = event.status.value
    data["via"] = event.via.value
    if jobs is not None:
        data["jobs"] = job_states(jobs)
    return data


def job_json(job: Job) -> dict[str, Any]:
    return asdict(job) | {
        "kind": job.kind.value,
        "state": job.state.value,
        "last_error": hide_queries(job.last_error),
    }


def run_json(run: JobRun) -> dict[str, Any]:
    return asdict(run) | {
        "error": hide_queries(run.error),
        "traceback": hide_queries(run.traceback),
    }


def _error(text: str | None, *, multiline: bool = False) -> Text:
    """A handler's or a download's error: literal, and without any URL's query (an
    exception message may quote a signed URL)."""
    return plain(hide_queries(text or ""), multiline=multiline)


def events_table(found: Sequence[EventRecord], jobs: dict[str, list[Job]]) -> Table:
    table = Table("task id", "status", "received", "arrived", "jobs", "image")
    for e in found:
        image = f"{e.image.size} B {e.image.content_type}" if e.image else "-"
        table.add_row(
            plain(e.task_id),
            e.status.value,
            when(e.received_at),
            arrival(e),
            states_text(job_states(jobs.get(e.task_id, []))),
            plain(image),
        )
    return table


def print_event(
    out: Console, event: EventRecord, jobs: Sequence[Job], runs: Sequence[JobRun]
) -> None:
    """``show``: the event, its jobs, every run, and the tracebacks of failed runs."""
    head = Text()
    head.append_text(plain(event.task_id, style="bold"))
    head.append(f"  {event.status.value} (")
    head.append_text(plain(event.raw_status))
    head.append(")")
    out.print(head)
    out.print(f"received {when(event.received_at)}, {arrival(event)}")
    if event.error:
        out.print(Text("error: ").append_text(_error(event.error)))
    if event.image:
        image = event.image
        out.print(
            Text("image: ").append_text(
                plain(f"{image.location} ({image.size} B, sha256 {image.sha256})")
            )
        )
    if event.metadata:
        shown = hide_secret_metadata(event.metadata)
        out.print(Text("metadata: ").append_text(plain(dumps(shown))))
    for j in jobs:
        if _refused(j):
            # Said on a line of its own, not folded into the table: the one fix is a setting.
            reason = (j.last_error or "").removeprefix(REFUSED)
            out.print(Text("download refused: ", style="bold red").append_text(_error(reason)))
    table = Table("job", "kind", "handler", "state", "attempts", "last error")
    for j in jobs:
        table.add_row(
            str(j.id),
            j.kind.value,
            plain(j.handler or "-"),
            Text(j.state.value, style="bold red" if j.state is JobState.DEAD else ""),
            str(j.attempts),
            _error(j.last_error),
        )
    out.print(table)
    if not runs:
        return
    history = Table("job", "attempt", "outcome", "finished", "error")
    for r in runs:
        history.add_row(
            str(r.job_id), str(r.attempt), r.outcome, when(r.finished_at), _error(r.error)
        )
    out.print(history)
    for r in runs:
        if r.traceback:
            out.print(Text(f"traceback of job {r.job_id}, attempt {r.attempt}:", style="bold"))
            out.print(_error(r.traceback.rstrip("\n"), multiline=True))


def dead_table(jobs: Sequence[Job]) -> Table:
    table = Table("task id", "job", "kind", "handler", "attempts", "dead since", "last error")
    for j in jobs:
        table.add_row(
            plain(j.task_id),
            str(j.id),
            j.kind.value,
            plain(j.handler or "-"),
            str(j.attempts),
            when(j.updated_at),
            _error(j.last_error),
        )
    return table
