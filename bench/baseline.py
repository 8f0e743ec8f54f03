"""The ingest baseline: a bare Starlette app that reads the body and answers, nothing else.

Served exactly as ``bfl-receiver serve --fd`` serves the receiver, so only the app differs.
"""

from __future__ import annotations

import socket

import click
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def webhook(request: Request) -> Response:
    await request.body()
    return JSONResponse({"ok": True})


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[Route("/webhooks/bfl", webhook, methods=["POST"]), Route("/healthz", healthz)]
)


@click.command()
@click.option("--fd", type=int, required=True)
def main(fd: int) -> None:
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    main()
