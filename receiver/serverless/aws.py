"""AWS Lambda: ``receiver.serverless.aws:handler``, the receiver as one function.

- **HTTP** (a Function URL or API Gateway: HTTP API payload 2.0, REST API 1.0): the request
  goes to the receiver app through Mangum, body bytes as sent (base64 bodies decoded, so an
  ``X-BFL-Signature`` over the body still verifies). The webhook is recorded, then, with
  inline processing (``receiver.inline``; on by default here, see ``lambda_settings``), its
  task's jobs run in the same invocation within the budget, and the answer goes out.
- **EventBridge** (``"source": "aws.events"``, e.g. a schedule): a drain
  (``receiver.draining``) bounded by the invocation's remaining time, less
  ``RESPONSE_MARGIN_SECONDS``. Work left by a cut inline run, retries, and tasks whose webhook
  never came (the reconcile pass) are done there.

Why it looks like this:

- Mangum runs with ``lifespan="off"``, since it would run the lifespan around every invocation
  (a new store pool and HTTP client each time). The app's lifespan is entered once per
  execution environment instead, on an event loop this module keeps, and reused while warm.
- Lambda freezes the environment as soon as the answer is sent, so nothing may be left running
  between invocations: the worker and reconciler never start here (``run_worker`` is forced
  off), and any task still pending when an invocation ends is waited for briefly, then
  cancelled (``_settle``) rather than left to wake up inside the next invocation with its
  lease long gone. Background work happens inside invocations only: inline, or in drains.
- Bad input (an event of an unknown shape, a body that is not base64, an oversized body) gets
  a 4xx JSON answer naming the problem, never a traceback or a header's value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from mangum import Mangum
from pydantic import ValidationError
from starlette.applications import Starlette

from receiver.app import create_app
from receiver.draining import MAX_BUDGET_SECONDS, DrainSummary, drain_services
from receiver.handlers import Handler
from receiver.health import describe
from receiver.inline import INLINE_CAP_SECONDS, invocation_deadline_at
from receiver.runtime import Services
from receiver.settings import Settings

log = logging.getLogger("receiver.serverless.aws")

#: A drain stops this long before the function's timeout, so its summary is still returned.
RESPONSE_MARGIN_SECONDS = 1.0
#: The longest an invocation waits for tasks still pending after its answer (a NOTIFY being
#: sent, say) before cancelling them: Lambda would freeze them mid-way otherwise.
SETTLE_SECONDS = 2.0
#: A drain's budget when the context does not say how long is left (never on Lambda itself).
FALLBACK_DRAIN_SECONDS = 30.0

#: On a 503: BFL delivers again after its own delays; this is for other senders.
RETRY = {"retry-after": "5"}
#: What an event that is neither HTTP nor EventBridge is told.
UNKNOWN_EVENT = (
    "not an event this function takes: send a Function URL or API Gateway (REST or HTTP API) "
    'request, or an EventBridge event ("source": "aws.events") to run a drain'
)


class DrainFailed(Exception):
    """A scheduled drain could not run (the store is unreachable, no time was left). Raised so
    that Lambda counts the invocation as failed (EventBridge retries it, alarms see it)."""


def lambda_settings(settings: Settings) -> Settings:
    """``settings`` as this adapter runs them: no background worker (Lambda freezes it), and
    inline processing on at its cap unless ``RECEIVER_INLINE_BUDGET_SECONDS`` is set (0 turns
    it off); the invocation's remaining time bounds it further."""
    update: dict[str, Any] = {"run_worker": False}
    if "inline_budget_seconds" not in settings.model_fields_set:
        update["inline_budget_seconds"] = INLINE_CAP_SECONDS
    return settings.model_copy(update=update)


def _answer(status: int, error: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Lambda proxy answer, the same shape for REST, HTTP API and Function URLs."""
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": json.dumps({"error": error}),
        "isBase64Encoded": False,
    }


def _why_not_open(exc: Exception) -> str:
    """One line for the log: the settings at fault by name (never their values, which may be
    secrets), or the store's error."""
    if isinstance(exc, ValidationError):
        names = sorted({f"RECEIVER_{e['loc'][0]}".upper() for e in exc.errors() if e["loc"]})
        return f"invalid settings: {', '.join(names)}"
    if isinstance(exc, OSError | ConnectionError) or "asyncpg" in type(exc).__module__:
        return describe(exc)  # a store or network error: its first line says enough
    # A refusal with a fix to name (the durability guard's line, a bad handler spec): whole.
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:1000]}" if text else type(exc).__name__


