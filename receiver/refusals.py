"""A hint for one misconfiguration: the submitter signs with a secret this receiver refuses.

Then every webhook is a 401, the reconciler finishes the tasks by polling, and all seems well
but slow. When a task that arrives by polling is one whose webhook was refused, the likely
cause is logged once per process.

The task id and reference of a refused webhook come from an *unverified* request: they are
kept only to match them later against a task the reconciler polled from BFL itself, never
trusted for anything else, and kept in a small bounded set so a flood of refused requests
costs a fixed amount of memory.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict

log = logging.getLogger("receiver")

#: How many refused webhooks are remembered (the oldest go first).
MAX_REMEMBERED = 1024
#: Only short bodies are looked into: a task id sits at the top of a small JSON object.
MAX_BODY_LOOKED_AT = 16 * 1024
MAX_ID_LENGTH = 200

HINT = (
    "task %s was refused by webhook (wrong secret) and then finished by polling: the secret "
    "the submitter used is not one this receiver accepts (compare RECEIVER_WEBHOOK_SECRET "
    "on both sides)"
)


class RefusedWebhooks:
    """Task ids and references of recently refused webhooks, for the hint above."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._limit = limit
        self.hinted = False

    def refused(self, body: bytes | None, ref: str | None) -> None:
        """Remember a webhook refused for its secret (``body`` may be unread: None)."""
        for key in (_task_id(body), f"ref:{ref}" if ref else None):
            if key is not None:
                self._seen[key] = None
                self._seen.move_to_end(key)
                while len(self._seen) > self._limit:
                    self._seen.popitem(last=False)

    def arrived_by_polling(self, task_id: str | None, ref: str | None) -> bool:
        """A task finished by polling: log the hint (once) if its webhook was refused."""
        matched = task_id in self._seen or f"ref:{ref}" in self._seen
        if matched and not self.hinted:
            self.hinted = True
            log.warning(HINT, task_id)
        return matched


def _task_id(body: bytes | None) -> str | None:
    if not body or len(body) > MAX_BODY_LOOKED_AT:
        return None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or hostile nesting: no hint from it
        return None
    if not isinstance(payload, dict):
        return None
    task_id = payload.get("id", payload.get("task_id"))
    if isinstance(task_id, str) and 0 < len(task_id) <= MAX_ID_LENGTH and task_id.isprintable():
        return task_id
    return None
