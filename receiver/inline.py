"""Inline processing: the webhook's own request runs its task's jobs, within a budget.

For platforms that give a process CPU only while a request runs (AWS Lambda, Cloud Run with
request-based billing): after the webhook is recorded durably, the same request claims that
task's due jobs (the download, then its handlers) through the ``Worker``'s own
claim/lease/fencing path (``Worker.drain`` with a task id) and answers 200 whatever happened.
Whatever has not finished when the budget is spent is handed back at once (queued again, due
now, the attempt not counted) for a drain or another process; a handler's failure is a retry
or a dead job as anywhere else, and never changes the webhook's answer (a 5xx would make BFL
resend a webhook that is already recorded).

The budget is ``RECEIVER_INLINE_BUDGET_SECONDS``, never more than ``INLINE_CAP_SECONDS``, and
never past a platform's own deadline for this invocation (``invocation_deadline``, which an
adapter such as ``receiver.serverless.aws`` sets) less ``DEADLINE_MARGIN_SECONDS``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

from receiver.draining import drain_margin
from receiver.health import describe
from receiver.runtime import Services
from receiver.settings import Settings

log = logging.getLogger("receiver.inline")

#: The most any webhook request spends on its jobs, whatever is configured: BFL's guide wants
#: a 2xx within 30 s and resends after 1, 5 and 30 s, then gives up. 20 s leaves room for a
#: cold start, the record itself and the network before BFL's 30 s are up.
INLINE_CAP_SECONDS = 20.0
#: Kept free before a platform's deadline: the answer must still be sent in time.
DEADLINE_MARGIN_SECONDS = 1.0

#: The ``time.monotonic()`` by which this invocation must have answered, when a platform says
#: so (Lambda's remaining time); ``None`` elsewhere. Set it with ``invocation_deadline_at``.
invocation_deadline: ContextVar[float | None] = ContextVar("invocation_deadline", default=None)


@contextlib.contextmanager
def invocation_deadline_at(deadline: float) -> Iterator[None]:
    """Within the block, inline processing ends ``DEADLINE_MARGIN_SECONDS`` before
    ``deadline`` (a ``time.monotonic()`` value) at the latest. Tasks created inside the block
    (an ASGI adapter's request task) inherit it."""
    token = invocation_deadline.set(deadline)
    try:
        yield
    finally:
        invocation_deadline.reset(token)


def inline_budget(settings: Settings, now: float | None = None) -> float:
    """Seconds this request may spend on its task's jobs now (0: none)."""
    budget = min(settings.inline_budget_seconds, INLINE_CAP_SECONDS)
    deadline = invocation_deadline.get()
    if deadline is not None:
        now = time.monotonic() if now is None else now
        budget = min(budget, deadline - DEADLINE_MARGIN_SECONDS - now)
    return max(0.0, budget)


@dataclass(frozen=True, slots=True)
class InlineSummary:
    """What a webhook's request did with its task's jobs."""

    done: int
    retried: int
    dead: int
    handed_back: int
    """Still running when the budget was spent: queued again for a drain or another process."""
    finished: bool
    """True when none of the task's jobs was due any more before the budget ran out."""
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def process_inline(services: Services, task_id: str) -> InlineSummary | None:
    """Run ``task_id``'s due jobs within the inline budget; None when there is none (off, or
    no time left) or the store failed (the webhook is recorded: a drain or another process
    runs the jobs). Never raises for a job's or the store's failure."""
    budget = inline_budget(services.settings)
    if budget <= 0:
        return None
    started = time.monotonic()
    end = started + budget
    worker = services.worker()
    try:
        finished = await worker.drain(end - drain_margin(budget), end, task_id=task_id)
    except Exception as exc:  # the store failed: the event is safe, its jobs stay queued
        log.warning("task %s: inline processing stopped: %s", task_id, describe(exc))
        return None
    outcomes = worker.outcomes
    return InlineSummary(
        done=outcomes["done"],
        retried=outcomes["retry"],
        dead=outcomes["dead"],
        handed_back=outcomes["handed_back"],
        finished=finished and not outcomes["handed_back"],
        seconds=round(time.monotonic() - started, 3),
    )
