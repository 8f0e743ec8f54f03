"""The sandbox's HTTP app: ``create_app(settings)``; state and HTTP client live in the lifespan.

Regions are path prefixes on one loopback server: ``/v1/...`` is the global host
(api.bfl.ai), ``/eu/v1/...``, ``/us/v1/...`` the multi-cluster ones and ``/eu1/v1/...``,
``/us1/v1/...`` the legacy ones where finetunes live. Delivery URLs are under ``/delivery/``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox import api, finetune
from sandbox.delivery import serve_sample
from sandbox.http import ApiError, AsciiJSONResponse
from sandbox.runtime import Runtime
from sandbox.settings import SandboxSettings

REGIONS = ("global", "eu", "us", "eu1", "us1")
#: ``handler(request, region=...)``.
RegionHandler = Callable[..., Awaitable[Response]]

_API: list[tuple[str, RegionHandler, str]] = [
    ("/v1/get_result", api.get_result, "GET"),
    ("/v1/credits", api.credits, "GET"),
    ("/v1/my_finetunes", finetune.my_finetunes, "GET"),
    ("/v1/finetune_details", finetune.finetune_details, "GET"),
    ("/v1/delete_finetune", finetune.delete_finetune, "POST"),
    ("/v1/finetune", finetune.create_finetune, "POST"),
    ("/v1/{endpoint}", api.submit, "POST"),  # last: the fixed paths above win
]


def routes() -> list[BaseRoute]:
    """Every API route once per region, the delivery route, and a health check."""
    table: list[BaseRoute] = []
    for region in REGIONS:
        prefix = "" if region == "global" else f"/{region}"
        for path, handler, method in _API:
            table.append(Route(prefix + path, partial(handler, region=region), methods=[method]))
    table.append(Route("/delivery/{region}/results/{task_id}/sample.{ext}", serve_sample))
    table.append(Route("/healthz", _healthz))
    return table


async def _healthz(request: Request) -> Response:
    return AsciiJSONResponse({"status": "ok"})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return AsciiJSONResponse({"detail": exc.detail}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404 and 405, as JSON like everything else here.
    assert isinstance(exc, HTTPException)
    return AsciiJSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


def create_app(settings: SandboxSettings) -> Starlette:
    """A BFL-compatible API for ``settings``; each app has its own state and signing key."""
    key = (
        settings.signing_key.get_secret_value().encode()
        if settings.signing_key is not None
        else secrets.token_bytes(32)
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with httpx.AsyncClient(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not carry loopback traffic
        ) as client:
            runtime = Runtime(settings, client, key)
            try:
                yield {"sandbox": runtime}
            finally:
                await runtime.close()

    return Starlette(
        routes=routes(),
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
