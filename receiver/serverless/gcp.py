"""Cloud Run functions: ``receiver.serverless.gcp:webhook``, the receiver behind
``@functions_framework.aio.http`` (``pip install 'bfl-hooks[gcp]'``).

A function's ``main.py`` is one line, ``from receiver.serverless.gcp import webhook``, deployed
with ``--entry-point webhook`` (locally: ``functions-framework --asgi --target webhook``).

The Functions Framework serves a function, not an app: it builds a Starlette app of its own
with catch-all routes and calls ``webhook`` with each request. ``webhook`` hands that request's
own ASGI scope and receive channel to the receiver's app (``receiver.create_app``), so every
route works as under ``serve`` (``POST /webhooks/bfl``, ``/healthz``, ``/readyz``,
``/metrics``, ``POST /drain``) and the body is read from the channel as the server received
it: an ``X-BFL-Signature`` is checked over the exact bytes BFL sent.

Once per instance: the framework runs no lifespan for a function, so the first request enters
the app's own lifespan (``receiver.runtime.opened_services``: the durability guard, the store,
the storage, the HTTP client) and every later request on the instance reuses it. Settings are
read, and the guard checked, when the module is imported, so an instance that would lose
events never starts serving.

No worker by default: once a function has answered, its instance gets no CPU until the next
request, and a worker left running would resume inside some later request with its leases
long expired. Jobs run in a drain instead: Cloud Scheduler calling ``POST /drain?budget=…``
(``deploy/gcp/``). ``RECEIVER_RUN_WORKER=true``, set explicitly, keeps the worker, for a
function whose Cloud Run service has instance-based billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import MutableMapping
from typing import Any

import functions_framework.aio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.app import RETRY_AFTER_SECONDS
from receiver.health import describe
from receiver.serverless.config import FunctionMisconfigured, function_app, function_settings

log = logging.getLogger("receiver")

#: What the framework's own router put in the scope; the receiver's app routes it afresh.
_FRAMEWORK_KEYS = frozenset({"app", "router", "route", "endpoint", "path_params"})


class _Reply:
    """The receiver app's answer, collected to be returned to the framework as a Response."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def response(self) -> Response:
        if self.status is None:
            raise RuntimeError("the receiver app sent no answer")
        response = Response(bytes(self.body), status_code=self.status)
        response.raw_headers = self.headers  # the app's own, Content-Length included
        return response


class Instance:
    """The receiver app, with its lifespan entered on the first request and kept open for the
    life of the instance."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self._opened: contextlib.AsyncExitStack | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> None:
        async with self._opening:  # requests arriving together open it once
            if self._opened is not None:
                return
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(self.app.router.lifespan_context(self.app))
            self._opened = stack

    async def handle(self, request: Request) -> Response:
        """Answer ``request`` with the receiver app."""
        if self._opened is None:
            try:
                await self._open()
            except Exception as exc:  # PostgreSQL down, a wrong password: BFL delivers again
                log.error("cannot open the receiver's store or storage: %s", describe(exc))
                return JSONResponse(
                    {"error": "the receiver cannot open its store; deliver again later"},
                    status_code=503,
                    headers={"retry-after": RETRY_AFTER_SECONDS},
                )
        scope = {k: v for k, v in request.scope.items() if k not in _FRAMEWORK_KEYS}
        reply = _Reply()
        await self.app(scope, request.receive, reply.send)
        return reply.response()


def _start() -> Instance:
    """This instance's app; a misconfiguration ends the process with one line (the platform
    shows it in the function's logs), never a traceback."""
    try:
        return Instance(function_app(function_settings()))
    except FunctionMisconfigured as exc:
        raise SystemExit(str(exc)) from None


instance = _start()


@functions_framework.aio.http
async def webhook(request: Request) -> Response:
    """The Cloud Run functions entry point: every request goes to the receiver app."""
    return await instance.handle(request)
