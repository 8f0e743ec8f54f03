"""Post each finished task's image to Discord: a channel, or a slash command's deferred reply.

``RECEIVER_HANDLERS=receiver.integrations.discord:send``. The submission's metadata says where:

- ``discord_channel_id``: ``POST /channels/{id}/messages`` as the bot (``DISCORD_BOT_TOKEN``);
- ``discord_application_id`` + ``discord_interaction_token`` (and, optionally,
  ``discord_interaction_id``): the follow-up of a slash command answered with a deferred reply
  (type 5): ``PATCH /webhooks/{application}/{token}/messages/@original`` replaces its
  "thinking…" message (``POST /webhooks/{application}/{token}?wait=true``, a follow-up, when
  that original was deleted). No bot token is needed. An interaction's token lives 15 minutes:
  past that (known from the interaction id, a snowflake, or from Discord's 401) the job is dead
  at once, with that reason, rather than retried.

The interaction wins when both are given. Neither: the job is skipped. What is sent:

- an image: one multipart request, ``files[0]`` (the STORED bytes) and ``payload_json``
  (``content`` = the ``caption`` metadata cut to 2000 characters, ``attachments: [{"id": 0,
  "filename": …}]``, mentions off); ``wait=true`` on webhook executions;
- an image over 10 MiB (Discord's per-file limit), or refused with 413 / 40005: a text saying
  it is too large for Discord, with its size;
- a failed or moderated task: ``common.outcome_text`` (replacing the deferred reply).

Answers (``topics/rate-limits.mdx``, ``topics/opcodes-and-status-codes.mdx``)::

    2xx            done; X-RateLimit-Remaining 0 holds the channel for X-RateLimit-Reset-After
    429            RateLimited(retry_after): queued again, no attempt used; the channel (or,
                   for a global limit, every send of this process) is held that long
    401, 403, 404  PermanentError with Discord's message and code: dead at once. Discord bans
    other 4xx      an address after 10,000 invalid requests in 10 minutes: never a retry storm;
                   a refused bot token (for the process), an unknown channel (10 minutes) and a
                   refused interaction token are not asked about again
    5xx            RetryLater (Retry-After when given): retried
    no answer      DiscordError: retried

Sends are paced at one a second per channel and per interaction (``pacing.Pacer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from receiver import handlers
from receiver.events import Event
from receiver.handlers import PermanentError, RateLimited
from receiver.integrations import discord_api
from receiver.integrations.common import (
    IntegrationSettings,
    LoopClients,
    caption,
    cut,
    outcome_text,
    settings_from_env,
)
from receiver.integrations.discord_api import Answer
from receiver.integrations.discord_target import INTERACTION_TTL, Target, target_of
from receiver.integrations.pacing import Pacer
from receiver.redact import redact_text

log = logging.getLogger("receiver.integrations.discord")

CONTENT_LIMIT = 2000
FILE_LIMIT = 10 * 1024 * 1024  # "The default limit is 10 MiB for all users" (reference.mdx)
#: The bucket of Discord's global limit (50 requests a second per bot): a 429 on it holds all.
GLOBAL = "discord:global"
#: The refusal of ``DISCORD_BOT_TOKEN`` (read once per process: only a restart changes it).
BOT = "discord:bot"
#: How long an unknown channel is not asked about again.
UNKNOWN_FOR_SECONDS = 600.0
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}

__all__ = ["DiscordConfigError", "DiscordError", "DiscordSender", "DiscordSettings", "send"]


class DiscordError(Exception):
    """A send failed and a later try may succeed (no answer): the worker retries it."""


class DiscordConfigError(PermanentError):
    """``DISCORD_*`` settings are missing or invalid; no retry until they are fixed."""


class DiscordSettings(IntegrationSettings):
    """``DISCORD_*`` variables (or the ``.env`` found upward)."""

    model_config = SettingsConfigDict(env_prefix="DISCORD_")

    bot_token: SecretStr | None = None
    """The bot's token; needed for ``discord_channel_id`` only (interactions carry theirs)."""

    api_url: str = "https://discord.com/api/v10"
    """Discord's API base (a proxy, or a fake in tests)."""

    timeout_seconds: float = Field(default=30.0, gt=0)
    """For each request to Discord (connect, upload, answer)."""

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


def load_settings() -> DiscordSettings:
    """``DiscordSettings`` from the environment, or a ``DiscordConfigError`` naming the
    variable (never its value)."""
    return settings_from_env(DiscordSettings, DiscordConfigError)


def too_large_text(size: int) -> str:
    return (
        f"The image is too large for Discord ({size / 1024 / 1024:.1f} MiB; "
        f"the limit is {FILE_LIMIT // 1024 // 1024} MiB per file)."
    )


