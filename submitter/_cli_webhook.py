"""Submitting without a webhook is a choice the user states, never an accident of the folder.

Without ``RECEIVER_WEBHOOK_SECRET`` no webhook is asked for, so no handler runs and no metadata
reaches one. ``bfl-submit batch`` refuses that unless ``--no-webhook`` (alias ``--poll``) says
it is meant; ``generate`` and ``edit`` warn loudly and go on (one task is easy to poll).
With a webhook, a store found through a ``.env`` in a parent folder is named, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.markup import escape

from receiver.envfile import env_file_lookup, store_note
from submitter._cli_support import say
from submitter._client import BFL
from submitter._settings import Settings, resolve_webhook

F = TypeVar("F", bound=Callable[..., Any])


def no_webhook_option(fn: F) -> F:
    """``--no-webhook`` / ``--poll``: submit without a webhook, on purpose."""
    return click.option(
        "--no-webhook",
        "--poll",
        "no_webhook",
        is_flag=True,
        help="Submit without a webhook (poll the tasks instead); needed when no "
        "RECEIVER_WEBHOOK_SECRET is set.",
    )(fn)


def missing_secret(settings: Settings) -> str:
    """Why there is no webhook, naming the variable and where ``.env`` was looked for."""
    where = (
        f"{settings.env_file} does not set it"
        if settings.env_file is not None
        else env_file_lookup()
    )
    return f"RECEIVER_WEBHOOK_SECRET is not set ({where})"


def use_webhooks(settings: Settings, *, no_webhook: bool, required: bool) -> bool:
    """Whether to submit with webhooks; refuses (``required``) or warns when there can be none.

    Call it before submitting anything. ``False`` means: build the client without webhooks.
    """
    if no_webhook:
        return False
    if resolve_webhook(settings) is not None:
        note = store_note(settings.env_file, settings.database_path)
        if note is not None:  # the store is not where a relative path in this folder points
            say(f"[yellow]note:[/yellow] {escape(note)}")
        return True
    problem = missing_secret(settings)
    if required:
        raise click.UsageError(
            f"{problem}: these tasks would be submitted without a webhook, so no handler "
            "would run for them. Set RECEIVER_WEBHOOK_SECRET (the receiver's, in the "
            "environment or a .env in this folder or one above it), or pass --no-webhook "
            "to submit them anyway and poll them."
        )
    say(
        f"[bold red]warning:[/bold red] {escape(problem)}: submitting WITHOUT a webhook, so "
        "no handler will run for this task (pass --no-webhook to say that is meant)"
    )
    return False


def say_client_warnings(bfl: BFL) -> None:
    """What the client found wrong when it opened (the receiver did not answer its health
    check; there is no store to register in), once each."""
    for key in ("receiver", "store"):
        if (warning := bfl.notes.get(key)) is not None:
            say(f"[bold yellow]warning:[/bold yellow] {escape(warning)}")
