"""``bfl-receiver migrate``, ``work`` and ``drain``: the run modes besides ``serve``.

- ``migrate`` creates or upgrades the store's schema and exits (a one-shot deploy step).
- ``work`` runs the worker and the reconciler beside ``serve --no-worker`` replicas, until
  SIGTERM or SIGINT, then stops as ``serve`` does; with ``--port``, it serves its own
  ``/healthz``, ``/readyz`` and ``/metrics`` (probes, scraping) and no webhooks.
- ``drain`` runs what is due within a time budget and exits (cron, timers, queue triggers).

All three open what ``serve`` opens, the same way (``receiver.runtime``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import click
import uvicorn

from receiver.app import create_status_app
from receiver.cli_support import load_settings, scrub, store_error, with_store
from receiver.draining import DrainSummary, check_budget, drain
from receiver.durability import EphemeralStoreRefused
from receiver.handlers import HandlerSet, load_handlers
from receiver.render import dumps
from receiver.runtime import Services, opened_services, running_background
from receiver.settings import Settings
from receiver.store import store_location

T = TypeVar("T")

#: ``drain``'s exit code when the budget ran out with work left (0: nothing due was left).
WORK_LEFT = 3

log = logging.getLogger("receiver")


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if (note := settings.store_note) is not None:
        log.info("%s", note)  # the store is not where the current folder says


def _handlers(settings: Settings) -> HandlerSet:
    try:
        return load_handlers(settings.handlers)
    except Exception as exc:  # a bad handler spec: say so, no traceback
        raise click.ClickException(scrub(str(exc), settings)) from None


def _run(settings: Settings, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())``, with a store or storage that cannot be opened as one line."""
    try:
        return asyncio.run(main())
    except ImportError as exc:  # s3:// without boto3
        raise click.ClickException(
            f"RECEIVER_STORAGE_URL needs {exc.name}: pip install 'bfl-hooks[s3]'"
        ) from None
    except EphemeralStoreRefused as exc:  # opened_services' durability guard
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        message = store_error(settings.database_url, exc)
        if message is None:
            raise
        raise click.ClickException(scrub(message, settings)) from None


def _budget(ctx: click.Context, param: click.Parameter, value: float) -> float:
    try:
        return check_budget(value)  # float() took "nan" and "inf" too
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command()
def migrate() -> None:
    """Create the store, or upgrade its schema, then exit (serve does this by itself too)."""
    settings = load_settings()
    with_store(settings, lambda store: store.ping(), create=True)
    click.echo(f"store {store_location(settings.database_url)} is up to date")


class _StatusServer(uvicorn.Server):
    """uvicorn inside ``work``'s own loop: ``work`` handles SIGTERM itself (stop claiming, let
    running jobs finish), so the server must not take the signals over."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listening(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a one-line error: bound here, not by uvicorn, which
    would exit the process from inside its task."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(
            f"work --port {port}: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    return sock


@contextlib.asynccontextmanager
async def _serving_status(services: Services, host: str, port: int | None) -> AsyncIterator[None]:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` for the block (nothing when
    ``port`` is None)."""
    if port is None:
        yield
        return
    sock = _listening(host, port)
    config = uvicorn.Config(create_status_app(services), lifespan="off", log_level="warning")
    server = _StatusServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # The port bound, which --port 0 leaves to the kernel.
    log.warning("status on http://%s:%d (/healthz, /readyz, /metrics)", host, sock.getsockname()[1])
    try:
        yield
    finally:
        server.should_exit = True
        await task
        sock.close()


@click.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /healthz, /readyz and /metrics on this port (default: no HTTP at all).",
)
@click.option(
    "--host",
    default=None,
    help="The address --port listens on (default: RECEIVER_HOST, loopback unless set).",
)
def work(port: int | None, host: str | None) -> None:
    """Run downloads, handlers and the reconciler until SIGTERM or Ctrl-C; with --port, also
    /healthz, /readyz and /metrics (for probes and scraping), and nothing else."""
    settings = load_settings()
    _configure_logging(settings)
    handlers = _handlers(settings)

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        async with (
            opened_services(settings, handlers=handlers) as services,
            _serving_status(services, host or settings.host, port),
            running_background(services),
        ):
            log.info("working on %s; SIGTERM stops", store_location(settings.database_url))
            await stopping.wait()
            log.info(
                "stopping: running jobs get %g s, then are handed back",
                settings.shutdown_grace_seconds,
            )
        log.info("stopped")

    _run(settings, main)


@click.command("drain")
@click.option(
    "--budget",
    type=float,
    callback=_budget,
    required=True,
    help="Seconds this drain may take (claiming stops a little before).",
)
@click.option("--json", "as_json", is_flag=True, help="The summary as one JSON object.")
def drain_command(budget: float, as_json: bool) -> None:
    """Run the jobs due now and one reconcile pass, within --budget seconds, then exit.

    Exit code 0: nothing due was left. 3: the budget ran out first (or SIGTERM or Ctrl-C came);
    what is left, or was handed back unfinished, is queued for the next drain.
    """
    settings = load_settings()
    _configure_logging(settings)
    handlers = _handlers(settings)

    async def main() -> DrainSummary | None:
        # SIGTERM (a scheduler's timeout) ends the drain as its budget would: what runs is
        # handed back at once. A second signal is not caught: it kills.
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert task is not None

        def stop() -> None:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        try:
            return await drain(settings, budget=budget, handlers=handlers.handlers)
        except asyncio.CancelledError:
            return None

    summary = _run(settings, main)
    if summary is None:
        click.echo("drain stopped by a signal: running jobs were handed back", err=True)
        sys.exit(WORK_LEFT)
    if as_json:
        click.echo(dumps(summary.as_dict()))
    else:
        click.echo(_describe(summary))
    if not summary.finished:
        sys.exit(WORK_LEFT)


def _describe(summary: DrainSummary) -> str:
    line = (
        f"drained in {summary.seconds:.1f} s: {summary.done} done, {summary.retried} retried, "
        f"{summary.dead} dead, {summary.handed_back} handed back; {summary.polled} polled; "
        f"{summary.queued} queued"
    )
    if not summary.finished:
        line += " (the budget ran out: the rest is left for the next drain)"
    return line
