"""What every ``bfl-submit`` command shares: settings, output, errors and exit codes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import click
import pydantic
from rich.console import Console
from rich.markup import escape

from receiver.redact import redact_text
from submitter._client import BFL
from submitter._errors import (
    BFLError,
    OutOfCredits,
    RateLimited,
    ServerError,
    TaskFailed,
    TransportError,
    ValidationError,
    WaitTimeout,
)
from submitter._receiver_check import ConfigurationError
from submitter._settings import Settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_VALIDATION = 3
EXIT_CREDITS = 4
EXIT_RATE_LIMITED = 5
EXIT_NETWORK = 6
EXIT_TASK_FAILED = 7
EXIT_WAIT_TIMEOUT = 8

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}  ok
  {EXIT_OTHER}  other errors (key refused: 401/403, unexpected answers, local files)
  {EXIT_USAGE}  usage: bad options or arguments, missing files, bad settings
  {EXIT_VALIDATION}  validation: refused before sending, or by BFL (422)
  {EXIT_CREDITS}  out of credits (402)
  {EXIT_RATE_LIMITED}  rate limited (429) after waiting and retrying
  {EXIT_NETWORK}  network or server failure (after the retries that are safe)
  {EXIT_TASK_FAILED}  with --wait: the task failed or was moderated
  {EXIT_WAIT_TIMEOUT}  with --wait: the task was still running at --timeout
"""

#: Messages and progress go to stderr, so stdout carries only results (``--json``).
err = Console(stderr=True, highlight=False, soft_wrap=True)


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, ValidationError):
        return EXIT_VALIDATION
    if isinstance(exc, OutOfCredits):
        return EXIT_CREDITS
    if isinstance(exc, RateLimited):
        return EXIT_RATE_LIMITED
    if isinstance(exc, ServerError | TransportError):
        return EXIT_NETWORK
    if isinstance(exc, TaskFailed):
        return EXIT_TASK_FAILED
    if isinstance(exc, WaitTimeout):
        return EXIT_WAIT_TIMEOUT
    return EXIT_OTHER


def error_json(exc: BaseException) -> dict[str, Any]:
    """How an error looks on stdout with ``--json``."""
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, ValidationError):
        body["errors"] = exc.errors
    if isinstance(exc, TaskFailed | WaitTimeout) and exc.result is not None:
        body["result"] = exc.result.raw
    code = exit_code(exc)
    return {"error": body, "exit_code": code}


def fail(exc: BaseException, as_json: bool) -> NoReturn:
    """Report ``exc`` (never with a secret: messages carry none) and exit with its code."""
    if as_json:
        emit(error_json(exc))
    err.print(f"[red]error:[/red] {escape(str(exc))}")
    sys.exit(exit_code(exc))


def emit(data: Any) -> None:
    """One JSON document on stdout, with no signed URL in it (see ``unsigned``)."""
    click.echo(json.dumps(unsigned(data), default=str))


def unsigned(value: Any) -> Any:
    """``value`` with the query of every signed URL in it (a sample's ``...&sig=...``, a
    credential until it expires) shown as ``?…``; other URLs, polling URLs among them, stay
    whole. ``--out FILE`` saves the image itself."""
    if isinstance(value, str):
        return redact_text(value) if "sig=" in value else value
    if isinstance(value, dict):
        return {k: unsigned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unsigned(v) for v in value]
    return value


def say(message: str) -> None:
    """A line for humans, on stderr (markup allowed; escape user text)."""
    err.print(message)


def load_settings() -> Settings:
    """Settings from the environment and ``.env``; bad ones are a usage error."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise click.UsageError(f"bad settings: {problems}") from None


def client(settings: Settings, *, submitting: bool = True, **options: Any) -> BFL:
    """A BFL client for ``settings``; what it assumed (sandbox, polling only) goes to stderr.

    Commands that submit nothing open no store and say nothing about webhooks.
    """
    bfl = BFL(settings=settings, webhooks=submitting, **options)
    for topic, note in bfl.notes.items():
        if submitting or topic != "webhook":
            say(f"[yellow]note:[/yellow] {escape(note)}")
    return bfl


def run(work: Callable[[], Awaitable[T]], as_json: bool) -> T:
    """Run ``work`` on an event loop; BFL errors and unusable local state become exit codes."""
    try:
        return asyncio.run(_call(work))
    except BFLError as exc:
        fail(exc, as_json)
    except OSError as exc:  # the store or a file could not be opened or written
        fail(OSError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")), as_json)
    except sqlite3.Error as exc:  # the store's file is not a usable database
        fail(RuntimeError(f"the store cannot be used: {exc}"), as_json)


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def parse_pairs(
    ctx: click.Context | None, param: click.Parameter | None, values: tuple[str, ...]
) -> dict[str, Any]:
    """``KEY=VALUE`` options: VALUE is JSON when it parses (``42``, ``true``, ``{...}``), else
    the text itself; ``KEY="42"`` keeps a string."""
    pairs: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        try:
            value: Any = json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            value = raw
        pairs[key] = value
    return pairs


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_option(fn: F) -> F:
    """``--json``: results (and errors) as JSON on stdout, for scripts."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print results and errors as JSON on stdout."
    )(fn)


def describe_task(task: Mapping[str, Any]) -> str:
    """One human line about a submitted task."""
    cost = f", {task['cost']:g} credits" if task.get("cost") is not None else ""
    how = "the receiver gets a webhook" if task.get("webhook") else "no webhook: poll it"
    return f"submitted [bold]{escape(str(task['id']))}[/bold] ({task['endpoint']}{cost}); {how}"