def _remaining(context: Any) -> float | None:
    """Seconds this invocation has left, from Lambda's context."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return float(remaining()) / 1000


def _body_problem(event: Mapping[str, Any], limit: int) -> dict[str, Any] | None:
    """A 4xx answer for a body the app cannot be handed, before Mangum decodes it (Mangum's
    base64 decoding drops stray characters silently, which would change the signed bytes)."""
    body = event.get("body")
    if body is None:
        return None
    if not isinstance(body, str):
        return _answer(400, "the event's body must be a string")
    if not event.get("isBase64Encoded"):
        return None  # the app itself refuses an oversized body with 413
    if len(body) > 4 * (limit // 3 + 1):
        return _answer(413, f"body over {limit} bytes")
    try:
        base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return _answer(400, "the body is marked base64 (isBase64Encoded) but is not valid base64")
    return None


@dataclass
class _Warm:
    """What one execution environment keeps between invocations."""

    loop: asyncio.AbstractEventLoop
    app: Starlette
    services: Services
    mangum: Mangum
    stack: contextlib.AsyncExitStack


class LambdaReceiver:
    """A Lambda handler: ``LambdaReceiver()(event, context)``.

    ``settings`` defaults to the environment's (``RECEIVER_*``), read at the first invocation;
    ``handlers`` replaces the configured ones and ``transport`` carries downloads and polls
    (embedding, tests).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        handlers: Mapping[str, Handler] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._handlers = handlers
        self._transport = transport
        self._warm: _Warm | None = None

    def __call__(self, event: Any, context: Any) -> dict[str, Any]:
        if not isinstance(event, dict):
            return _answer(400, UNKNOWN_EVENT)
        http = "requestContext" in event
        if not http and event.get("source") != "aws.events":
            log.warning("refused an event of an unknown shape (keys: %s)", ", ".join(event)[:200])
            return _answer(400, UNKNOWN_EVENT)
        try:
            warm = self._open()
        except Exception as exc:
            reason = _why_not_open(exc)
            log.error("cannot open the receiver: %s", reason)
            if not http:
                raise DrainFailed(f"cannot open the receiver: {reason}") from None
            return _answer(
                503, "the receiver cannot start (see its log); deliver again later", RETRY
            )
        try:
            if http:
                return self._http(warm, event, context)
            return self._drain(warm, context).as_dict()
        finally:
            _settle(warm.loop)

    # -- once per execution environment ------------------------------------------------------

    def _open(self) -> _Warm:
        if self._warm is not None:
            return self._warm
        settings = lambda_settings(self._settings if self._settings is not None else Settings())
        logging.getLogger("receiver").setLevel(settings.log_level.upper())
        # One loop for the environment's life: the store's pool and the HTTP client belong to
        # it. Mangum runs each request on the current loop, this one.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = create_app(settings, handlers=self._handlers, transport=self._transport)
        stack = contextlib.AsyncExitStack()
        try:
            loop.run_until_complete(stack.enter_async_context(app.router.lifespan_context(app)))
        except BaseException:
            loop.run_until_complete(stack.aclose())
            asyncio.set_event_loop(None)
            loop.close()
            raise
        services: Services = app.state.runtime.services
        self._warm = _Warm(loop, app, services, Mangum(app, lifespan="off"), stack)
        return self._warm

    def close(self) -> None:
        """Close the store, storage and client (tests; Lambda just ends the process)."""
        warm, self._warm = self._warm, None
        if warm is None:
            return
        try:
            warm.loop.run_until_complete(warm.stack.aclose())
        finally:
            asyncio.set_event_loop(None)
            warm.loop.close()

    # -- one invocation ----------------------------------------------------------------------

    def _http(self, warm: _Warm, event: dict[str, Any], context: Any) -> dict[str, Any]:
        problem = _body_problem(event, warm.services.settings.max_body_bytes)
        if problem is not None:
            return problem
        try:
            warm.mangum.infer(event, context)
        except RuntimeError:  # requestContext, but not a proxy request Mangum knows
            return _answer(400, UNKNOWN_EVENT)
        remaining = _remaining(context)
        if remaining is None:
            return warm.mangum(event, context)
        # The request task Mangum creates inherits this: inline processing ends in time.
        with invocation_deadline_at(time.monotonic() + remaining):
            return warm.mangum(event, context)

    def _drain(self, warm: _Warm, context: Any) -> DrainSummary:
        remaining = _remaining(context)
        left = FALLBACK_DRAIN_SECONDS if remaining is None else remaining
        budget = min(MAX_BUDGET_SECONDS, left - RESPONSE_MARGIN_SECONDS)
        if budget <= 0:
            raise DrainFailed(
                f"{left:.1f} s left: too little for a drain (raise the function's timeout)"
            )
        try:
            summary = warm.loop.run_until_complete(drain_services(warm.services, budget=budget))
        except Exception as exc:
            reason = describe(exc)
            log.error("drain failed: %s", reason)
            raise DrainFailed(f"the drain failed: {reason}") from None
        log.info("drain: %s", json.dumps(summary.as_dict()))
        return summary


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    """Let tasks still pending finish (briefly), cancel the rest: Lambda freezes the process
    once the answer is out, and a task left behind would run inside a later invocation."""
    if asyncio.all_tasks(loop):
        loop.run_until_complete(_finish_pending(SETTLE_SECONDS))


async def _finish_pending(timeout: float) -> None:  # noqa: ASYNC109 - a grace period
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    if not pending:
        return
    _, late = await asyncio.wait(pending, timeout=timeout)
    for task in late:
        task.cancel()
    if late:
        log.warning(
            "cancelled %d task(s) still running at the end of the invocation: %s",
            len(late),
            ", ".join(sorted(task.get_name() for task in late))[:200],
        )
        await asyncio.gather(*late, return_exceptions=True)


#: The function's handler (``receiver.serverless.aws.handler``): settings come from the
#: environment at the first invocation, and the store stays open while the environment lives.
handler = LambdaReceiver()
