"""What every ``bfl-receiver`` command needs: settings and the store, with one-line errors.

A misconfiguration is the user's mistake, not a crash: it is reported as one line that says
what was looked at and how to fix it, with no traceback and no credential (the database URL's
password is masked, pydantic's echo of the values it refused is left out).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from receiver.dsn import dsn_target, redact_dsn, redact_text, split_connect_timeout
from receiver.durability import EphemeralStoreRefused, check_durable
from receiver.settings import Settings
from receiver.store import Store, StoreMissing, opened_store

T = TypeVar("T")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and .env, with command-line ``overrides``."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise click.ClickException(f"bad settings: {settings_errors(exc)}") from None


def refuse_ephemeral(settings: Settings) -> None:
    """The durability guard (``receiver.durability``) as one line, before anything is opened."""
    try:
        check_durable(settings)
    except EphemeralStoreRefused as exc:
        raise click.ClickException(str(exc)) from None


def settings_errors(exc: ValidationError) -> str:
    """Each refused setting by its variable name and why, without the value (a secret, maybe)."""
    found = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        name = str(error["loc"][0]) if error["loc"] else "settings"
        variable = name if name.isupper() else f"RECEIVER_{name.upper()}"
        found.append(f"{variable}: {error['msg']}")
    return "; ".join(found)


#: Shorter secrets are not masked inside messages: replacing every "ab" would garble the text,
#: and a secret that short protects nothing anyway.
MIN_MASKED_LENGTH = 4


def scrub(text: str, settings: Settings) -> str:
    """``text`` with every secret the settings hold (webhook secrets, the API key, the database
    password) replaced by ``***``: for messages built from exceptions we did not write."""
    secrets = [s.get_secret_value() for s in settings.webhook_secret]
    if settings.bfl_api_key is not None:
        secrets.append(settings.bfl_api_key.get_secret_value())
    text = redact_text(text, settings.database_url)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_MASKED_LENGTH:
            text = text.replace(secret, "***")
    return text


def with_store(
    settings: Settings, fn: Callable[[Store], Awaitable[T]], *, create: bool = False
) -> T:
    """Open the store, run ``fn`` on it, close it. Commands never create a store (a new empty
    one would hide a wrong path): ``create`` is for ``serve`` only."""
    url = settings.database_url

    async def run() -> T:
        async with opened_store(url, create=create) as store:
            return await fn(store)

    try:
        return asyncio.run(run())
    except Exception as exc:
        message = store_error(url, exc)
        if message is None:
            raise
        raise click.ClickException(message) from None


def store_error(url: str, exc: BaseException) -> str | None:
    """One line for a store that cannot be opened or used; None for anything else (a bug,
    which should keep its traceback)."""
    cause = _one_line(redact_text(f"{type(exc).__name__}: {exc}", url))
    if isinstance(exc, StoreMissing):
        return (
            f"no store at {exc.where} (RECEIVER_DATABASE_URL={redact_dsn(url)}): run this where "
            "the receiver runs, or set RECEIVER_DATABASE_URL to its store "
            "(bfl-receiver serve creates one)"
        )
    postgres = url.startswith(("postgresql:", "postgres:"))
    if postgres and isinstance(exc, TimeoutError):  # it accepted, then never answered
        _, limit = split_connect_timeout(url)
        return (
            f"cannot reach PostgreSQL at {dsn_target(url)}: no answer within {limit:g} s"
            " (is that PostgreSQL's port? connect_timeout=SECONDS in the URL sets the wait)"
        )
    if postgres and isinstance(exc, OSError):  # refused, unknown host
        return f"cannot reach PostgreSQL at {dsn_target(url)}: {cause}"
    if postgres and _from_asyncpg(exc):  # the server answered: a password, a database...
        return f"cannot open the PostgreSQL store at {dsn_target(url)}: {cause}"
    if isinstance(exc, sqlite3.Error | OSError):
        where = url.removeprefix("sqlite:///")
        return f"cannot use the SQLite store {os.path.abspath(where)}: {cause}"
    if isinstance(exc, ValueError):  # an unsupported or unreadable URL
        return _one_line(redact_text(str(exc), url))
    return None


def _from_asyncpg(exc: BaseException) -> bool:
    # By module, so that a SQLite user's command never imports the PostgreSQL driver.
    return type(exc).__module__.split(".")[0] == "asyncpg"


def _one_line(text: str) -> str:
    return " ".join(text.split())
