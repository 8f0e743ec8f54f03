"""The receiver's HTTP app: ``create_app(settings)``; store, client and worker live in lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.download import url_deadline
from receiver.handlers import Handler, HandlerSet, load_handlers
from receiver.metrics import Metrics
from receiver.payload import MAX_REF_LENGTH, PayloadError, parse_notice
from receiver.reconciler import Reconciler
from receiver.settings import Settings
from receiver.storage import Storage, open_storage
from receiver.store import RecordOutcome, Store, open_store
from receiver.store.base import ForeignReference
from receiver.verify import VerificationError, derive_secret, verify, verify_headers
from receiver.worker import Worker

log = logging.getLogger("receiver")

#: The user agent on sample downloads, so delivery logs can tell us apart.
USER_AGENT = "bfl-hooks-receiver"
MAX_CONNECTIONS = 256


@dataclass
class Runtime:
    """What the lifespan opened, for the routes."""

    settings: Settings
    store: Store
    storage: Storage
    handlers: HandlerSet
    metrics: Metrics
    secrets: list[str]


class BodyTooLarge(Exception):
    """The webhook body is over ``max_body_bytes``."""


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, *, handlers: Mapping[str, Handler] | None = None) -> Starlette:
    """The receiver. ``handlers`` replaces the configured ones (for embedding and tests)."""
    handler_set = (
        HandlerSet(dict(handlers)) if handlers is not None else load_handlers(settings.handlers)
    )
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            # Each resource is closed by the stack, in reverse, even if a later one fails.
            store = open_store(settings.database_url)
            await store.open()
            stack.push_async_callback(store.close)
            storage = open_storage(settings.storage_url)
            await storage.open()
            stack.push_async_callback(storage.close)
            limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=64)
            client = await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, headers={"user-agent": USER_AGENT})
            )
            secrets = [s.get_secret_value() for s in settings.webhook_secret]
            app.state.runtime = Runtime(settings, store, storage, handler_set, metrics, secrets)
            if settings.run_worker:
                worker = Worker(
                    settings=settings,
                    store=store,
                    storage=storage,
                    handlers=handler_set,
                    client=client,
                    metrics=metrics,
                )
                reconciler = Reconciler(
                    settings=settings,
                    store=store,
                    client=client,
                    metrics=metrics,
                    handlers_for=handler_set.names_for,
                )
                for name, job in (("worker", worker.run()), ("reconciler", reconciler.run())):
                    task = asyncio.create_task(job, name=f"receiver-{name}")
                    stack.push_async_callback(_stop, task)
                if settings.bfl_api_key is None:
                    log.info("no BFL_API_KEY: tasks whose webhook never comes cannot be polled")
            yield

    return Starlette(
        routes=[
            Route("/webhooks/bfl", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


#: On answers given before the body was read in full: the connection cannot be reused, and
#: closing it frees the socket at once instead of reading (and discarding) the rest.
_CLOSE = {"connection": "close"}


def _problem(status: int, error: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _unauthorized(rt: Runtime, exc: VerificationError) -> Response:
    rt.metrics.webhooks.labels("unauthorized").inc()
    log.warning("webhook refused: %s", exc)  # the reason, never the secret
    return _problem(401, "unauthorized", _CLOSE)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def _accepted_secrets(rt: Runtime, request: Request) -> tuple[list[str], str | None]:
    """The secrets this request may carry, and its ``?ref=`` (known before the body is read)."""
    secrets = rt.secrets
    ref = None
    if b"ref=" in request.scope["query_string"]:
        ref = request.query_params.get("ref") or None
    if ref is not None and _usable_ref(ref):
        # Per-task secrets (the submitter's default): derived from a master and the reference.
        secrets = secrets + [derive_secret(m, ref) for m in secrets]
    return secrets, ref


def _usable_ref(ref: str) -> bool:
    # A NUL or control character cannot even be looked up in PostgreSQL: refused with a 400
    # (once authenticated, so a wrong secret still gets its 401), never a 500.
    return len(ref) <= MAX_REF_LENGTH and ref.isprintable()


async def webhook(request: Request) -> Response:
    started = time.perf_counter()
    rt = _runtime(request)
    settings = rt.settings
    secrets, ref = _accepted_secrets(rt, request)
    try:
        # The secret header is checked before a byte of the body is read: a client without
        # the secret costs no memory and holds no connection.
        authenticated = verify_headers(request.headers, secrets)
    except VerificationError as exc:
        return _unauthorized(rt, exc)
    try:
        async with asyncio.timeout(settings.body_timeout_seconds):
            body = await _read_body(request, settings.max_body_bytes)
    except BodyTooLarge:
        rt.metrics.webhooks.labels("too_large").inc()
        return _problem(413, f"body over {settings.max_body_bytes} bytes", _CLOSE)
    except TimeoutError:
        rt.metrics.webhooks.labels("timeout").inc()
        return _problem(408, f"body not received within {settings.body_timeout_seconds} s", _CLOSE)
    except ClientDisconnect:
        # Gone (or cut by the server's read deadline): nobody is left to answer.
        return Response(status_code=400, headers=_CLOSE)
    if not authenticated:
        try:
            verify(body, request.headers, secrets)  # the X-BFL-Signature over the body
        except VerificationError as exc:
            return _unauthorized(rt, exc)
    if ref is not None and not _usable_ref(ref):
        rt.metrics.webhooks.labels("malformed").inc()
        return _problem(400, "malformed ?ref= (too long, or not printable)")
    try:
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
        outcome = await rt.store.record(
            notice, deadline=deadline, handlers=rt.handlers.names_for(notice.status), ref=ref
        )
    except ForeignReference:
        # Checked inside the recording transaction: no extra round trip per webhook.
        rt.metrics.webhooks.labels("unauthorized").inc()
        log.warning("webhook refused: reference %s belongs to another task", ref)
        return _problem(401, "unauthorized")
    rt.metrics.recorded[outcome].inc()
    if outcome is RecordOutcome.DUPLICATE:
        rt.metrics.duplicates.inc()
    rt.metrics.ack_seconds.observe(time.perf_counter() - started)
    return JSONResponse({"task_id": notice.task_id, "outcome": outcome.value})


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def readyz(request: Request) -> Response:
    rt = _runtime(request)
    try:
        await asyncio.wait_for(rt.store.ping(), timeout=5)
    except Exception as exc:  # any failure to reach the store means not ready
        return _problem(503, f"store unreachable: {type(exc).__name__}")
    return JSONResponse({"ok": True})


async def metrics_endpoint(request: Request) -> Response:
    rt = _runtime(request)
    counts = await rt.store.counts()
    rt.metrics.queue_depth.set(counts.queued + counts.running)
    rt.metrics.dead_jobs.set(counts.dead)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
