"""``bfl-sandbox``: serve the sandbox API."""

from __future__ import annotations

import logging
from typing import Any

import click
import uvicorn
from pydantic import ValidationError

from sandbox.app import create_app
from sandbox.settings import SandboxSettings


@click.group()
@click.version_option(package_name="bfl-hooks", prog_name="bfl-sandbox")
def main() -> None:
    """A local, BFL-compatible image API that really sends webhooks (no key, no network).

    Settings come from SANDBOX_* environment variables or .env; see sandbox/README.md.
    """


@main.command()
@click.option("--host", help="Interface to bind (default: SANDBOX_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: SANDBOX_PORT or 8001).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the API until interrupted."""
    overrides: dict[str, Any] = {"host": host, "port": port}
    try:
        settings = SandboxSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise click.ClickException(f"bad settings:\n{exc}") from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    click.echo(f"bfl-sandbox on http://{settings.host}:{settings.port} (BFL_API_URL for clients)")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
    )
