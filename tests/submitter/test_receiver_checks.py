"""The receiver a submit names: its port, an address BFL cannot reach, and whether it answers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import submitter
from receiver import Settings as ReceiverSettings
from submitter._receiver_check import (
    ConfigurationError,
    refuse_unreachable_webhook,
    unreachable_from_outside,
)
from submitter._settings import resolve_connection, resolve_webhook
from tests.servers import serve
from tests.submitter.conftest import World, cli

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def bare(**values: Any) -> submitter.Settings:
    return submitter.Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_receiver_port_moves_the_default_public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECEIVER_PUBLIC_URL", raising=False)
    monkeypatch.setenv("RECEIVER_PORT", "9321")
    assert ReceiverSettings(_env_file=None).public_url == "http://127.0.0.1:9321"  # type: ignore[call-arg]
    assert bare().public_url == "http://127.0.0.1:9321"
    monkeypatch.setenv("RECEIVER_PUBLIC_URL", "https://hooks.example")
    assert ReceiverSettings(_env_file=None).public_url == "https://hooks.example"  # type: ignore[call-arg]
    assert bare().public_url == "https://hooks.example"


def test_receiver_serve_port_option_moves_it_too() -> None:
    """``bfl-receiver serve --port`` builds its settings with ``port=``."""
    settings = ReceiverSettings(_env_file=None, port=8123)  # type: ignore[call-arg]
    assert settings.public_url == "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8000", "a loopback address"),
        ("http://localhost:8000", "a loopback address"),
        ("http://[::1]:8000", "a loopback address"),
        ("http://10.1.2.3", "a private address"),
        ("https://192.168.1.20:8443", "a private address"),
        ("http://0.0.0.0:8000", "an unspecified address"),
        ("https://hooks.example.com", None),
        ("https://8.8.8.8", None),
    ],
)
def test_addresses_bfl_cannot_reach(url: str, why: str | None) -> None:
    assert unreachable_from_outside(url) == why


@pytest.mark.parametrize("public_url", ["http://127.0.0.1:8000", "http://192.168.0.7:8000"])
async def test_a_real_key_with_a_private_public_url_is_refused(
    public_url: str, tmp_path: Path
) -> None:
    settings = bare(
        api_key="sk-real-key", webhook_secret="s", public_url=public_url, data_dir=tmp_path
    )
    with pytest.raises(ConfigurationError) as refused:
        async with submitter.BFL(settings=settings):
            pass  # pragma: no cover - never entered
    message = str(refused.value)
    assert f"RECEIVER_PUBLIC_URL is {public_url}" in message
    assert "BFL's servers cannot reach it" in message
    assert "--no-webhook" in message
    assert "sk-real-key" not in message
    assert not (tmp_path / "data").exists()


def test_the_sandbox_and_bfl_without_webhooks_are_fine() -> None:
    loopback = {"webhook_secret": "s", "public_url": "http://127.0.0.1:8000"}
    for settings in (
        bare(**loopback),  # nothing configured: the local sandbox
        bare(api_key="k", api_url="http://127.0.0.1:8001", **loopback),  # the sandbox, named
        bare(api_key="k", api_url="http://127.0.0.1:8001", webhook_secret="s"),
    ):
        refuse_unreachable_webhook(resolve_connection(settings), resolve_webhook(settings))
    # BFL itself, but no webhook asked for: nothing to reach.
    real = bare(api_key="k", webhook_secret=(), public_url="http://127.0.0.1:8000")
    refuse_unreachable_webhook(resolve_connection(real), resolve_webhook(real))


def test_the_cli_refuses_it_as_a_settings_error(tmp_path: Path) -> None:
    env: dict[str, str | None] = {
        "BFL_API_KEY": "sk-real-key",
        "BFL_API_URL": None,
        "BFL_REGION": None,
        "RECEIVER_WEBHOOK_SECRET": "s",
        "RECEIVER_PUBLIC_URL": None,
        "RECEIVER_PORT": "9999",
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "BFL_SUBMIT_DATA_DIR": str(tmp_path),
    }
    out = cli(env, "generate", "a fox")
    assert out.exit_code == 2, out.output
    assert "RECEIVER_PUBLIC_URL is http://127.0.0.1:9999, a loopback address" in out.stderr
    assert "sk-real-key" not in out.output


async def test_an_unreachable_receiver_is_warned_about_and_the_submit_goes_on(
    world: World, tmp_path: Path, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    public = f"http://127.0.0.1:{closed_port}"
    settings = world.settings(tmp_path, public_url=public)
    with caplog.at_level(logging.WARNING, logger="submitter"):
        async with submitter.BFL(settings=settings) as bfl:
            task = await bfl.generate("flux-dev", "unheard", metadata={"chat_id": 5})
        async with submitter.BFL(settings=settings) as again:
            pass
    warning = bfl.notes["receiver"]
    assert f"does not answer at RECEIVER_PUBLIC_URL={public}" in warning
    assert again.notes["receiver"] == warning
    said = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(said) == 1  # once per process
    # Its webhook fails, but the receiver's reconciler polls the task and finds its metadata.
    assert (await world.event(task.id, within=30)).metadata == {"chat_id": 5}


async def test_the_health_check_is_one_get_per_process(world: World, tmp_path: Path) -> None:
    hits: list[str] = []

    async def down(request: Request) -> Response:
        hits.append(request.url.path)
        return Response(status_code=503)

    app = Starlette(routes=[Route("/{path:path}", down, methods=["GET", "POST"])])
    with serve(app) as url:
        settings = world.settings(tmp_path, public_url=f"{url}/hooks")
        for _ in range(3):
            async with submitter.BFL(settings=settings) as bfl:
                assert "HTTP 503" in bfl.notes["receiver"]
    assert hits == ["/hooks/healthz"]


async def test_a_healthy_receiver_gives_no_warning(world: World, tmp_path: Path) -> None:
    async with submitter.BFL(settings=world.settings(tmp_path)) as bfl:
        assert "receiver" not in bfl.notes


def test_the_cli_shows_the_warning_and_submits(
    world: World, tmp_path: Path, closed_port: int
) -> None:
    env = world.env(tmp_path, RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{closed_port}")
    out = cli(env, "generate", "unheard too")
    assert out.exit_code == 0, out.output
    assert "warning: the receiver does not answer at RECEIVER_PUBLIC_URL=" in out.stderr
    assert out.stdout.strip()  # the task id
