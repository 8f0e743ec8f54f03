"""Shared pieces for receiver tests: a delivery server, a running receiver, signed webhooks."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from receiver import Event, Settings, create_app
from receiver.handlers import Handler
from tests.servers import serve

SECRET = "test-secret-0123456789"


def jpeg_bytes(size: int = 32, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "JPEG")
    return out.getvalue()


def png_bytes(size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), "blue").save(out, "PNG")
    return out.getvalue()


@dataclass
class Sample:
    """How the delivery server answers for one path."""

    body: bytes = field(default_factory=jpeg_bytes)
    content_type: str = "image/jpeg"
    status: int = 200
    redirect: str | None = None
    delay: float = 0.0
    fail_first: int = 0
    """Answer 503 this many times before serving."""
    chunked: bool = False
    """Stream the body without a Content-Length."""


class Delivery:
    """A loopback stand-in for BFL's delivery host: serves samples, counts every request."""

    def __init__(self) -> None:
        self.samples: dict[str, Sample] = {}
        self.hits: list[str] = []
        self.url = ""
        self.app = Starlette(routes=[Route("/{name:path}", self._serve)])

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def add(self, name: str, sample: Sample | None = None) -> str:
        self.samples[name] = sample or Sample()
        return f"{self.url}/{name}"

    async def _serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.hits.append(name)
        sample = self.samples.get(name)
        if sample is None:
            return Response(status_code=404)
        if sample.delay:
            await anyio.sleep(sample.delay)
        if sample.fail_first > 0:
            sample.fail_first -= 1
            return Response(status_code=503)
        if sample.redirect:
            return RedirectResponse(sample.redirect, status_code=302)
        if sample.status != 200:
            return Response(status_code=sample.status)
        if sample.chunked:
            body = sample.body

            async def chunks() -> Any:
                for i in range(0, len(body), 65536):
                    yield body[i : i + 65536]

            return StreamingResponse(chunks(), media_type=sample.content_type)
        return Response(sample.body, media_type=sample.content_type)


@contextmanager
def delivery_server() -> Iterator[Delivery]:
    delivery = Delivery()
    with serve(delivery.app) as url:
        delivery.url = url
        yield delivery


def settings_for(tmp: Path, **overrides: Any) -> Settings:
    """Settings for a test receiver: fast timings, files under ``tmp``, no .env."""
    values: dict[str, Any] = {
        "webhook_secret": (SECRET,),
        "database_url": f"sqlite:///{tmp}/receiver.db",
        "storage_url": f"file://{tmp}/samples",
        "poll_interval_seconds": 0.05,
        "handler_backoff_seconds": 0.02,
        "job_lease_seconds": 3.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Recorder:
    """A handler that remembers every event it was given, with the image it could read."""

    def __init__(self, fail_times: int = 0) -> None:
        # One list of pairs: tests read it from another thread, and one append is atomic.
        self.seen: list[tuple[Event, bytes | None]] = []
        self.fail_times = fail_times

    @property
    def events(self) -> list[Event]:
        return [event for event, _ in self.seen]

    @property
    def images(self) -> list[bytes | None]:
        return [image for _, image in self.seen]

    async def __call__(self, event: Event) -> None:
        image = await event.image.read() if event.image else None
        self.seen.append((event, image))
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("handler failed on purpose")

    def task_ids(self) -> list[str]:
        return [e.task_id for e in self.events]


def as_handler(recorder: Recorder) -> Handler:
    async def handler(event: Event) -> None:
        await recorder(event)

    return handler


@contextmanager
def running_receiver(
    settings: Settings,
    handlers: Mapping[str, Handler] | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Iterator[Receiver]:
    """The receiver app served on loopback; ``transport`` carries its downloads if given."""
    app = create_app(settings, handlers=handlers or {}, transport=transport)
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield Receiver(url, client)


@dataclass
class Receiver:
    url: str
    client: httpx.Client

    def post(
        self, payload: Any, *, secret: str | None = SECRET, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"content-type": "application/json", **(headers or {})}
        if secret is not None:
            sent["x-webhook-secret"] = secret
        return self.client.post("/webhooks/bfl", content=body, headers=sent)

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from /metrics (0 when absent)."""
        text = self.client.get("/metrics").text
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


def ready(task_id: str, sample: str | None) -> dict[str, Any]:
    return {"id": task_id, "status": "Ready", "result": {"sample": sample, "seed": 1}}


def eventually(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.02)


def read_store(settings: Settings, fn: Any) -> Any:
    """Run ``await fn(store)`` against the receiver's store, from the test's thread."""
    from receiver.store import opened_store  # noqa: PLC0415

    async def run() -> Any:
        async with opened_store(settings.database_url) as store:
            return await fn(store)

    return anyio.run(run)
