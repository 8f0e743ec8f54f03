"""The submitter's world on loopback: the sandbox as BFL, a real receiver with a recording
handler, and helpers to build submitter settings (or a CLI environment) pointing at them."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

import submitter
from receiver import Event
from receiver import Settings as ReceiverSettings
from sandbox import SandboxSettings, create_app
from submitter.cli import main
from tests.servers import serve
from tests.support import SECRET, Receiver, Recorder, as_handler, running_receiver, settings_for

#: Short enough that the whole submitter suite stays well under a minute.
FAST: dict[str, Any] = {
    "task_seconds": 0.3,
    "finetune_seconds": 0.3,
    "webhook_retry_delays": (0.1, 0.3),
    "webhook_timeout_seconds": 5.0,
    "fault_delay_seconds": 0.6,
}

_keys = itertools.count(1)


def sandbox_settings(**overrides: Any) -> SandboxSettings:
    return SandboxSettings(_env_file=None, **{**FAST, **overrides})  # type: ignore[call-arg]


@contextmanager
def sandbox(**overrides: Any) -> Iterator[str]:
    """A sandbox of its own (for settings the shared one must not have); its base URL."""
    with serve(create_app(sandbox_settings(**overrides))) as url:
        yield url


@dataclass
class World:
    """The shared sandbox and receiver. Each test uses its own API key: its own credits and
    its own active-task count in the sandbox."""

    api: str
    receiver: Receiver
    receiver_settings: ReceiverSettings
    recorder: Recorder

    @property
    def sandbox_host(self) -> str:
        return self.api.removeprefix("http://")

    def settings(self, tmp: Path, **overrides: Any) -> submitter.Settings:
        """Submitter settings for this world; every field explicit, so no environment leaks."""
        values: dict[str, Any] = {
            "api_key": f"key-{next(_keys)}",
            "api_url": self.api,
            "region": "global",
            "public_url": self.receiver.url,
            "webhook_secret": SECRET,
            "database_url": self.receiver_settings.database_url,
            "data_dir": tmp / "submitter",
            "retry_attempts": 3,
            "retry_timeout": 10.0,
        }
        values.update(overrides)
        return submitter.Settings(_env_file=None, **values)  # type: ignore[call-arg]

    def env(self, tmp: Path, **overrides: str | None) -> dict[str, str | None]:
        """The environment a CLI run sees (None unsets a variable)."""
        values: dict[str, str | None] = {
            "BFL_API_KEY": f"key-{next(_keys)}",
            "BFL_API_URL": self.api,
            "BFL_REGION": None,
            "RECEIVER_PUBLIC_URL": self.receiver.url,
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DATABASE_URL": self.receiver_settings.database_url,
            "BFL_SUBMIT_DATA_DIR": str(tmp / "submitter"),
            "BFL_RETRY_ATTEMPTS": "3",
            "BFL_RETRY_TIMEOUT": "10",
            "COLUMNS": "200",
        }
        values.update(overrides)
        return values

    def events_for(self, task_id: str) -> list[Event]:
        return [e for e in self.recorder.events if e.task_id == task_id]

    def image_for(self, task_id: str) -> bytes | None:
        for event, image in list(self.recorder.seen):
            if event.task_id == task_id:
                return image
        return None

    def wait_event(self, task_id: str, timeout: float = 10.0) -> Event:
        """Block until the handler has seen ``task_id``; its event."""
        deadline = time.monotonic() + timeout
        while not self.events_for(task_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"the handler never saw {task_id}")
            time.sleep(0.02)
        return self.events_for(task_id)[0]

    async def event(self, task_id: str, within: float = 10.0) -> Event:
        """wait_event for async tests (the servers run on their own threads)."""
        return await asyncio.to_thread(self.wait_event, task_id, within)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One sandbox and one receiver for the whole session (starting servers costs time).

    The receiver accepts samples from the sandbox's host:port exactly, and polls tasks whose
    webhook has not come after a second (its reconciler), with the sandbox as BFL_API_URL.
    """
    tmp = tmp_path_factory.mktemp("world")
    recorder = Recorder()
    with serve(create_app(sandbox_settings())) as api:
        settings = settings_for(
            tmp,
            sample_hosts=(api.removeprefix("http://"),),
            reconcile_after=1.0,
            bfl_api_key="reconciler",
            bfl_api_url=api,
        )
        with running_receiver(settings, {"rec": as_handler(recorder)}) as receiver:
            yield World(api, receiver, settings, recorder)


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own directory: no stray .env is read, no ./data written."""
    monkeypatch.chdir(tmp_path)


def cli(env: dict[str, str | None], *args: str) -> Result:
    """Run ``bfl-submit ARGS`` in process."""
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def cli_json(result: Result) -> Any:
    """The JSON document a ``--json`` run printed on stdout."""
    return json.loads(result.stdout)


class CountingTransport(httpx.AsyncBaseTransport):
    """A real transport that notes every request it sends (method and path)."""

    def __init__(self, delay_submit_answers: float = 0.0) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[str, str]] = []
        self.delay_submit_answers = delay_submit_answers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and self.delay_submit_answers:
            # BFL's answer is slow to come back: the webhook can overtake it.
            await asyncio.sleep(self.delay_submit_answers)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def count(self, method: str, path_end: str = "") -> int:
        return sum(1 for m, p in self.sent if m == method and p.endswith(path_end))


SettingsFactory = Callable[..., submitter.Settings]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused, for real."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()
