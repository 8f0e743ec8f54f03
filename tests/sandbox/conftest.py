"""Fixtures: real sandboxes on loopback with fast settings, and a webhook sink to call."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import SandboxSettings, create_app
from tests.servers import serve

KEY = {"x-key": "test-key"}

#: Short enough that the whole sandbox suite runs in well under a minute.
FAST: dict[str, Any] = {
    "task_seconds": 0.1,
    "finetune_seconds": 0.3,
    "webhook_retry_delays": (0.05, 0.1),
    "webhook_timeout_seconds": 2.0,
    "fault_delay_seconds": 0.6,
}

StartSandbox = Callable[..., str]


def settings(**overrides: Any) -> SandboxSettings:
    """Fast sandbox settings that ignore the environment and any .env file."""
    return SandboxSettings(_env_file=None, **{**FAST, **overrides})  # type: ignore[call-arg]


def png(size: tuple[int, int] = (64, 48), color: tuple[int, ...] = (200, 30, 30)) -> bytes:
    mode = "RGBA" if len(color) == 4 else "RGB"
    buffer = BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def open_image(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


@pytest.fixture
def start_sandbox() -> Iterator[StartSandbox]:
    """``start_sandbox(**settings)`` serves a sandbox until the test ends; returns its URL."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> str:
            return stack.enter_context(serve(create_app(settings(**overrides))))

        yield start


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    """A sandbox with the fast defaults, shared by a module's tests (so: no state assertions
    that another test could disturb, like an exact credit balance of the shared key)."""
    with serve(create_app(settings())) as url:
        yield url


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as c:
        yield c


@dataclass(frozen=True)
class Call:
    """One webhook the sink received."""

    headers: dict[str, str]
    body: bytes
    at: float


class Sink:
    """A receiver stand-in, shared by a module: each test takes its own hook path."""

    def __init__(self) -> None:
        self.url = ""
        self._calls: dict[str, list[Call]] = {}
        self._fail_first: dict[str, int] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/hook/{name}", self._hook, methods=["POST"]),
                Route("/image.png", self._image),
                Route("/redirect", self._redirect),
            ]
        )

    def hook(self, name: str, fail_first: int = 0) -> str:
        """A fresh webhook URL that answers 500 to its first ``fail_first`` calls."""
        with self._lock:
            self._calls[name] = []
            self._fail_first[name] = fail_first
        return f"{self.url}/hook/{name}"

    def calls(self, name: str) -> list[Call]:
        with self._lock:
            return list(self._calls.get(name, []))

    async def _hook(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        with self._lock:
            calls = self._calls.setdefault(name, [])
            calls.append(Call(dict(request.headers), body, time.monotonic()))
            failing = len(calls) <= self._fail_first.get(name, 0)
        return Response(status_code=500 if failing else 200)

    async def _image(self, request: Request) -> Response:
        return Response(png((80, 60), (20, 200, 40)), media_type="image/png")

    async def _redirect(self, request: Request) -> Response:
        return Response(status_code=302, headers={"location": "http://example.com/x.png"})


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    """A webhook sink (and image server) on loopback."""
    s = Sink()
    with serve(s.app) as url:
        s.url = url
        yield s
