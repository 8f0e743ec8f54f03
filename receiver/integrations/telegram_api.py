"""Calls to the Telegram Bot API, and what its answers mean to the job machinery.

Every method is ``POST {TELEGRAM_API_URL}/bot{token}/{method}``; Telegram answers
``{"ok": true, "result": …}`` or ``{"ok": false, "error_code": N, "description": "…",
"parameters": {"retry_after": s, "migrate_to_chat_id": id}}``. ``BotAPI.call`` turns a refusal
into the exception the worker acts on::

    429 (parameters.retry_after)            RateLimited: queued again, no attempt used
    parameters.migrate_to_chat_id           TelegramMigrated (PermanentError): names the new id
    401, 404 (a token Telegram refuses)     TelegramConfigError (PermanentError)
    400 "message to … not found",
        "message can't be edited" …         MessageGone: the caller sends a new message instead
    other 400, 403 (chat not found,
        bot was blocked, kicked …)          TelegramRefused (PermanentError): dead at once
    5xx                                     RetryLater: retried at the worker's backoff
    no answer, other statuses               TelegramError: retried

The token is in every URL's path: no error built here names the URL, and any text taken from
httpx goes through ``redact_text`` (which elides ``/bot<token>``) and loses the token itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from receiver import handlers
from receiver.handlers import PermanentError, RateLimited
from receiver.integrations.common import cut
from receiver.integrations.pacing import Pacer
from receiver.redact import redact_text

#: How much of Telegram's description goes into a job's error.
MAX_DESCRIPTION_CHARS = 300

#: 400 descriptions that say the message to replace is no longer there (or cannot be
#: changed): not a failure of the job, which sends a new message instead.
GONE_MESSAGE = (
    "message to delete not found",
    "message to edit not found",
    "message can't be edited",
    "message can't be deleted",
    "message identifier is not specified",
    "there is no text in the message to edit",
    "message_id_invalid",
)
#: The text is already what we asked for (a replay after the edit succeeded): done.
NOT_MODIFIED = "message is not modified"


class TelegramError(Exception):
    """A call failed and a later try may succeed (no answer, an unexpected status)."""


class RetryLater(TelegramError, handlers.RetryLater):
    """Telegram answered a 5xx: retried at the worker's backoff."""


class TelegramRefused(PermanentError):
    """Telegram refused the call for a reason no retry fixes (chat not found, bot blocked)."""


class TelegramConfigError(PermanentError):
    """``TELEGRAM_*`` settings are missing, or Telegram refused the token."""


class TelegramMigrated(TelegramRefused):
    """The group became a supergroup with a new id (``migrate_to_chat_id``)."""

    def __init__(self, message: str, new_chat_id: int) -> None:
        super().__init__(message)
        self.new_chat_id = new_chat_id


class MessageGone(Exception):
    """The progress message cannot be edited or deleted any more (a 400 that says so)."""


class NotModified(Exception):
    """``editMessageText`` with the text the message already has."""


def _description(body: dict[str, Any], response: httpx.Response) -> str:
    text = body.get("description")
    if not isinstance(text, str) or not text:
        text = f"{response.status_code} {response.reason_phrase}".strip()
    return cut(redact_text(" ".join(text.split())), MAX_DESCRIPTION_CHARS)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class BotAPI:
    """One bot's calls: the URL base (with its token), the client, the pace per chat."""

    def __init__(
        self,
        base: str,
        token: str,
        client: httpx.AsyncClient,
        pacer_for: Callable[[int], Pacer],
        *,
        chat: int,
    ) -> None:
        self._url = f"{base.rstrip('/')}/bot{token}"
        self._token = token
        self._client = client
        self._pacer = pacer_for(chat)
        self.chat = chat
        self.key = f"telegram:{chat}"

    def _safe(self, text: str) -> str:
        return redact_text(text).replace(self._token, "…") if self._token else redact_text(text)

    async def call(
        self,
        method: str,
        *,
        data: dict[str, Any] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        paced: bool = True,
    ) -> Any:
        """Call ``method`` and return its ``result``, or raise what the answer means (see the
        module's table). ``files`` makes it a multipart request; otherwise JSON."""
        if paced:
            await self._pacer.slot(self.key)
        url = f"{self._url}/{method}"
        try:
            if files:
                form = {
                    k: v if isinstance(v, str) else json.dumps(v) for k, v in (data or {}).items()
                }
                response = await self._client.post(url, data=form, files=files)
            else:
                response = await self._client.post(url, json=data or {})
        except httpx.HTTPError as exc:
            raise TelegramError(
                f"Telegram {method}: {type(exc).__name__}: {self._safe(str(exc))}"
            ) from None
        return self._result(method, response)

    def _result(self, method: str, response: httpx.Response) -> Any:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            reason = f"{status} {response.reason_phrase}".strip()
            if status >= 500:
                raise RetryLater(f"Telegram {method}: {reason} (not JSON)")
            raise TelegramError(f"Telegram {method}: {reason}, and the body was not JSON")
        if body.get("ok") is True and 200 <= status < 300:
            return body.get("result")
        description = self._safe(_description(body, response))
        parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
        assert isinstance(parameters, dict)
        wait = _number(parameters.get("retry_after"))
        if status == 429 or wait is not None:
            wait = max(wait or 1.0, 0.0)
            self._pacer.hold(self.key, wait)
            raise RateLimited(f"Telegram {method} to chat {self.chat}: {description}", wait)
        new_chat = parameters.get("migrate_to_chat_id")
        if isinstance(new_chat, int) and not isinstance(new_chat, bool):
            raise TelegramMigrated(
                f"Telegram {method}: chat {self.chat} became a supergroup, its new id is "
                f"{new_chat}: submit with telegram_chat_id={new_chat} ({description})",
                new_chat,
            )
        if status in (401, 404):
            raise TelegramConfigError(
                f"Telegram {method}: {description}: Telegram refuses TELEGRAM_BOT_TOKEN; set "
                "the bot's token (from @BotFather), restart, then bfl-receiver replay --dead"
            )
        lowered = description.lower()
        if status == 400 and NOT_MODIFIED in lowered:
            raise NotModified(description)
        if status == 400 and any(gone in lowered for gone in GONE_MESSAGE):
            raise MessageGone(description)
        if status in (400, 403):
            raise TelegramRefused(f"Telegram {method} to chat {self.chat}: {description}")
        if status >= 500:
            raise RetryLater(f"Telegram {method}: {description}")
        raise TelegramError(f"Telegram {method}: {status}: {description}")
