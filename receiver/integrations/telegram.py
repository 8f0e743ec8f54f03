"""Send each finished task to the Telegram chat that asked for it.

``RECEIVER_HANDLERS=receiver.integrations.telegram:send`` with ``TELEGRAM_BOT_TOKEN`` set. The
submitter names the chat in the metadata::

    {"telegram_chat_id": 123456789,      # or "-100123…": a group (int or a string of digits)
     "telegram_message_id": 42,          # optional: the "Generating…" message to replace
     "telegram_reply_to": 41,            # optional: the message the photo answers
     "caption": "a lighthouse at dawn"}  # optional: shown under the photo (cut to 1024)

What is sent, when:

- **ready**: the stored bytes (never BFL's signed URL) as ``sendPhoto`` (multipart) when
  Telegram takes them as a photo: at most 10 MB, width + height at most 10000, the longer side
  at most 20 times the shorter (read with Pillow). Otherwise ``sendDocument`` (at most 50 MB,
  the original bytes, uncompressed); above that, a text saying the image is too large. Then
  the progress message is deleted. A photo Telegram still refuses as one
  (``PHOTO_INVALID_DIMENSIONS``, ``file is too big``) goes again as a document.
- **error, moderated**: ``editMessageText`` turns the progress message into a short text
  saying what happened (common.outcome_text); ``sendMessage`` when there is none, or when it
  cannot be edited any more.

Why send-then-delete rather than ``editMessageMedia``: a text message cannot be edited into a
photo (Telegram allows ``editMessageMedia`` only on messages that already hold media), and a
new message notifies the user where an edit does not. The photo goes first, so the chat never
loses its progress message without a result; if the delete then fails for a passing reason,
the job still ends done (a retry would send the photo twice) and a warning is logged.

Pacing: one send a second per chat, and 20 a minute per group (a negative chat id), as
Telegram asks; a 429 holds that chat for ``parameters.retry_after`` and the job is queued
again for that long without using an attempt. Errors: see ``telegram_api``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from receiver.events import Event
from receiver.handlers import PermanentError, RateLimited
from receiver.integrations.common import (
    IntegrationSettings,
    LoopClients,
    address,
    caption,
    cut,
    optional,
    outcome_text,
    settings_from_env,
)
from receiver.integrations.pacing import Pacer
from receiver.integrations.telegram_api import (
    BotAPI,
    MessageGone,
    NotModified,
    RetryLater,
    TelegramConfigError,
    TelegramError,
    TelegramMigrated,
    TelegramRefused,
)

log = logging.getLogger("receiver.integrations.telegram")

DEFAULT_API_URL = "https://api.telegram.org"
#: Telegram's caption limit, in UTF-16 code units.
CAPTION_LIMIT = 1024
#: Telegram's text limit for sendMessage / editMessageText.
TEXT_LIMIT = 4096
#: Telegram's ids fit in 52 bits: at most 16 digits (and a minus sign).
MAX_ID_DIGITS = 16
#: Waits on our own pace longer than this are not slept (RateLimited instead).
MAX_PACE_WAIT_SECONDS = 10.0
#: A 429 on deleting the progress message, after the photo went: waited inline up to this.
MAX_DELETE_WAIT_SECONDS = 5.0

__all__ = [
    "Limits",
    "MessageGone",
    "RetryLater",
    "Telegram",
    "TelegramConfigError",
    "TelegramError",
    "TelegramMigrated",
    "TelegramRefused",
    "TelegramSettings",
    "load_settings",
    "send",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Telegram's upload limits for bots (Bot API ``sendPhoto`` / ``sendDocument``)."""

    photo_max_bytes: int = 10_000_000
    photo_max_sides: int = 10_000
    """Width + height."""
    photo_max_ratio: float = 20.0
    document_max_bytes: int = 50_000_000


