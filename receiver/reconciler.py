"""The fallback for webhooks that never come: poll the task, then treat it like a webhook.

BFL does not document webhook retries, so a receiver that was down, or a webhook lost on the
way, would leave a task unfinished forever. Every submission recorded by the submitter with no
terminal event after ``RECEIVER_RECONCILE_AFTER`` seconds is polled at its ``polling_url`` (only
on BFL's API hosts or the configured ``BFL_API_URL``: the key goes nowhere else), with backoff,
until it ends; the result enters the same pipeline as a webhook, so a webhook arriving later is
a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from receiver.download import host_allowed, url_deadline
from receiver.events import Status
from receiver.metrics import Metrics
from receiver.payload import PayloadError, notice_from_payload
from receiver.refusals import RefusedWebhooks
from receiver.settings import Settings
from receiver.store import RecordOutcome, Store, Submission, Via

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


class Reconciler:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        client: httpx.AsyncClient,
        metrics: Metrics,
        handlers_for: Callable[[Status], list[str]],
        refused: RefusedWebhooks | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.metrics = metrics
        self.handlers_for = handlers_for
        self.refused = refused
        self._limit = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        """Look for overdue tasks every few seconds until cancelled."""
        every = min(5.0, self.settings.reconcile_after / 4)
        while True:
            try:
                due = await self.store.due_for_reconcile(self.settings.reconcile_after, BATCH)
                await asyncio.gather(*(self._poll(s) for s in due))
            except asyncio.CancelledError:
                raise
            except Exception:  # a store hiccup must not end reconciliation for good
                log.exception("reconcile pass failed; trying again")
            await asyncio.sleep(every)

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
            await self.store.reconciled(sub.ref, poll_backoff(sub.polls))
            return "error"
        final = notice.status.terminal and (
            notice.status is not Status.TASK_NOT_FOUND or sub.polls + 1 >= NOT_FOUND_POLLS
        )
        if not final:
            await self.store.reconciled(sub.ref, poll_backoff(sub.polls))
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
            via=Via.POLLING,
        )
        await self.store.reconciled(sub.ref, MAX_POLL_BACKOFF)
        if outcome is RecordOutcome.NEW:
            log.info("task %s finished by polling (no webhook came)", sub.task_id)
            if self.refused is not None:
                self.refused.arrived_by_polling(sub.task_id, sub.ref)
            return "recovered"
        return "already_final"
