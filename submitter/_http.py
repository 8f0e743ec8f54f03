"""Sending requests: one pooled client, named timeouts, errors translated, bounded retries.

What is retried, and why (stripe-python's ``_should_retry`` style):

* 429: always, after ``Retry-After`` when BFL gives one. BFL refuses the task *before* creating
  it, so resending a submit cannot run (or charge) it twice.
* Connection failures before the request left (refused, connect timeout, no pooled connection
  free): always, for the same reason: the server never saw the request.
* 5xx, read timeouts, broken connections: only for GETs. For a submit POST the server may
  already have created and charged the task when it failed to answer; resending would submit
  a second one, so the error is raised instead.
* 401/402/403/422 and other 4xx: never; resending cannot change the answer.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, BinaryIO

import httpx
import stamina

from submitter._endpoints import describe
from submitter._errors import (
    APIStatusError,
    AuthError,
    OutOfCredits,
    RateLimited,
    ServerError,
    TransportError,
    ValidationError,
)

#: A submit carries up to ~27 MB of base64 (a 20 MB image): writing it may take a while.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
WRITE_TIMEOUT = 120.0
POOL_TIMEOUT = 30.0
API_TIMEOUT = httpx.Timeout(
    connect=CONNECT_TIMEOUT, read=READ_TIMEOUT, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT
)
#: Images are a few MB; a stalled delivery host should not hang a download forever.
DOWNLOAD_TIMEOUT = httpx.Timeout(connect=CONNECT_TIMEOUT, read=60.0, write=10.0, pool=POOL_TIMEOUT)

#: Exceptions raised before any byte of the request reached the server.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of every retry loop: attempts, total seconds, and the backoff between tries."""

    attempts: int = 6
    timeout: float = 120.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    max_retry_after: float = 60.0
    """A longer ``Retry-After`` is capped to this (a hostile header must not park us for days)."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return body.get("detail", body) if isinstance(body, dict) else body


def error_for(response: httpx.Response, what: str) -> Exception:
    """The BFLError for a non-2xx ``response`` to ``what`` (e.g. "POST /v1/flux-dev")."""
    status = response.status_code
    detail = _detail(response)
    if status == 422:
        errors = detail if isinstance(detail, list) else [{"loc": [], "msg": str(detail)}]
        return ValidationError(f"{what} refused (422): {describe(errors)}", errors, 422)
    text = detail if isinstance(detail, str) else str(detail)[:300]
    message = f"{what}: HTTP {status}: {text}"
    if status in (401, 403):
        return AuthError(message, status, detail)
    if status == 402:
        return OutOfCredits(message, status, detail)
    if status == 429:
        after = parse_retry_after(response.headers.get("retry-after"), time.time())
        return RateLimited(message, status, detail, after)
    if status >= 500:
        return ServerError(message, status, detail)
    return APIStatusError(message, status, detail)


def retry_rule(*, idempotent: bool, policy: RetryPolicy) -> Callable[[Exception], bool | float]:
    """stamina's ``on=`` hook: False (raise), True (back off) or the seconds to wait."""

    def should_retry(exc: Exception) -> bool | float:
        if isinstance(exc, RateLimited):
            if exc.retry_after is not None:
                return min(exc.retry_after, policy.max_retry_after)
            return True
        if isinstance(exc, TransportError):
            return idempotent or isinstance(exc.__cause__, NOT_SENT)
        if isinstance(exc, ServerError):
            return idempotent
        return False

    return should_retry


class Sender:
    """Sends one logical request, with retries where they are safe; raises BFLErrors."""

    def __init__(self, client: httpx.AsyncClient, policy: RetryPolicy) -> None:
        self.client = client
        self.policy = policy

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> httpx.Response:
        """The 2xx answer to ``method url``; the last error once retries are exhausted."""
        what = f"{method} {httpx.URL(url).copy_with(query=None)}"
        async for attempt in self._attempts(idempotent=idempotent):
            with attempt:
                try:
                    response = await self.client.request(
                        method, url, json=json, params=params, headers=headers
                    )
                except httpx.TransportError as exc:
                    raise TransportError(f"{what}: {type(exc).__name__}: {exc}") from exc
                if not response.is_success:
                    raise error_for(response, what)
        return response

    def _attempts(self, *, idempotent: bool) -> AsyncIterator[stamina.Attempt]:
        """The attempts this policy allows, retrying what ``retry_rule`` says is safe."""
        policy = self.policy
        return stamina.retry_context(
            on=retry_rule(idempotent=idempotent, policy=policy),
            attempts=policy.attempts,
            timeout=policy.timeout,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
        )

    async def stream_to(self, url: str, sink: BinaryIO) -> httpx.Headers:
        """GET ``url`` (no API key: a delivery host) into ``sink``; retried, it is a GET."""
        what = f"GET {httpx.URL(url).copy_with(query=None)}"
        async for attempt in self._attempts(idempotent=True):
            with attempt:
                sink.seek(0)  # a retry starts the file again
                sink.truncate()
                try:
                    async with self.client.stream("GET", url, timeout=DOWNLOAD_TIMEOUT) as resp:
                        if not resp.is_success:
                            await resp.aread()
                            raise error_for(resp, what)
                        async for chunk in resp.aiter_bytes():
                            sink.write(chunk)
                        headers = resp.headers
                except httpx.TransportError as exc:
                    raise TransportError(f"{what}: {type(exc).__name__}: {exc}") from exc
        return headers


def certainly_refused(exc: BaseException) -> bool:
    """True when the POST certainly created no task, so its recorded submission can go.

    A 5xx, a read timeout or a cancellation may come after BFL created (and charged) the task:
    then the submission stays, and the webhook (which carries its reference) still finds it.
    """
    if isinstance(exc, APIStatusError):
        return exc.status_code < 500 and exc.status_code != 200
    if isinstance(exc, TransportError):
        return isinstance(exc.__cause__, NOT_SENT)
    return isinstance(exc, ValidationError)