class TelegramSettings(IntegrationSettings):
    """The bot: ``TELEGRAM_*`` variables (or the ``.env`` found upward)."""

    model_config = SettingsConfigDict(env_prefix="TELEGRAM_")

    bot_token: SecretStr | None = None
    """The bot's token from @BotFather (``123456:ABC…``); required when the handler runs."""

    api_url: str = DEFAULT_API_URL
    """The Bot API's base: requests go to ``{api_url}/bot{token}/{method}``."""

    timeout_seconds: float = Field(default=60.0, gt=0)
    """For each request (an upload of up to 50 MB included)."""


def load_settings() -> TelegramSettings:
    """``TelegramSettings`` from the environment, or a ``TelegramConfigError`` that says what
    is wrong (and never shows the token)."""
    return settings_from_env(TelegramSettings, TelegramConfigError)


def photo_fits(data: bytes, limits: Limits) -> bool:
    """True when Telegram takes ``data`` as a photo: size, width + height and ratio within its
    limits. An image Pillow cannot read is sent as a document."""
    if len(data) > limits.photo_max_bytes:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    if width <= 0 or height <= 0:
        return False
    ratio = max(width, height) / min(width, height)
    return width + height <= limits.photo_max_sides and ratio <= limits.photo_max_ratio


def _telegram_id(event: Event, key: str, *, required: bool = True) -> int | None:
    """A chat or message id from the metadata (common.address's rules), within the 52 bits
    Telegram's ids fit in: a longer one is a PermanentError, not a request Telegram refuses."""
    raw = event.metadata.get(key)
    if isinstance(raw, str) and len(raw.strip()) > MAX_ID_DIGITS + 1:
        raise PermanentError(f"{key} is not a Telegram id: {len(raw)} characters long")
    value = address(event, key, integer=True) if required else optional(event, key, integer=True)
    assert value is None or isinstance(value, int)
    if value is not None and abs(value) >= 2**52:
        raise PermanentError(f"{key} is out of range for a Telegram id")
    return value


def _filename(content_type: str) -> str:
    subtype = content_type.split("/", 1)[-1].split(";", 1)[0].strip().lower()
    extension = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}.get(subtype, "bin")
    return f"image.{extension}"


