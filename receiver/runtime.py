"""What every run mode opens, opened one way: store, storage, HTTP client, handlers, metrics.

``serve`` (the app's lifespan), ``work`` and ``drain`` all enter ``opened_services`` and, when
they run jobs, ``running_background`` or a ``Worker`` built by ``Services.worker``: one code
path for recording, downloading and dispatching, whatever starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from receiver import redact
from receiver.durability import check_durable
from receiver.handlers import HandlerSet, load_handlers
from receiver.health import Health
from receiver.loops import watch
from receiver.metrics import Metrics
from receiver.reconciler import Reconciler
from receiver.refusals import RefusedWebhooks
from receiver.settings import Settings
from receiver.storage import Storage, open_storage
from receiver.store import Store, open_store
from receiver.worker import Worker

log = logging.getLogger("receiver")

#: The user agent on sample downloads, so delivery logs can tell us apart.
USER_AGENT = "bfl-hooks-receiver"
MAX_CONNECTIONS = 256
MAX_KEEPALIVE_CONNECTIONS = 64


@dataclass
class Services:
    """The open resources of one receiver process (or one drain)."""

    settings: Settings
    store: Store
    storage: Storage
    client: httpx.AsyncClient
    handlers: HandlerSet
    metrics: Metrics
    health: Health = field(default_factory=Health)
    refused: RefusedWebhooks = field(default_factory=RefusedWebhooks)
    """Webhooks refused for their secret, for the reconciler's hint (``refusals.py``)."""

    def worker(self) -> Worker:
        return Worker(
            settings=self.settings,
            store=self.store,
            storage=self.storage,
            handlers=self.handlers,
            client=self.client,
            metrics=self.metrics,
            health=self.health,
        )

    def reconciler(self) -> Reconciler:
        return Reconciler(
            settings=self.settings,
            store=self.store,
            client=self.client,
            metrics=self.metrics,
            handlers_for=self.handlers.names_for,
            health=self.health,
            refused=self.refused,
        )


@contextlib.asynccontextmanager
async def opened_services(
    settings: Settings,
    *,
    handlers: HandlerSet | None = None,
    metrics: Metrics | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    create: bool = True,
) -> AsyncIterator[Services]:
    """Open everything for the block, close it in reverse, even if a later one fails to open.

    Refuses (``EphemeralStoreRefused``) a store or storage on the local disk of a function
    platform (``receiver.durability``). ``handlers`` defaults to the configured ones;
    ``transport`` carries the downloads and polls instead of httpx's own (tests);
    ``create=False`` refuses to create a missing store.
    """
    # First: on a function platform, a store on the instance's disk loses what it acknowledges.
    check_durable(settings)
    redact.install()  # signed URLs' queries never reach a log
    handler_set = handlers if handlers is not None else load_handlers(settings.handlers)
    async with contextlib.AsyncExitStack() as stack:
        store = open_store(settings.database_url, create=create)
        await store.open()
        stack.push_async_callback(store.close)
        storage = open_storage(settings.storage_url)
        await storage.open()
        stack.push_async_callback(storage.close)
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS
        )
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                limits=limits, headers={"user-agent": USER_AGENT}, transport=transport
            )
        )
        yield Services(
            settings, store, storage, client, handler_set, metrics or Metrics(), Health()
        )


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def running_background(services: Services) -> AsyncIterator[Worker]:
    """The worker and the reconciler, running for the block; on the way out the reconciler
    stops, then the worker stops as on SIGTERM (``RECEIVER_SHUTDOWN_GRACE_SECONDS``, then
    what is left is handed back)."""
    settings = services.settings
    worker = services.worker()
    async with contextlib.AsyncExitStack() as stack:
        worker.start()
        stack.push_async_callback(worker.stop, settings.shutdown_grace_seconds)
        task = asyncio.create_task(services.reconciler().run(), name="receiver-reconciler")
        watch(task, "reconciler", services.health, log)
        stack.push_async_callback(_stop, task)
        if settings.bfl_api_key is None:
            log.info("no BFL_API_KEY: tasks whose webhook never comes cannot be polled")
        yield worker