def _filename(event: Event, content_type: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]", "", event.task_id)[:64] or "image"
    return f"flux-{stem}.{_EXTENSIONS.get(content_type.partition(';')[0].strip(), 'jpg')}"


class DiscordSender:
    """The handler behind ``send``: settings read once, one HTTP client per event loop, one
    pace per channel and interaction.

    ``DiscordSender(settings)`` sends with those settings (for embedding and tests);
    ``DiscordSender()`` reads ``DISCORD_*`` on its first event and keeps them.
    """

    def __init__(self, settings: DiscordSettings | None = None) -> None:
        self._settings = settings
        self._clients: LoopClients | None = None
        self.pacer = Pacer(1.0)
        #: Discord's own word on when to send again, per channel / interaction and ``GLOBAL``.
        self.buckets = discord_api.Buckets()
        #: What Discord refused for good (a bot token, a gone channel): not asked again.
        self.refusals = discord_api.Refusals()
        self._bot_accepted = False
        self._bot_probe = asyncio.Lock()

    @property
    def settings(self) -> DiscordSettings:
        """The settings in use, read from the environment on first use."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _client(self) -> httpx.AsyncClient:
        if self._clients is None:
            self._clients = LoopClients(
                timeout=self.settings.timeout_seconds, follow_redirects=False
            )
        return self._clients.get()

    async def send(self, event: Event) -> None:
        """Send ``event``'s image (or what happened to its task) where its metadata says."""
        target = target_of(event, time.time())
        settings = self.settings
        if target.channel_id is not None and settings.bot_token is None:
            raise DiscordConfigError(
                "DISCORD_BOT_TOKEN is not set: receiver.integrations.discord:send needs the "
                "bot's token to post to discord_channel_id; set it, restart, then "
                "bfl-receiver replay --dead"
            )
        if event.image is None:
            await self._deliver(target, event, {"content": cut(outcome_text(event), 2000)})
            log.info("task %s: %s told it ended %s", event.task_id, target.where, event.kind)
            return
        text = caption(event, CONTENT_LIMIT)
        size = event.image.size
        if size > FILE_LIMIT:
            await self._too_large(target, event, size, text)
            return
        data = await event.image.read()
        name = _filename(event, event.image.content_type)
        payload = {"content": text, "attachments": [{"id": 0, "filename": name}]}
        file = (name, data, event.image.content_type)
        answer = await self._deliver(target, event, payload, file)
        if answer is None:  # Discord found it too large (413 / 40005)
            await self._too_large(target, event, len(data), text)
            return
        log.info("task %s: image (%d bytes) sent to %s", event.task_id, len(data), target.where)

    async def _too_large(self, target: Target, event: Event, size: int, text: str) -> None:
        content = cut(too_large_text(size) + (f"\n{text}" if text else ""), CONTENT_LIMIT)
        await self._deliver(target, event, {"content": content})
        log.info("task %s: image too large for %s (%d bytes)", event.task_id, target.where, size)

    def _request(self, target: Target, *, edit: bool) -> tuple[str, str, dict[str, str]]:
        api = self.settings.api_url
        if target.channel_id is not None:
            token = self.settings.bot_token
            assert token is not None  # checked in send
            headers = {"authorization": f"Bot {token.get_secret_value()}"}
            return "POST", f"{api}/channels/{target.channel_id}/messages", headers
        base = f"{api}/webhooks/{target.application_id}/{target.token}"
        if edit:
            return "PATCH", f"{base}/messages/@original", {}
        return "POST", f"{base}?wait=true", {}

    async def _deliver(
        self,
        target: Target,
        event: Event,
        payload: dict[str, Any],
        file: tuple[str, bytes, str] | None = None,
    ) -> Answer | None:
        """Send once (PATCH the deferred reply, POST when it is gone); the answer, None when
        Discord found the file too large, else the exception the worker acts on."""
        answer = await self._send_once(target, event, payload, file, edit=True)
        if answer.code == discord_api.UNKNOWN_MESSAGE and target.channel_id is None:
            # The deferred reply was deleted: a follow-up message instead.
            answer = await self._send_once(target, event, payload, file, edit=False)
        if answer.status == 413 or answer.code == discord_api.REQUEST_TOO_LARGE:
            if file is None:
                raise PermanentError(f"{target.where} refused the text: {answer.reason}")
            return None
        if 200 <= answer.status < 300:
            return answer
        raise self._failure(target, answer)

    async def _send_once(
        self,
        target: Target,
        event: Event,
        payload: dict[str, Any],
        file: tuple[str, bytes, str] | None,
        *,
        edit: bool,
    ) -> Answer:
        await self.pacer.slot(target.key)
        # Until Discord has taken the bot token once, sends with it go one at a time, so a
        # wrong token costs one refused request, not one per channel sent to at once.
        probing = target.channel_id is not None and not self._bot_accepted
        # One request in flight per channel: the next one sees what this one's answer said.
        async with (
            self._bot_probe if probing else contextlib.nullcontext(),
            self.buckets.one_at_a_time(target.key),
        ):
            # Asked here, after the waits: a send paced behind one that Discord refused for
            # good learns of it before asking again.
            self._refused_before(target)
            await self.buckets.wait(GLOBAL, self.pacer.max_wait)
            await self.buckets.wait(target.key, self.pacer.max_wait)
            answer = Answer.of(await self._request_once(target, payload, file, edit=edit))
            if answer.status == 429:
                self.buckets.hold(GLOBAL if answer.global_limit else target.key,
                                  answer.retry_after())  # fmt: skip
            else:
                wait = answer.exhausted_for()
                if wait is not None:
                    self.buckets.hold(target.key, wait)
            if probing and answer.status != 401:
                self._bot_accepted = True
        log.debug("task %s: %s answered %d", event.task_id, target.where, answer.status)
        return answer

    def _refused_before(self, target: Target) -> None:
        for key in (BOT, target.key) if target.channel_id is not None else (target.key,):
            known = self.refusals.reason(key)
            if known is not None:
                raise PermanentError(f"{known} (Discord said so before: not asked again)")

    async def _request_once(
        self,
        target: Target,
        payload: dict[str, Any],
        file: tuple[str, bytes, str] | None,
        *,
        edit: bool,
    ) -> httpx.Response:
        method, url, headers = self._request(target, edit=edit)
        body = {**payload, "allowed_mentions": {"parse": []}}  # a prompt pings nobody
        try:
            if file is None:
                return await self._client().request(method, url, json=body, headers=headers)
            return await self._client().request(
                method,
                url,
                headers=headers,
                data={"payload_json": json.dumps(body)},
                files={"files[0]": file},
            )
        except httpx.HTTPError as exc:
            said = redact_text(discord_api.redact_webhook_tokens(str(exc)))
            if target.token:
                said = said.replace(target.token, "…")
            raise DiscordError(f"{target.where}: {type(exc).__name__}: {said}") from None

    def _failure(self, target: Target, answer: Answer) -> Exception:
        """The exception an error answer becomes (see the module's docstring)."""
        where, status = target.where, answer.status
        if status == 429:
            wait = answer.retry_after()  # the bucket is held already (_send_once)
            self.pacer.hold(target.key, wait)
            if target.expires_at is not None and time.time() + wait > target.expires_at:
                return PermanentError(
                    f"{where} is rate limited for {wait:.1f} s, past the end of its "
                    "15 minutes: its reply can no longer be sent"
                )
            return RateLimited(
                f"{where}: rate limited ({answer.scope}), retry after {wait:.2f} s", wait
            )
        if status >= 500:
            asked = answer.headers.get("retry-after")
            seconds = discord_api.seconds_in(asked) if asked else None
            return handlers.RetryLater(f"{where} answered {answer.reason}", seconds)
        if status == 401 and target.channel_id is not None:
            said = f"Discord refused DISCORD_BOT_TOKEN ({answer.reason}): check the bot's token"
            self.refusals.remember(BOT, said, float("inf"))
            return DiscordConfigError(said)
        if answer.code == discord_api.INVALID_WEBHOOK_TOKEN or status == 401:
            said = (
                f"{where} refused its token ({answer.reason}): it is wrong or expired "
                "(an interaction's token lasts 15 minutes)"
            )
            self.refusals.remember(target.key, said, INTERACTION_TTL)
            return PermanentError(said)
        hint = {
            discord_api.UNKNOWN_CHANNEL: ": no such channel, or the bot is not in its server",
            discord_api.UNKNOWN_WEBHOOK: ": no such application, or the interaction is gone",
            discord_api.MISSING_ACCESS: ": the bot cannot see this channel",
            discord_api.MISSING_PERMISSIONS: (
                ": the bot needs View Channel, Send Messages and Attach Files there"
            ),
        }.get(answer.code or -1, "")
        said = f"{where} refused it: {answer.reason}{hint}"
        if answer.code in (discord_api.UNKNOWN_CHANNEL, discord_api.UNKNOWN_WEBHOOK):
            self.refusals.remember(target.key, said, UNKNOWN_FOR_SECONDS)
        return PermanentError(said)


_default = DiscordSender()


async def send(event: Event) -> None:
    """The handler: send ``event`` to Discord with the ``DISCORD_*`` settings of this process."""
    await _default.send(event)
