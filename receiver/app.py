"""The receiver's HTTP app: ``create_app(settings)``; store, client and worker live in lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver import redact
from receiver.correlation import METADATA_PARAM, REF_PARAM, Correlation, correlate
from receiver.download import url_deadline
from receiver.draining import check_budget, drain_services
from receiver.handlers import Handler, HandlerSet, load_handlers
from receiver.health import Health, describe
from receiver.inline import process_inline
from receiver.metrics import Metrics
from receiver.payload import MAX_REF_LENGTH, PayloadError, parse_notice
from receiver.refusals import RefusedWebhooks
from receiver.runtime import Services, opened_services, running_background
from receiver.settings import Settings
from receiver.storage import Storage
from receiver.store import RecordOutcome, Store
from receiver.store.base import ForeignReference
from receiver.verify import VerificationError, verify, verify_headers

log = logging.getLogger("receiver")


@dataclass
class Runtime:
    """What the lifespan opened, for the routes."""

    settings: Settings
    store: Store
    storage: Storage
    handlers: HandlerSet
    metrics: Metrics
    secrets: list[str]
    health: Health
    refused: RefusedWebhooks = field(default_factory=RefusedWebhooks)
    """Webhooks refused for their secret, for the reconciler's hint (``refusals.py``)."""
    unverified_reads: int = 0
    """Bodies being read right now before they are authenticated (``X-BFL-Signature``)."""
    services: Services | None = None
    """Everything the lifespan opened (``receiver.runtime``), for ``POST /drain``."""


class BodyTooLarge(Exception):
    """The webhook body is over ``max_body_bytes``."""


#: How long /readyz waits for the store before it calls it unreachable.
READY_TIMEOUT = 5.0
#: How long a webhook waits to be recorded. BFL waits 30 s for an answer and then counts the
#: delivery failed: a hung store (a stalled disk, a paused database) gets a 503 well before, so
#: the notice is delivered again. Recording is idempotent, so a record that did land after
#: all is just a duplicate then. Longer than SQLite's 10 s busy timeout (``sqlite_db``), so a
#: write lock held elsewhere is reported as "database is locked", which says more.
RECORD_TIMEOUT = 12.0
#: What a webhook that could not be recorded is told: BFL (or the sandbox) tries again.
RETRY_AFTER_SECONDS = "5"


