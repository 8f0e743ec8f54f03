"""``bfl-submit batch FILE.jsonl``: many submissions, resumable (the command: ``_cli_batch``).

Each line is a JSON object: the request's fields, plus ``model`` (else ``--model``),
``metadata`` (an object) and ``image`` (a file path, relative to FILE, to edit)::

    {"prompt": "a red fox", "width": 1024, "height": 768, "metadata": {"order": 17}}
    {"model": "flux-kontext-pro", "image": "in/cat.png", "prompt": "make it snow"}

What happened to each line is appended to ``FILE.jsonl.state`` (keyed by the line's hash and
occurrence), flushed before the next step: ``sending`` before the POST, then ``submitted``,
``failed`` (certainly not submitted) or ``uncertain`` (BFL may have the task: a 5xx or a broken
connection after sending). A rerun skips submitted lines, retries failed ones, and leaves
uncertain ones alone unless ``--retry-uncertain`` (a second submit would be charged twice).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from submitter._cli_support import (
    EXIT_CREDITS,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_OTHER,
    EXIT_RATE_LIMITED,
    EXIT_VALIDATION,
    exit_code,
)
from submitter._client import BFL
from submitter._endpoints import IMAGE_FIELDS
from submitter._errors import AuthError, BFLError, OutOfCredits, ValidationError
from submitter._http import certainly_refused
from submitter._images import encode_image

#: When several kinds of failure happened, the exit code names the most actionable.
PRECEDENCE = (
    EXIT_CREDITS,
    EXIT_OTHER,
    EXIT_NETWORK,
    EXIT_RATE_LIMITED,
    EXIT_VALIDATION,
)


@dataclass
class Line:
    number: int
    key: str
    data: dict[str, Any] | None
    problem: str | None = None


@dataclass
class Outcomes:
    submitted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    uncertain: list[dict[str, Any]] = field(default_factory=list)
    not_attempted: list[int] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)
    """Lines in flight at Ctrl-C: saved as ``sending``; a rerun settles them (the store knows
    whether BFL took them) or reports them as uncertain."""
    cancelled: bool = False
    """Stopped by Ctrl-C (or a cancellation) before every line was tried."""

    def exit_code(self) -> int:
        codes = {f["exit_code"] for f in self.failed}
        if self.uncertain:
            codes.add(EXIT_NETWORK)
        for code in PRECEDENCE:
            if code in codes:
                return code
        return EXIT_OTHER if codes or self.not_attempted or self.interrupted else EXIT_OK


def read_lines(path: Path) -> list[Line]:
    """Every non-blank line, parsed; a line that is not a JSON object carries its problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path}: not UTF-8 text", param_hint="FILE") from None
    lines: list[Line] = []
    seen: Counter[str] = Counter()
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        digest = hashlib.sha256(stripped.encode()).hexdigest()[:32]
        seen[digest] += 1  # identical lines are distinct submissions
        key = f"{digest}:{seen[digest]}"
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            lines.append(Line(number, key, None, f"not JSON: {exc}"))
            continue
        if not isinstance(data, dict):
            lines.append(Line(number, key, None, "not a JSON object"))
            continue
        lines.append(Line(number, key, data))
    return lines


