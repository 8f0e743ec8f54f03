"""Reading Discord's answers: rate-limit headers, error bodies, what each status means.

Sources: discord/discord-api-docs ``topics/rate-limits.mdx`` (headers, the 429 body, the
invalid-request limit) and ``topics/opcodes-and-status-codes.mdx`` (``{"message", "code"}``
bodies and their codes). Kept apart from the handler so each stays small.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import Any

import httpx

from receiver.handlers import RateLimited
from receiver.redact import redact_paths

#: Discord's JSON error codes the handler tells apart.
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
REQUEST_TOO_LARGE = 40005
MISSING_ACCESS = 50001
MISSING_PERMISSIONS = 50013
INVALID_WEBHOOK_TOKEN = 50027
#: How much of Discord's message goes into a job's error.
MAX_MESSAGE_CHARS = 200
#: Buckets remembered before the refilled ones are forgotten.
MAX_BUCKETS = 10_000


def redact_webhook_tokens(text: str) -> str:
    """``text`` with the token of every ``/webhooks/<id>/<token>`` path replaced by ``…``
    (``receiver.redact``, which the logs' filters apply to every line too)."""
    return redact_paths(text)


def seconds_in(value: object) -> float | None:
    """A non-negative finite number from a header or a JSON field, else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < float("inf") else None


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer from Discord, read once."""

    status: int
    body: dict[str, Any]
    headers: httpx.Headers

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        return cls(response.status_code, body if isinstance(body, dict) else {}, response.headers)

    @property
    def code(self) -> int | None:
        code = self.body.get("code")
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    @property
    def reason(self) -> str:
        """``403 Forbidden: Missing Access (code 50001)``: what Discord said, made short."""
        message = self.body.get("message")
        text = " ".join(message.split())[:MAX_MESSAGE_CHARS] if isinstance(message, str) else ""
        phrase = httpx.codes.get_reason_phrase(self.status)
        said = f"{self.status} {phrase}".strip()
        if text:
            said += f": {text}"
        if self.code is not None:
            said += f" (code {self.code})"
        return said

    def retry_after(self) -> float:
        """A 429's wait: the body's ``retry_after`` (a float), else ``Retry-After``, else 1 s."""
        for value in (self.body.get("retry_after"), self.headers.get("retry-after")):
            seconds = seconds_in(value)
            if seconds is not None:
                return seconds
        return 1.0

    @property
    def global_limit(self) -> bool:
        """The 429 is the bot's global limit (every route waits), not one channel's."""
        return (
            self.headers.get("x-ratelimit-global", "").lower() == "true"
            or self.headers.get("x-ratelimit-scope", "").lower() == "global"
            or self.body.get("global") is True
        )

    @property
    def scope(self) -> str:
        return self.headers.get("x-ratelimit-scope") or ("global" if self.global_limit else "user")

    def exhausted_for(self) -> float | None:
        """Seconds until the bucket refills when this answer used its last request
        (``X-RateLimit-Remaining: 0``), else None: the next send waits rather than earns a 429."""
        if self.headers.get("x-ratelimit-remaining", "").strip() != "0":
            return None
        return seconds_in(self.headers.get("x-ratelimit-reset-after"))


class Buckets:
    """When each of Discord's buckets refills, as its answers said (``Remaining: 0`` with
    ``Reset-After``, or a 429): checked right before each request, after the pacer's slot, so a
    send already waiting for its slot still sees a hold that came in meanwhile."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        # Per loop: a lock cannot be shared by two loops (tests, asyncio.run per drain).
        self._locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()

    def one_at_a_time(self, key: str) -> asyncio.Lock:
        """The lock that keeps one request to ``key`` in flight at a time."""
        locks = self._locks.setdefault(asyncio.get_running_loop(), {})
        if len(locks) >= MAX_BUCKETS:
            for idle in [k for k, lock in locks.items() if not lock.locked()]:
                del locks[idle]
        return locks.setdefault(key, asyncio.Lock())

    def hold(self, key: str, seconds: float) -> None:
        until = time.monotonic() + max(0.0, seconds)
        self._until[key] = max(self._until.get(key, 0.0), until)
        if len(self._until) > MAX_BUCKETS:
            now = time.monotonic()
            self._until = {k: t for k, t in self._until.items() if t > now}

    async def wait(self, key: str, max_wait: float) -> None:
        """Sleep until ``key`` refills; ``RateLimited`` instead of sleeping past ``max_wait``."""
        wait = self._until.get(key, 0.0) - time.monotonic()
        if wait > max_wait:
            raise RateLimited(f"Discord's bucket for {key} refills in {wait:.1f} s", wait)
        if wait > 0:
            await asyncio.sleep(wait)


class Refusals:
    """Refusals that no retry soon can change (a bot token refused, a channel or an
    interaction gone): asked once, then given again without a request, because Discord bans an
    address after 10,000 invalid requests in 10 minutes and asks that a webhook which answered
    404 not be used again (``topics/rate-limits.mdx``)."""

    def __init__(self) -> None:
        self._until: dict[str, tuple[float, str]] = {}

    def remember(self, key: str, reason: str, seconds: float) -> None:
        now = time.monotonic()
        if len(self._until) >= MAX_BUCKETS:
            self._until = {k: v for k, v in self._until.items() if v[0] > now}
        self._until[key] = (now + seconds, reason)

    def reason(self, key: str) -> str | None:
        """Why ``key`` was refused, while that is remembered; else None."""
        until, reason = self._until.get(key, (0.0, ""))
        return reason if until > time.monotonic() else None