class Telegram:
    """The handler behind ``send``: settings read once, one HTTP client per loop, one pace per
    chat. ``Telegram(settings)`` for embedding and tests; ``Telegram()`` reads ``TELEGRAM_*``
    on its first event."""

    def __init__(self, settings: TelegramSettings | None = None, limits: Limits = Limits()) -> None:
        self._settings = settings
        self.limits = limits
        self._clients: LoopClients | None = None
        self._chats = Pacer(1.0, max_wait=MAX_PACE_WAIT_SECONDS)
        self._groups = Pacer(1.0, per_minute=20, max_wait=MAX_PACE_WAIT_SECONDS)

    @property
    def settings(self) -> TelegramSettings:
        """The settings in use, read from the environment on first use."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _pacer_for(self, chat: int) -> Pacer:
        return self._groups if chat < 0 else self._chats

    def _api(self, chat: int) -> BotAPI:
        settings = self.settings
        if settings.bot_token is None or not settings.bot_token.get_secret_value().strip():
            raise TelegramConfigError(
                "TELEGRAM_BOT_TOKEN is not set: receiver.integrations.telegram:send needs the "
                "bot's token (from @BotFather); set it, restart, then bfl-receiver replay --dead"
            )
        if self._clients is None:
            self._clients = LoopClients(timeout=settings.timeout_seconds, follow_redirects=False)
        token = settings.bot_token.get_secret_value().strip()
        return BotAPI(settings.api_url, token, self._clients.get(), self._pacer_for, chat=chat)

    async def send(self, event: Event) -> None:
        """Send ``event``'s photo (or what happened) to its chat; see the module's docstring."""
        chat = _telegram_id(event, "telegram_chat_id")
        progress = _telegram_id(event, "telegram_message_id", required=False)
        reply_to = _telegram_id(event, "telegram_reply_to", required=False)
        assert chat is not None
        api = self._api(chat)
        if event.image is None:
            await self._replace_with_text(api, progress, reply_to, outcome_text(event))
            log.info("task %s: told telegram chat %s it ended %s", event.task_id, chat, event.kind)
            return
        data = await event.image.read()
        fields: dict[str, Any] = {"chat_id": chat}
        text = caption(event, CAPTION_LIMIT, utf16=True)
        if text:
            fields["caption"] = text
        if reply_to is not None:
            fields["reply_parameters"] = {
                "message_id": reply_to,
                "allow_sending_without_reply": True,
            }
        upload = (_filename(event.image.content_type), data, event.image.content_type)
        sent = await self._send_image(api, fields, upload)
        if sent is None:
            size = f"{len(data) / 1e6:.1f} MB"
            limit = f"{self.limits.document_max_bytes / 1e6:g} MB"
            too_large = f"The image was generated, but at {size} it is over Telegram's {limit}."
            await self._replace_with_text(api, progress, reply_to, too_large)
            log.warning("task %s: %s image too large for telegram", event.task_id, size)
            return
        if progress is not None:
            await self._delete_progress(api, progress, event.task_id)
        log.info("task %s: sent a %s to telegram chat %s", event.task_id, sent, chat)

    async def _send_image(
        self, api: BotAPI, fields: dict[str, Any], upload: tuple[str, bytes, str]
    ) -> str | None:
        """``photo`` or ``document`` (what was sent), or None when it is too large for both."""
        data = upload[1]
        if photo_fits(data, self.limits):
            try:
                await api.call("sendPhoto", data=fields, files={"photo": upload})
                return "photo"
            except TelegramRefused as exc:
                # Telegram's own checks are the last word: its refusal of a photo as a photo
                # is not the end, the document keeps the bytes as they are.
                reason = str(exc).lower()
                if "photo_invalid_dimensions" not in reason and "too big" not in reason:
                    raise
        if len(data) > self.limits.document_max_bytes:
            return None
        await api.call("sendDocument", data=fields, files={"document": upload})
        return "document"

    async def _replace_with_text(
        self, api: BotAPI, progress: int | None, reply_to: int | None, text: str
    ) -> None:
        """Edit the progress message into ``text``; send it as a new message when there is
        none or it cannot be edited."""
        text = cut(text, TEXT_LIMIT, utf16=True)
        if progress is not None:
            try:
                fields = {"chat_id": api.chat, "message_id": progress, "text": text}
                await api.call("editMessageText", data=fields)
                return
            except NotModified:
                return  # a replay after the edit went through: the chat already says it
            except MessageGone as exc:
                log.info("chat %s: progress message %s: %s; sending anew", api.chat, progress, exc)
        fields = {"chat_id": api.chat, "text": text}
        if reply_to is not None:
            fields["reply_parameters"] = {
                "message_id": reply_to,
                "allow_sending_without_reply": True,
            }
        await api.call("sendMessage", data=fields)

    async def _delete_progress(self, api: BotAPI, progress: int, task_id: str) -> None:
        """Delete the progress message once the photo is in the chat. Never raises a
        transient error: a retry would send the photo again."""
        fields = {"chat_id": api.chat, "message_id": progress}
        for _ in range(2):
            try:
                await api.call("deleteMessage", data=fields, paced=False)
                return
            except MessageGone:
                return  # deleted already (by the user, or by an earlier run)
            except RateLimited as exc:
                if exc.retry_after > MAX_DELETE_WAIT_SECONDS:
                    break
                await asyncio.sleep(exc.retry_after)
            except (TelegramError, PermanentError) as exc:
                log.warning("task %s: progress message %s not deleted: %s", task_id, progress, exc)
                return
        log.warning("task %s: progress message %s not deleted: rate limited", task_id, progress)


_default = Telegram()


async def send(event: Event) -> None:
    """The handler: send ``event`` to its Telegram chat with this process's ``TELEGRAM_*``."""
    await _default.send(event)