class StateFile:
    """Append-only JSONL; the last record of a key is its state."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        states: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return states
        for raw in text.splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # a line torn by a crash mid-write: the line before it still holds
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                states[record["key"]] = record
        return states

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({**record, "at": round(time.time(), 3)}) + "\n"
        if self._torn():
            line = "\n" + line  # end the torn line, or this record would be glued to it
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())  # the next step (a POST that costs credits) waits for this

    def _torn(self) -> bool:
        try:
            with self.path.open("rb") as existing:
                existing.seek(-1, os.SEEK_END)
                return existing.read(1) != b"\n"
        except (FileNotFoundError, OSError):
            return False  # missing or empty


async def _body(line: Line, base: Path, default_model: str) -> tuple[str, dict[str, Any], Any]:
    data = dict(line.data or {})
    model = data.pop("model", default_model)
    metadata = data.pop("metadata", None)
    image = data.pop("image", None)
    if not isinstance(model, str):
        raise ValidationError.one(("model",), "must be a string")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValidationError.one(("metadata",), "must be a JSON object")
    if image is not None:
        if not isinstance(image, str):
            raise ValidationError.one(("image",), "must be a file path")
        data["input_image"] = await encode_image(base / image, "input_image")
    for name in sorted(IMAGE_FIELDS & data.keys() - {"input_image"}):
        if not isinstance(data[name], str | None):
            raise ValidationError.one(("body", name), "must be base64 or a URL")
    return model, data, metadata


async def _resolve_sending(
    bfl: BFL, record: dict[str, Any], retry_uncertain: bool
) -> dict[str, Any] | None:
    """A line left ``sending`` by a crash: the store may know whether BFL took it.

    Returns the record to append (submitted or uncertain), or None to submit it again.
    """
    ref = record.get("ref")
    if bfl.store is not None and isinstance(ref, str):
        sub = await bfl.store.get_submission(ref=ref)
        if sub is None:
            return None  # refused and forgotten, or never recorded: nothing was submitted
        if sub.task_id is not None:
            task = {"id": sub.task_id, "endpoint": sub.endpoint, "polling_url": sub.polling_url}
            return {**record, "state": "submitted", "task": task}
    if retry_uncertain:
        return None
    return {**record, "state": "uncertain", "error": "interrupted while sending"}


async def run_batch(
    bfl: BFL,
    path: Path,
    *,
    concurrency: int,
    model: str,
    retry_uncertain: bool,
    progress: Progress | None,
    outcomes: Outcomes | None = None,
) -> Outcomes:
    """Submit every line of ``path`` not already submitted; what happened to each.

    ``outcomes`` is filled in as lines finish, so a caller interrupted (Ctrl-C cancels this)
    still knows what was done; the lines in flight then are listed in ``interrupted``.
    """
    lines = read_lines(path)
    state = StateFile(path.with_name(path.name + ".state"))
    previous = state.load()
    outcomes = outcomes if outcomes is not None else Outcomes()
    todo: list[Line] = []
    for line in lines:
        record = previous.get(line.key)
        status = record.get("state") if record else None
        if status == "sending" and record is not None:
            resolved = await _resolve_sending(bfl, record, retry_uncertain)
            if resolved is not None:
                state.append(resolved)
                status = resolved["state"]
        if status == "submitted" or (status == "uncertain" and not retry_uncertain):
            if status == "uncertain":
                outcomes.uncertain.append({"line": line.number, "error": "uncertain before"})
            else:
                outcomes.skipped.append(line.number)
            continue
        todo.append(line)
    task_id = progress.add_task("submitting", total=len(todo)) if progress else None
    limit = asyncio.Semaphore(concurrency)
    stop: list[str] = []
    sending: set[int] = set()
    """Lines whose ``sending`` record is written and whose outcome is not (yet)."""

    def finished() -> None:  # the bar counts lines with an outcome, nothing else
        if progress is not None and task_id is not None:
            progress.advance(task_id)

    async def one(line: Line) -> None:
        async with limit:
            if stop:
                outcomes.not_attempted.append(line.number)
                return
            ref = secrets.token_urlsafe(16)
            base = {"key": line.key, "line": line.number, "ref": ref}
            try:
                if line.problem is not None:
                    raise ValidationError.one(("line", line.number), line.problem)
                endpoint, body, metadata = await _body(line, path.parent, model)
                state.append({**base, "state": "sending"})
                sending.add(line.number)
                task = await bfl.submit(endpoint, body, metadata=metadata, ref=ref)
            except BFLError as exc:
                failure = {"line": line.number, "error": str(exc), "exit_code": exit_code(exc)}
                if certainly_refused(exc):
                    state.append({**base, "state": "failed", **failure})
                    outcomes.failed.append(failure)
                else:
                    state.append({**base, "state": "uncertain", **failure})
                    outcomes.uncertain.append(failure)
                if isinstance(exc, OutOfCredits | AuthError):
                    stop.append(str(exc))  # every other line would be refused the same way
            else:
                state.append({**base, "state": "submitted", "task": task.as_dict()})
                outcomes.submitted.append({"line": line.number, "task_id": task.id})
            sending.discard(line.number)
            finished()

    watcher = asyncio.create_task(_describe_waits(bfl, progress, task_id))
    try:
        await asyncio.gather(*(one(line) for line in todo))
    except asyncio.CancelledError:
        outcomes.cancelled = True
        done = {item["line"] for item in (*outcomes.submitted, *outcomes.failed)}
        done |= {item["line"] for item in outcomes.uncertain} | set(outcomes.not_attempted)
        outcomes.interrupted = sorted(sending)
        outcomes.not_attempted = sorted(
            line.number for line in todo if line.number not in done | sending
        )
        raise
    finally:
        watcher.cancel()
    for group in (outcomes.submitted, outcomes.failed, outcomes.uncertain):
        group.sort(key=lambda item: int(item["line"]))
    outcomes.not_attempted.sort()
    return outcomes


async def _describe_waits(bfl: BFL, progress: Progress | None, task_id: Any) -> None:
    """Keep the bar's label true: say so while a submit waits for one of BFL's slots."""
    if progress is None or task_id is None:
        return
    shown = "submitting"
    while True:
        waiting = bfl.waiting_for_slot
        label = f"waiting for a slot ({waiting})" if waiting else "submitting"
        if label != shown:
            progress.update(task_id, description=label)
            shown = label
        await asyncio.sleep(0.2)
