"""The fallback for webhooks that never come: poll the task, then treat it like a webhook.

BFL does not document webhook retries, so a receiver that was down, or a webhook lost on the
way, would leave a task unfinished forever. Every submission recorded by the submitter with no
terminal event after ``RECEIVER_RECONCILE_AFTER`` seconds is polled at its ``polling_url`` (only
on BFL's API hosts or the configured ``BFL_API_URL``: the key goes nowhere else), with backoff,
until it ends; the result enters the same pipeline as a webhook, so a webhook arriving later is
a duplicate.

A finetune's training (a submission to the ``finetune`` endpoint) is polled the same way, at the
``polling_url`` the submitter recorded for it (get_result on the finetune's legacy regional
host), but on a clock fitted to hours: see ``finetune_backoff``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from receiver.download import host_allowed, url_deadline
from receiver.events import Status
from receiver.handlers import NamesFor
from receiver.health import Health
from receiver.loops import run_forever
from receiver.metrics import Metrics
from receiver.payload import PayloadError, notice_from_payload
from receiver.refusals import RefusedWebhooks
from receiver.settings import Settings
from receiver.store import RecordOutcome, Store, Submission, Via
from receiver.store.base import FINETUNE_ENDPOINT

log = logging.getLogger("receiver.reconciler")

POLL_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_POLL_BACKOFF = 300.0
#: A task BFL cannot find right after submission may just not be readable yet; after this many
#: polls it is believed.
NOT_FOUND_POLLS = 3
BATCH = 50
CONCURRENCY = 8


def poll_backoff(polls: int) -> float:
    """5 s, 10 s, 20 s... up to 5 minutes between polls of one task."""
    delay: float = min(MAX_POLL_BACKOFF, 5.0 * 2**polls)
    return delay


#: A finetune trains for minutes to hours, so polling it every few seconds would waste requests:
#: it is first polled after RECEIVER_RECONCILE_AFTER like any task (which catches a training
#: that failed at once), then again after a third of its age so far, never sooner than
#: FINETUNE_MIN_FACTOR and never later than FINETUNE_MAX_FACTOR times RECEIVER_RECONCILE_AFTER.
#: With the default 60 s: polls 5 minutes apart for the first quarter hour, then 10 minutes
#: apart at half an hour, 20 at an hour, and every 30 minutes from 1.5 hours on (about ten
#: polls for a one-hour training). The end is seen at most a third of the training time late,
#: or at once when its webhook comes.
FINETUNE_MIN_FACTOR = 5.0
FINETUNE_MAX_FACTOR = 30.0


def finetune_backoff(age: float, reconcile_after: float) -> float:
    """Seconds until the next poll of a finetune that has been training ``age`` seconds."""
    return min(
        FINETUNE_MAX_FACTOR * reconcile_after, max(FINETUNE_MIN_FACTOR * reconcile_after, age / 3)
    )


class Reconciler:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        client: httpx.AsyncClient,
        metrics: Metrics,
        handlers_for: NamesFor,
        health: Health | None = None,
        refused: RefusedWebhooks | None = None,
    ) -> None:
        self.settings = settings
        self.health = health if health is not None else Health()
        self.store = store
        self.client = client
        self.metrics = metrics
        self.handlers_for = handlers_for
        self.refused = refused
        self._limit = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        """Look for overdue tasks every few seconds until cancelled; a failing pass (the
        store is down) is logged and tried again with backoff, never the end of the loop."""
        await run_forever("reconciler", self.reconcile_pass, health=self.health, log=log)

    async def reconcile_pass(self) -> None:
        """Poll what is due now, then rest a few seconds."""
        await self.poll_due()
        await asyncio.sleep(min(5.0, self.settings.reconcile_after / 4))

    async def poll_due(self) -> int:
        """Poll what is due now (one batch), without resting after; how many were polled."""
        due = await self.store.due_for_reconcile(self.settings.reconcile_after, BATCH)
        results = await asyncio.gather(*(self._poll(s) for s in due), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result  # after every poll of the pass has ended, none left behind
        return len(due)

    async def _poll(self, sub: Submission) -> None:
        async with self._limit:
            outcome = await self.poll_once(sub)
        self.metrics.reconciles.labels(outcome).inc()

    async def poll_once(self, sub: Submission) -> str:
        """Poll one submission; record the result if it is final. Returns what happened."""
        url = sub.polling_url
        key = self.settings.bfl_api_key
        if url is None or key is None or not host_allowed(url, self.settings.poll_hosts):
            # Nothing we may poll: look again much later (settings may change on restart).
            await self.store.reconciled(sub.ref, MAX_POLL_BACKOFF)
            return "not_pollable"
        try:
            resp = await self.client.get(
                url, headers={"x-key": key.get_secret_value()}, timeout=POLL_TIMEOUT
            )
            resp.raise_for_status()
            payload = resp.json()
            if not isinstance(payload, dict):
                raise PayloadError("get_result answered with something other than an object")
            payload.setdefault("id", sub.task_id)
            notice = notice_from_payload(payload)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("polling task %s failed: %s", sub.task_id, type(exc).__name__)
            await self.store.reconciled(sub.ref, self._next_poll(sub))
            return "error"
        final = notice.status.terminal and (
            notice.status is not Status.TASK_NOT_FOUND or sub.polls + 1 >= NOT_FOUND_POLLS
        )
        if not final:
            await self.store.reconciled(sub.ref, self._next_poll(sub))
            return "pending"
        deadline = None
        if notice.sample_url:
            deadline = url_deadline(
                notice.sample_url, time.time(), self.settings.sample_ttl_seconds
            )
        outcome = await self.store.record(
            notice,
            deadline=deadline,
            handlers=self.handlers_for(notice.status),
            ref=sub.ref,
            finetune_handlers=self.handlers_for(notice.status, finetune=True),
            via=Via.POLLING,
        )
        await self.store.reconciled(sub.ref, MAX_POLL_BACKOFF)
        if outcome is RecordOutcome.NEW:
            log.info("task %s finished by polling (no webhook came)", sub.task_id)
            if self.refused is not None:
                self.refused.arrived_by_polling(sub.task_id, sub.ref)
            return "recovered"
        return "already_final"

    def _next_poll(self, sub: Submission) -> float:
        """Seconds until ``sub`` is polled again while it is still running (or unreadable)."""
        if sub.endpoint == FINETUNE_ENDPOINT:
            age = max(0.0, time.time() - sub.submitted_at)
            return finetune_backoff(age, self.settings.reconcile_after)
        return poll_backoff(sub.polls)
