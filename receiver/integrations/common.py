"""What the chat handlers share: one HTTP client per loop, addressing from metadata, and the
texts they send (captions cut to a platform's limit, what happened to a failed task)."""

from __future__ import annotations

import asyncio
import unicodedata
import weakref
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from receiver.envfile import UpwardEnvSettings
from receiver.events import Event
from receiver.handlers import PermanentError, Skipped
from receiver.redact import redact_text

S = TypeVar("S", bound=BaseSettings)

#: How much of BFL's error text a chat is shown.
MAX_REASON_CHARS = 200
ELLIPSIS = "…"
#: Digits an integer id may have (2**63 has 19).
MAX_ID_DIGITS = 19


class LoopClients:
    """One ``httpx.AsyncClient`` per event loop, made on first use: a process has one loop, but
    a client cannot outlive the loop it was made on (tests, ``asyncio.run`` per drain)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._clients = weakref.WeakKeyDictionary()

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = self._clients[loop] = httpx.AsyncClient(**self._options)
        return client


class IntegrationSettings(UpwardEnvSettings):
    """What every handler's settings share: read from the environment (and the ``.env`` found
    upward), other variables ignored, frozen, and a mistyped token or secret never echoed in a
    validation error. A subclass names only its ``env_prefix``."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, hide_input_in_errors=True
    )


def settings_from_env(settings: type[S], error: type[Exception]) -> S:
    """``settings()`` read from the environment (and the ``.env`` found upward), or ``error``
    naming each wrong variable and what is wrong with it, never its value."""
    try:
        return settings()
    except ValidationError as exc:
        prefix = str(settings.model_config.get("env_prefix", ""))
        problems = "; ".join(
            f"{prefix}{'_'.join(str(part) for part in problem['loc']).upper()}: {problem['msg']}"
            for problem in exc.errors()
        )
        raise error(problems) from None


def address(event: Event, key: str, *, integer: bool = False) -> str | int:
    """The metadata value that addresses a platform (``telegram_chat_id``...).

    Absent (or null): ``Skipped``, the event is not for this platform. Of the wrong type or
    empty: ``PermanentError``, since no retry can fix what the submitter sent. With
    ``integer``, a string of digits (with an optional minus: Telegram group ids) is accepted.
    """
    value = event.metadata.get(key)
    if value is None:
        raise Skipped(f"no {key} in the metadata")
    if isinstance(value, bool):  # bool is an int to Python, never an id
        raise PermanentError(f"{key} must be {'an integer' if integer else 'a string'}")
    if integer:
        digits = value.strip().removeprefix("-") if isinstance(value, str) else ""
        # ASCII only ("²" is a digit to str.isdigit, not to int), and short: int() refuses
        # strings over 4,300 digits with a ValueError, and no platform's id is that long.
        if digits.isascii() and digits.isdigit() and len(digits) <= MAX_ID_DIGITS:
            value = int(str(value).strip())
        if not isinstance(value, int):
            raise PermanentError(f"{key} must be an integer, got {type(value).__name__}")
        if abs(value) >= 2**63:  # every platform's ids fit in 64 bits
            raise PermanentError(f"{key} is out of range for an id")
        return value
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise PermanentError(f"{key} must be a non-empty string")
    return value.strip()


def optional(event: Event, key: str, *, integer: bool = False) -> str | int | None:
    """Like ``address``, but None when the key is absent."""
    if event.metadata.get(key) is None:
        return None
    return address(event, key, integer=integer)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: how Telegram counts a caption's characters."""
    return len(text.encode("utf-16-le")) // 2


def cut(text: str, limit: int, *, utf16: bool = False) -> str:
    """``text`` within ``limit`` characters (UTF-16 code units with ``utf16``), ending in an
    ellipsis when cut, and never in half a surrogate pair or a lone combining mark."""
    size = utf16_len if utf16 else len
    if size(text) <= limit:
        return text
    # Code points to keep: at most limit - 1, fewer while astral characters count double.
    keep = limit - 1
    while keep > 0 and size(text[:keep]) > limit - 1:
        keep -= 1
    while keep > 0 and unicodedata.combining(text[keep]):
        keep -= 1
    return text[:keep].rstrip() + ELLIPSIS


def caption(event: Event, limit: int, *, utf16: bool = False) -> str:
    """The caption under an image: the submitter's ``caption`` metadata (a bot puts the prompt
    there), cut to the platform's limit; empty when there is none."""
    value = event.metadata.get("caption")
    return cut(value, limit, utf16=utf16) if isinstance(value, str) else ""


def outcome_text(event: Event) -> str:
    """What a chat is told when a task made no image: moderated, failed (with BFL's reason,
    its URLs elided and control characters dropped), or ended some other way."""
    if event.kind == "moderated":
        return "The image was not generated: the request was moderated."
    if event.kind == "finetune":
        ended = "finished" if event.status.kind == "ready" else "failed"
        said = f": {reason}" if ended == "failed" and (reason := _safe(event.error)) else ""
        return f"The finetune {event.finetune_id} {ended}{said}."
    reason = _safe(event.error)
    if event.kind == "error":
        return (
            f"The image could not be generated: {reason}"
            if reason
            else ("The image could not be generated.")
        )
    return f"The task ended without an image ({event.status.value})."


def _safe(error: str | None) -> str:
    """BFL's error text as a chat may see it: printable, its URLs elided, and short."""
    reason = "".join(ch for ch in (error or "") if ch.isprintable()).strip()
    return cut(redact_text(reason), MAX_REASON_CHARS)
