"""``bfl-receiver``: serve, and look into or repair the store."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from receiver.events import Status
from receiver.settings import Settings
from receiver.store import Store, opened_store

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise click.ClickException(f"bad settings:\n{exc}") from None


def _with_store(settings: Settings, fn: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        async with opened_store(settings.database_url) as store:
            return await fn(store)

    try:
        return asyncio.run(run())
    except (OSError, ValueError) as exc:
        raise click.ClickException(
            f"cannot open the store {settings.database_url!r}: {exc}"
        ) from exc


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """bfl-hooks receiver: take BFL webhooks, keep every image, run your handlers."""


@main.command()
@click.option("--host", help="Address to bind (RECEIVER_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (RECEIVER_PORT, default 8000).")
@click.option(
    "--fd", type=int, help="Serve on this already-listening socket (systemd, tests) instead."
)
@click.option(
    "--no-worker",
    "no_worker",
    is_flag=True,
    default=None,
    help="Only record webhooks; other processes run the jobs (RECEIVER_RUN_WORKER=false).",
)
def serve(host: str | None, port: int | None, fd: int | None, no_worker: bool | None) -> None:
    """Serve POST /webhooks/bfl, /healthz, /readyz and /metrics."""
    import uvicorn  # noqa: PLC0415 - only serve needs the server

    from receiver.app import create_app  # noqa: PLC0415
    from receiver.httpguard import GuardLimits, guarded_protocol  # noqa: PLC0415
    from receiver.rlimit import connection_budget, raise_open_files_limit  # noqa: PLC0415

    settings = _settings(host=host, port=port, run_worker=False if no_worker else None)
    if not settings.webhook_secret:
        raise click.ClickException(
            "RECEIVER_WEBHOOK_SECRET is not set: every webhook would be refused. "
            "Set it (comma-separated to accept several) in the environment or .env."
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except Exception as exc:  # a bad handler spec or URL: say so, no traceback
        raise click.ClickException(str(exc)) from exc
    # Descriptors first: below the limit, every extra connection would make accept() fail.
    open_files = raise_open_files_limit()
    limits = GuardLimits(
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_connections=connection_budget(settings.max_connections, open_files),
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        http=guarded_protocol(limits),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
    )
    server = uvicorn.Server(config)
    if fd is None:
        server.run()
    else:
        # uvicorn's own fd= path wraps the socket as AF_UNIX, so asyncio never sets TCP_NODELAY
        # on its connections and every answer waits ~40 ms for a delayed ACK; socket(fileno=)
        # detects the real family and protocol.
        server.run(sockets=[socket.socket(fileno=fd)])


@main.command()
@click.option(
    "--status", "status", type=click.Choice([s.value for s in Status]), help="Only this status."
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(status: str | None, limit: int, as_json: bool) -> None:
    """List recorded events, newest first."""
    settings = _settings()
    found = _with_store(
        settings, lambda s: s.list_events(status=Status(status) if status else None, limit=limit)
    )
    if as_json:
        for e in found:
            click.echo(json.dumps(_event_json(e)))
        return
    table = Table("task id", "status", "received", "deliveries", "image")
    for e in found:
        image = f"{e.image.size} B {e.image.content_type}" if e.image else "-"
        table.add_row(e.task_id, e.status.value, _when(e.received_at), str(e.deliveries), image)
    Console().print(table)


def _event_json(e: Any) -> dict[str, Any]:
    data = asdict(e)
    data["status"] = e.status.value
    return data


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
def show(task_id: str, as_json: bool) -> None:
    """One event, its download and every handler run with its errors."""
    settings = _settings()

    async def load(store: Store) -> Any:
        return (
            await store.get_event(task_id),
            await store.jobs_for(task_id),
            await store.runs_for(task_id),
        )

    event, jobs, runs = _with_store(settings, load)
    if event is None:
        raise click.ClickException(f"no event for task {task_id!r}")
    if as_json:
        click.echo(
            json.dumps(
                {
                    "event": _event_json(event),
                    "jobs": [
                        asdict(j) | {"kind": j.kind.value, "state": j.state.value} for j in jobs
                    ],
                    "runs": [asdict(r) for r in runs],
                },
                indent=2,
            )
        )
        return
    console = Console()
    console.print(f"[bold]{event.task_id}[/]  {event.status.value} ({event.raw_status})")
    console.print(f"received {_when(event.received_at)}, {event.deliveries} deliveries")
    if event.error:
        console.print(f"error: {event.error}")
    if event.image:
        console.print(
            f"image: {event.image.location} ({event.image.size} B, sha256 {event.image.sha256})"
        )
    if event.metadata:
        console.print(f"metadata: {json.dumps(event.metadata)}")
    table = Table("job", "kind", "handler", "state", "attempts", "last error")
    for j in jobs:
        table.add_row(
            str(j.id),
            j.kind.value,
            j.handler or "-",
            j.state.value,
            str(j.attempts),
            j.last_error or "",
        )
    console.print(table)
    if runs:
        history = Table("job", "attempt", "outcome", "finished", "error")
        for r in runs:
            history.add_row(
                str(r.job_id), str(r.attempt), r.outcome, _when(r.finished_at), r.error or ""
            )
        console.print(history)


@main.command()
@click.argument("task_id", required=False)
@click.option("--dead", is_flag=True, help="Re-run every dead job.")
@click.option(
    "--all-handlers", is_flag=True, help="With TASK_ID: also re-run handlers that succeeded."
)
def replay(task_id: str | None, dead: bool, all_handlers: bool) -> None:
    """Re-run the dead jobs of TASK_ID, or every dead job with --dead."""
    if (task_id is None) == (not dead):
        raise click.UsageError("give a TASK_ID or --dead (not both)")
    if all_handlers and task_id is None:
        raise click.UsageError("--all-handlers needs a TASK_ID")
    settings = _settings()
    count = _with_store(settings, lambda s: s.replay(task_id, include_done=all_handlers))
    click.echo(f"queued {count} job(s) again; a running receiver picks them up within seconds")
    if count == 0 and task_id is not None:
        sys.exit(1)


@main.command()
@click.option("--older-than", "older_than", required=True, help="Age, e.g. 30d, 12h.")
def prune(older_than: str) -> None:
    """Delete finished events older than a duration (images stay in storage)."""
    seconds = parse_duration(older_than)
    settings = _settings()
    count = _with_store(settings, lambda s: s.prune(seconds))
    click.echo(f"pruned {count} event(s) older than {older_than}")


if __name__ == "__main__":
    main()