def create_app(
    settings: Settings,
    *,
    handlers: Mapping[str, Handler] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The receiver. ``handlers`` replaces the configured ones (for embedding and tests);
    ``transport`` carries the downloads and polls instead of httpx's own (for tests)."""
    redact.install()  # signed URLs' queries never reach a log (before handlers load and log)
    handler_set = (
        HandlerSet(dict(handlers)) if handlers is not None else load_handlers(settings.handlers)
    )
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The same opener as `work` and `drain` (receiver.runtime): one way to open everything.
        async with opened_services(
            settings, handlers=handler_set, metrics=metrics, transport=transport
        ) as services:
            secrets = [s.get_secret_value() for s in settings.webhook_secret]
            app.state.runtime = Runtime(
                settings,
                services.store,
                services.storage,
                handler_set,
                metrics,
                secrets,
                services.health,
                refused=services.refused,
                services=services,
            )
            if settings.run_worker:
                async with running_background(services):
                    yield
            else:
                yield

    return Starlette(
        routes=[
            Route("/webhooks/bfl", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/drain", drain_endpoint, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def create_status_app(services: Services) -> Starlette:
    """``/healthz``, ``/readyz`` and ``/metrics`` alone, over already opened services: what
    ``bfl-receiver work --port`` serves, so a worker has probes and its downloads and handler
    runs are scraped like a receiver's."""
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )
    app.state.runtime = Runtime(
        services.settings,
        services.store,
        services.storage,
        services.handlers,
        services.metrics,
        [],
        services.health,
        refused=services.refused,
        services=services,
    )
    return app


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


#: On answers given before the body was read in full: the connection cannot be reused, and
#: closing it frees the socket at once instead of reading (and discarding) the rest.
_CLOSE = {"connection": "close"}


def _problem(status: int, error: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _unauthorized(
    rt: Runtime, exc: VerificationError, body: bytes | None, ref: str | None
) -> Response:
    rt.metrics.webhooks.labels("unauthorized").inc()
    log.warning("webhook refused: %s", exc)  # the reason, never the secret
    rt.refused.refused(body, ref)  # for the hint if the task then arrives by polling
    return _problem(401, "unauthorized", _CLOSE)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:  # noqa: ASYNC109
    """The body, at most ``limit`` bytes, all of it within ``timeout`` seconds of its first
    part (TimeoutError otherwise).

    A webhook's body nearly always comes whole in its first message, already buffered by the
    server: that one is read with no timer (arming one costs more than the rest of the read),
    and a deadline is armed only when more is to come. A body that never starts is cut by
    ``serve``'s own deadline (``receiver/httpguard.py``), which then disconnects.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body, more = await _receive_part(request)
    if more:
        async with asyncio.timeout(timeout):
            while more:
                part, more = await _receive_part(request)
                body += part
                if len(body) > limit:
                    raise BodyTooLarge
    if len(body) > limit:
        raise BodyTooLarge
    return bytes(body)


async def _receive_part(request: Request) -> tuple[bytearray, bool]:
    message = await request.receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect
    return bytearray(message.get("body", b"")), bool(message.get("more_body", False))


def _usable_ref(ref: str) -> bool:
    # A NUL or control character cannot even be looked up in PostgreSQL: refused with a 400
    # (once authenticated, so a wrong secret still gets its 401), never a 500.
    return len(ref) <= MAX_REF_LENGTH and ref.isprintable()


async def webhook(request: Request) -> Response:
    started = time.perf_counter()
    rt = _runtime(request)
    settings = rt.settings
    link = _correlation(request, rt.secrets)
    ref = link.ref
    try:
        # The secret header is checked before a byte of the body is read: a client without
        # the secret costs no memory and holds no connection.
        authenticated = verify_headers(request.headers, link.secrets)
    except VerificationError as exc:
        return _unauthorized(rt, exc, None, ref)
    if not authenticated and rt.unverified_reads >= settings.max_unverified_reads:
        # Anyone can send a junk signature: bound what reading such bodies can cost.
        rt.metrics.webhooks.labels("busy").inc()
        return JSONResponse(
            {"error": "too many unauthenticated bodies being read; deliver again later"},
            status_code=503,
            headers={"retry-after": "1", **_CLOSE},
        )
    rt.unverified_reads += not authenticated
    try:
        body = await _read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
    except BodyTooLarge:
        rt.metrics.webhooks.labels("too_large").inc()
        return _problem(413, f"body over {settings.max_body_bytes} bytes", _CLOSE)
    except TimeoutError:
        rt.metrics.webhooks.labels("timeout").inc()
        return _problem(408, f"body not received within {settings.body_timeout_seconds} s", _CLOSE)
    except ClientDisconnect:
        # Gone (or cut by the server's read deadline): nobody is left to answer.
        return Response(status_code=400, headers=_CLOSE)
    finally:
        rt.unverified_reads -= not authenticated
    if not authenticated:
        try:
            verify(body, request.headers, link.secrets)  # the X-BFL-Signature over the body
        except VerificationError as exc:
            return _unauthorized(rt, exc, body, ref)
    if ref is not None and not _usable_ref(ref):
        rt.metrics.webhooks.labels("malformed").inc()
        return _problem(400, "malformed ?ref= (too long, or not printable)")
    try:
        if link.error is not None:
            raise PayloadError(link.error)
        notice = parse_notice(body)
    except PayloadError as exc:
        rt.metrics.webhooks.labels("malformed").inc()
        return _problem(400, str(exc))
    received = time.time()
    deadline = (
        url_deadline(notice.sample_url, received, settings.sample_ttl_seconds)
        if notice.sample_url
        else None
    )
    try:
        recording = rt.store.record(
            notice,
            deadline=deadline,
            handlers=rt.handlers.names_for(notice.status),
            ref=ref,
            finetune_handlers=rt.handlers.names_for(notice.status, finetune=True),
            metadata=link.metadata,
        )
        async with asyncio.timeout(RECORD_TIMEOUT):
            outcome = await recording
    except ForeignReference:
        # Checked inside the recording transaction: no extra round trip per webhook.
        rt.metrics.webhooks.labels("unauthorized").inc()
        log.warning("webhook refused: reference %s belongs to another task", ref)
        return _problem(401, "unauthorized")
    except Exception as exc:
        # Not recorded, so not acknowledged: a 503 tells BFL to deliver it again, and /readyz
        # reports the store until a webhook is recorded again.
        reason = _store_failure(exc, RECORD_TIMEOUT)
        rt.health.fail("webhooks", f"cannot record webhooks: {reason}")
        rt.metrics.webhooks.labels("store_error").inc()
        log.error("task %s: webhook not recorded: %s", notice.task_id, reason)
        return JSONResponse(
            {"error": "the event store is unavailable; deliver again later"},
            status_code=503,
            headers={"retry-after": RETRY_AFTER_SECONDS},
        )
    rt.health.ok("webhooks")
    rt.metrics.recorded[outcome].inc()
    if outcome is RecordOutcome.DUPLICATE:
        rt.metrics.duplicates.inc()
    elif outcome is RecordOutcome.NEW and ref is not None and link.metadata is None:
        await _note_uncorrelated(rt, ref, notice.task_id)
    answer: dict[str, object] = {"task_id": notice.task_id, "outcome": outcome.value}
    # RECEIVER_INLINE_BUDGET_SECONDS (receiver.inline): recorded already, so 200 whatever.
    inline = (
        await process_inline(rt.services, notice.task_id)
        if outcome is not RecordOutcome.PROGRESS and rt.services is not None
        else None
    )
    if inline is not None:
        answer["inline"] = inline.as_dict()
    rt.metrics.ack_seconds.observe(time.perf_counter() - started)
    return JSONResponse(answer)


def _correlation(request: Request, secrets: list[str]) -> Correlation:
    """The webhook URL's reference and metadata, and the secrets that may authenticate it
    (see receiver.correlation): parsed only when the URL has a query."""
    if not request.scope["query_string"]:
        return Correlation(None, None, secrets)
    query = request.query_params
    return correlate(query.get(REF_PARAM) or None, query.get(METADATA_PARAM), secrets)


async def _note_uncorrelated(rt: Runtime, ref: str, task_id: str) -> None:
    """A reference without URL metadata that no submission here knows: the handlers get empty
    metadata. Counted and logged once per reference (a reference is one task's, and a task is
    new once). Only old-style URLs get here: the submitter puts the metadata in the URL."""
    if await rt.store.get_submission(ref=ref) is not None:
        return
    if await rt.store.get_submission(task_id=task_id) is not None:
        return
    rt.metrics.uncorrelated.inc()
    log.warning(
        "task %s came with reference %s, which no submission in this store knows, and no "
        "metadata in its URL: its handlers get empty metadata (was it submitted by an older "
        "submitter recording into another store?)",
        task_id,
        ref,
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


def _store_failure(exc: Exception, waited: float) -> str:
    """Why a store call failed; a timeout says how long it was waited for."""
    if isinstance(exc, TimeoutError):
        return f"the store did not answer within {waited:g} s"
    return describe(exc)


async def readyz(request: Request) -> Response:
    """Ready when the store answers and nothing that records or processes is failing.

    503 lists every reason (the store unreachable, webhooks that could not be recorded, a
    worker loop that cannot reach the store or stopped); ``warnings`` lists what a person must
    look at without taking the receiver out of rotation.
    """
    rt = _runtime(request)
    reasons = []
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await rt.store.ping()
    except Exception as exc:  # any failure to reach the store means not ready
        reasons.append(f"store: unreachable: {_store_failure(exc, READY_TIMEOUT)}")
    reasons += [f"{p.component}: {p.reason}" for p in rt.health.problems]
    body: dict[str, object] = {"ok": not reasons}
    if reasons:
        body["reasons"] = reasons
    warnings = [f"{w.component}: {w.reason}" for w in rt.health.warnings]
    if warnings:
        body["warnings"] = warnings
    return JSONResponse(body, status_code=503 if reasons else 200)


async def metrics_endpoint(request: Request) -> Response:
    rt = _runtime(request)
    token = rt.settings.metrics_token
    if token is not None:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
            return JSONResponse(
                {"error": "unauthorized"}, status_code=401, headers={"www-authenticate": "Bearer"}
            )
    counts = await rt.store.counts()
    rt.metrics.queue_depth.set(counts.queued + counts.running)
    rt.metrics.dead_jobs.set(counts.dead)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def drain_endpoint(request: Request) -> Response:
    """``POST /drain?budget=SECONDS``: a drain (``receiver.draining``) with this app's store and
    client, for schedulers that give a process CPU only while a request runs. 404 unless
    ``RECEIVER_ADMIN_TOKEN`` is set; it is compared in constant time."""
    rt = _runtime(request)
    token = rt.settings.admin_token
    if token is None or rt.services is None:
        return _problem(404, "not found")
    presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
        return JSONResponse(
            {"error": "unauthorized"}, status_code=401, headers={"www-authenticate": "Bearer"}
        )
    try:
        budget = check_budget(float(request.query_params.get("budget", "")))
    except ValueError as exc:
        reason = str(exc) if "budget" in str(exc) else "budget must be a number of seconds"
        return _problem(400, reason)
    try:
        summary = await drain_services(rt.services, budget=budget)
    except Exception as exc:  # the store failed mid-drain: say so, try again later
        log.error("drain failed: %s", describe(exc))
        return JSONResponse(
            {"error": f"the drain failed: {describe(exc)}"},
            status_code=503,
            headers={"retry-after": RETRY_AFTER_SECONDS},
        )
    return JSONResponse(summary.as_dict())
