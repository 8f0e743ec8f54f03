"""``bfl-receiver``: serve, and look into or repair the store."""

from __future__ import annotations

import logging
import re
import socket
import sys
from typing import Any

import click

from receiver.cli_render import (
    console,
    dead_table,
    event_json,
    events_table,
    job_json,
    print_event,
    run_json,
)
from receiver.cli_runmodes import drain_command, migrate, work
from receiver.cli_support import load_settings, refuse_ephemeral, scrub, with_store
from receiver.events import Status
from receiver.prune import DEFAULT_GRACE_SECONDS, PrunedImages, prune_images
from receiver.render import dumps
from receiver.settings import Settings
from receiver.storage import LocalStorage, Storage, open_storage
from receiver.store import EventRecord, Job, Store

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    return float(match.group(1)) * _UNITS[match.group(2)]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bfl-hooks", prog_name="bfl-receiver")
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

    settings = load_settings(host=host, port=port, run_worker=False if no_worker else None)
    if not settings.webhook_secret:
        raise click.ClickException(
            "RECEIVER_WEBHOOK_SECRET is not set: every webhook would be refused. "
            "Set it (comma-separated to accept several) in the environment or .env."
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if (note := settings.store_note) is not None:
        logging.getLogger("receiver").info("%s", note)  # the store is not where the cwd says
    refuse_ephemeral(settings)  # before the store is opened (and a SQLite file created)
    try:
        app = create_app(settings)
    except Exception as exc:  # a bad handler spec or URL: say so, no traceback
        raise click.ClickException(scrub(str(exc), settings)) from None
    # Open the store once first: one that cannot be opened (PostgreSQL down, a wrong password,
    # an unwritable folder) is then one line, not the server's startup traceback.
    with_store(settings, lambda store: store.ping(), create=True)
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
@click.option("--dead", "dead_only", is_flag=True, help="Only events with a dead job.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(status: str | None, dead_only: bool, limit: int, as_json: bool) -> None:
    """List recorded events, newest first, with how they arrived and their jobs' states."""
    settings = load_settings()

    async def load(store: Store) -> tuple[list[EventRecord], dict[str, list[Job]]]:
        found = await store.list_events(
            status=Status(status) if status else None, limit=limit, dead_only=dead_only
        )
        jobs: dict[str, list[Job]] = {}
        for job in await store.jobs_of([e.task_id for e in found]):
            jobs.setdefault(job.task_id, []).append(job)
        return found, jobs

    found, jobs = with_store(settings, load)
    if as_json:
        for e in found:
            click.echo(dumps(event_json(e, jobs.get(e.task_id, []))))
        return
    console().print(events_table(found, jobs))


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
def show(task_id: str, as_json: bool) -> None:
    """One event, its download and every handler run with its errors and tracebacks."""
    settings = load_settings()

    async def load(store: Store) -> Any:
        return (
            await store.get_event(task_id),
            await store.jobs_for(task_id),
            await store.runs_for(task_id),
        )

    event, jobs, runs = with_store(settings, load)
    if event is None:
        raise click.ClickException(f"no event for task {task_id!r}")
    if as_json:
        shown = {
            "event": event_json(event, jobs),
            "jobs": [job_json(j) for j in jobs],
            "runs": [run_json(r) for r in runs],
        }
        click.echo(dumps(shown, indent=2))
        return
    print_event(console(), event, jobs, runs)


@main.command()
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead(limit: int, as_json: bool) -> None:
    """List dead jobs, most recent first, with their last error (re-run them with replay)."""
    settings = load_settings()
    jobs = with_store(settings, lambda s: s.dead_jobs(limit))
    if as_json:
        for job in jobs:
            click.echo(dumps(job_json(job)))
        return
    if not jobs:
        click.echo("no dead jobs")
        return
    console().print(dead_table(jobs))


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
    settings = load_settings()
    count = with_store(settings, lambda s: s.replay(task_id, include_done=all_handlers))
    click.echo(f"queued {count} job(s) again; a running receiver picks them up within seconds")
    if count == 0 and task_id is not None:
        sys.exit(1)


@main.command()
@click.option("--older-than", "older_than", help="Delete finished events older than this: 30d.")
@click.option(
    "--images", is_flag=True, help="Also remove stored images no event refers to any more."
)
@click.option(
    "--image-grace",
    "image_grace",
    default="1h",
    show_default=True,
    help="Keep images stored more recently than this, referred to or not (downloads finishing).",
)
def prune(older_than: str | None, images: bool, image_grace: str) -> None:
    """Delete finished events older than a duration; with --images, the images left unused."""
    if older_than is None and not images:
        raise click.UsageError("give --older-than DURATION, --images, or both")
    seconds = parse_duration(older_than) if older_than is not None else None
    grace = parse_duration(image_grace) if images else DEFAULT_GRACE_SECONDS
    settings = load_settings()
    storage = _image_storage(settings) if images else None

    async def run(store: Store) -> tuple[int | None, PrunedImages | None]:
        pruned = await store.prune(seconds) if seconds is not None else None
        if storage is None:
            return pruned, None
        await storage.open()
        try:
            return pruned, await prune_images(store, storage, grace=grace)
        finally:
            await storage.close()

    pruned, removed = with_store(settings, run)
    if pruned is not None:
        click.echo(f"pruned {pruned} event(s) older than {older_than}")
    if removed is not None:
        gone, kept = _size(removed.removed_bytes), _size(removed.kept_bytes)
        click.echo(
            f"removed {removed.removed} image(s) no event refers to ({gone}); "
            f"kept {removed.kept} ({kept})"
        )


def _image_storage(settings: Settings) -> Storage:
    try:
        storage = open_storage(settings.storage_url)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except ImportError as exc:  # s3:// without boto3
        raise click.ClickException(
            f"RECEIVER_STORAGE_URL needs {exc.name}: pip install 'bfl-hooks[s3]'"
        ) from None
    if isinstance(storage, LocalStorage) and not storage.root.is_dir():
        # Like the store: a missing folder is a wrong path, not an empty storage to create.
        raise click.ClickException(
            f"no image storage at {storage.root} (RECEIVER_STORAGE_URL): run this where the "
            "receiver runs, or set RECEIVER_STORAGE_URL to its storage"
        )
    return storage


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


# The run modes besides serve (receiver/cli_runmodes.py): migrate, work, drain.
main.add_command(migrate)
main.add_command(work)
main.add_command(drain_command)

if __name__ == "__main__":
    main()
