"""A bounded drain: run what is due now, within a time budget, then stop.

For cron, systemd timers, EventBridge or Cloud Scheduler, and queue triggers: platforms that
give a process a fixed time and freeze or stop it afterwards. The drain is the ``Worker``'s
own claim/lease/fencing path (``Worker.drain``) plus one reconcile pass, nothing of its own:

- it claims due jobs (downloads, handlers) until none is due and none runs, or until the budget
  minus a safety margin (``drain_margin``);
- jobs claimed by then may run until the budget is spent; what still runs then is handed back
  at once (queued again, due now, the attempt not counted), never left to its lease.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from receiver.handlers import Handler, HandlerSet
from receiver.runtime import Services, opened_services
from receiver.settings import Settings

#: The longest safety margin: claiming stops this long (or a tenth of the budget, if less)
#: before the budget is spent, so jobs claimed late have time to finish.
MAX_MARGIN_SECONDS = 5.0
#: A day: longer is a service (``bfl-receiver work``), not a drain.
MAX_BUDGET_SECONDS = 86400.0


def drain_margin(budget: float) -> float:
    """Seconds before the end of ``budget`` when claiming stops."""
    return min(MAX_MARGIN_SECONDS, budget / 10)


@dataclass(frozen=True, slots=True)
class DrainSummary:
    """What one drain did, and what it left."""

    done: int
    """Jobs this drain finished (downloads stored, handlers that succeeded)."""
    retried: int
    """Jobs queued again for later: failed (the attempt counted) or turned away by a rate
    limit (not counted)."""
    dead: int
    """Jobs that failed for good (``bfl-receiver dead`` lists them)."""
    handed_back: int
    """Jobs still running when the budget was spent: queued again, due now, not counted."""
    queued: int
    """Jobs queued in the store when the drain ended (due now or later), for everyone."""
    polled: int
    """Tasks the reconcile pass polled (their webhook did not come)."""
    finished: bool
    """True when nothing was due any more before the budget ran out."""
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_budget(budget: float) -> float:
    """``budget`` if it is a usable number of seconds; ValueError saying why otherwise."""
    if not (isinstance(budget, int | float) and math.isfinite(budget)):
        raise ValueError(f"budget must be a number of seconds, not {budget!r}")
    if not 0 < budget <= MAX_BUDGET_SECONDS:
        raise ValueError(f"budget must be over 0 and at most {MAX_BUDGET_SECONDS:g} seconds")
    return float(budget)


async def drain(
    settings: Settings,
    *,
    budget: float,
    handlers: Mapping[str, Handler] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> DrainSummary:
    """Open the store (which must exist), run what is due within ``budget`` seconds, close.

    ``handlers`` replaces the configured ones; ``transport`` carries downloads and polls
    (tests). Raises ValueError for a bad budget, and the store's error if it cannot be opened.
    """
    budget = check_budget(budget)
    handler_set = HandlerSet(dict(handlers)) if handlers is not None else None
    async with opened_services(
        settings, handlers=handler_set, transport=transport, create=False
    ) as services:
        return await drain_services(services, budget=budget)


async def drain_services(services: Services, *, budget: float) -> DrainSummary:
    """A drain with resources already open (the app's, for ``POST /drain``)."""
    started = time.monotonic()
    end = started + check_budget(budget)
    claim_until = end - drain_margin(budget)
    # The reconcile pass first: what it recovers (a task whose webhook never came) gets its
    # download in this same drain, while the signed URL lives. A pass still polling at the
    # claim deadline is cut; those tasks are polled again next time.
    polled, reconciled = 0, True
    try:
        async with asyncio.timeout(max(0.0, claim_until - time.monotonic())):
            polled = await services.reconciler().poll_due()
    except TimeoutError:
        reconciled = False
    worker = services.worker()
    finished = await worker.drain(claim_until, end) and reconciled
    counts = await services.store.counts()
    outcomes = worker.outcomes
    return DrainSummary(
        done=outcomes["done"],
        retried=outcomes["retry"] + outcomes["deferred"],  # a rate limit deferred it
        dead=outcomes["dead"],
        handed_back=outcomes["handed_back"],
        queued=counts.queued,
        polled=polled,
        finished=finished and not outcomes["handed_back"],
        seconds=round(time.monotonic() - started, 3),
    )
