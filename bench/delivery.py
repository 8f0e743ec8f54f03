"""A stand-in for BFL's delivery host: ~1 MB JPEGs, each unique, after a fixed latency."""

from __future__ import annotations

import asyncio
import io
import random
import socket

import click
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SIZE = 1024 * 1024


def base_jpeg() -> bytes:
    """Noise compresses badly, so a 600x600 noise JPEG is close to 1 MB; pad it to exactly that
    (bytes after the end-of-image marker are ignored by decoders)."""
    rng = random.Random(7)
    img = Image.frombytes("RGB", (600, 600), rng.randbytes(600 * 600 * 3))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    data = out.getvalue()[:SIZE]
    return data + b"\0" * (SIZE - len(data) - 16)


def make_app(latency: float) -> Starlette:
    image = base_jpeg()

    async def sample(request: Request) -> Response:
        await asyncio.sleep(latency)
        # Unique bytes per task, so content-addressed storage keeps every one.
        tail = request.path_params["name"].encode().ljust(16, b"\0")[:16]
        return Response(image + tail, media_type="image/jpeg")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/img/{name}", sample), Route("/healthz", healthz)])


@click.command()
@click.option("--fd", type=int, required=True)
@click.option("--latency", type=float, default=0.2)
def main(fd: int, latency: float) -> None:
    config = uvicorn.Config(make_app(latency), log_level="warning")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    main()
