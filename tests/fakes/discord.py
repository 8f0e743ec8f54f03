"""A loopback fake of the parts of Discord's HTTP API (v10) that bots post images with.

Written from discord/discord-api-docs (2026-08): ``resources/message.mdx`` (Create Message),
``resources/webhook.mdx`` (Execute Webhook, Edit Webhook Message), ``interactions/
receiving-and-responding.mdx`` (Edit Original Interaction Response, Create Followup Message),
``reference.mdx`` ("Uploading Files", "Boolean Query Strings", "Error Messages"),
``topics/rate-limits.mdx`` and ``topics/opcodes-and-status-codes.mdx``. What it does as Discord:

- ``POST /channels/{id}/messages`` needs ``Authorization: Bot <token>``: none or another gives
  401 ``{"message": "401: Unauthorized", "code": 0}``; an unknown channel 404 (10003), one the
  bot cannot see 403 (50001), one it may not post in 403 (50013).
- ``POST /webhooks/{id}/{token}`` (a webhook's execution, and an interaction's follow-up with
  the application's id) needs no authorization; ``wait`` is a boolean query string (``True``,
  ``true``, ``1``): without it a webhook answers 204, with it the message. An unknown id is 404
  (10015), a wrong or expired token 401 ``Invalid Webhook Token`` (50027): an interaction's
  token lives 15 minutes (``interaction_ttl``).
- ``PATCH /webhooks/{id}/{token}/messages/{message_id|@original}`` edits: ``content`` replaced
  when given; new files appended; with ``attachments``, only the listed ids are kept (v10).
- Bodies are JSON or ``multipart/form-data``. In multipart, JSON goes in ``payload_json`` (bad
  JSON: 400, 50109) and every part with a ``filename`` is a file, whatever its name: the docs
  ask for ``files[n]``, and Discord takes others too (discord-webhook sends ``_{filename}``).
- ``content`` over 2000 characters: 400 50035 ``Invalid Form Body`` with ``errors.content``;
  nothing to send: 400 50006; a file over ``file_limit`` (10 MiB): 413 ``{"message": "Request
  entity too large", "code": 40005}``.
- Rate limits: each top-level resource (a channel; a webhook id + token) is a bucket of
  ``limit`` requests per ``window`` seconds; every answer carries ``X-RateLimit-Limit``,
  ``-Remaining``, ``-Reset``, ``-Reset-After`` and ``-Bucket``; a request on an exhausted
  bucket gets 429 with ``Retry-After``, ``X-RateLimit-Scope: user`` and the body
  ``{"message", "retry_after", "global"}``. ``rate_limit_next`` scripts 429s (global or shared
  ones too). Every answer carries ``Via`` as Discord's edge does (discord-webhook reads it).
- 401, 403 and 429 (but shared 429s) count as invalid requests (``invalid_requests``): Discord
  bans an address after 10,000 of them in 10 minutes.

Everything sent is recorded: ``requests`` (method, path, query, part names) and each channel's
``messages`` with the exact bytes of their files.
"""

from __future__ import annotations

import itertools
import math
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.discord_bodies import (
    Attachment,
    Body,
    Message,
    Recorded,
    Refusal,
    check_body,
    message_json,
    read_body,
)
from tests.servers import serve

API_PREFIX = "/api/v10"
FILE_LIMIT = 10 * 1024 * 1024  # "The default limit is 10 MiB for all users"
INTERACTION_TTL = 15 * 60.0
DISCORD_EPOCH_MS = 1_420_070_400_000
TRUE_QUERY = ("True", "true", "1")


@dataclass
class Channel:
    id: str
    visible: bool = True
    can_send: bool = True
    messages: list[Message] = field(default_factory=list)


@dataclass
class Webhook:
    id: str
    token: str
    channel_id: str
    expires_at: float | None = None
    """For an interaction's webhook (its id is the application's): when its token dies."""
    original: Message | None = None


@dataclass
class Scripted:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class FakeDiscord:
    """The fake's state and its Starlette app; ``url`` is set while it is served."""

    def __init__(
        self,
        bot_token: str,
        *,
        limit: int = 5,
        window: float = 5.0,
        file_limit: int = FILE_LIMIT,
        interaction_ttl: float = INTERACTION_TTL,
    ) -> None:
        self.bot_token = bot_token
        self.limit = limit
        self.window = window
        self.file_limit = file_limit
        self.interaction_ttl = interaction_ttl
        self.channels: dict[str, Channel] = {}
        self.webhooks: dict[str, Webhook] = {}
        self.requests: list[Recorded] = []
        self.invalid_requests = 0
        self.url = ""
        self._scripted: list[Scripted] = []
        self._buckets: dict[str, tuple[float, int]] = {}  # key -> (window start, used)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route(f"{API_PREFIX}/channels/{{channel_id}}/messages", self._create_message,
                      methods=["POST"]),
                Route(f"{API_PREFIX}/webhooks/{{webhook_id}}/{{token}}", self._execute,
                      methods=["POST"]),
                Route(f"{API_PREFIX}/webhooks/{{webhook_id}}/{{token}}/messages/{{message_id}}",
                      self._edit, methods=["PATCH"]),
            ]
        )  # fmt: skip

    # -- setting the scene ---------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """What ``DISCORD_API_URL`` is set to."""
        return self.url + API_PREFIX

    def snowflake(self) -> str:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._ids) & 0xFFF))

    def channel(self, *, visible: bool = True, can_send: bool = True) -> Channel:
        channel = Channel(self.snowflake(), visible=visible, can_send=can_send)
        self.channels[channel.id] = channel
        return channel

    def webhook(self, channel: Channel) -> Webhook:
        """An incoming webhook posting to ``channel``; its URL is ``webhook_url(hook)``."""
        hook = Webhook(self.snowflake(), secrets.token_urlsafe(48), channel.id)
        self.webhooks[hook.id] = hook
        return hook

    def webhook_url(self, hook: Webhook) -> str:
        return f"{self.api_url}/webhooks/{hook.id}/{hook.token}"

    def interaction(self, channel: Channel, application_id: str) -> tuple[str, Webhook]:
        """A slash command answered with a deferred reply (type 5): its interaction id, and
        the webhook its token opens, whose original message is "thinking"."""
        interaction_id = self.snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        hook = Webhook(application_id, token, channel.id, time.time() + self.interaction_ttl)
        hook.original = Message(
            self.snowflake(), channel.id, "", interaction=True, deferred=True,
            webhook_id=application_id,
        )  # fmt: skip
        channel.messages.append(hook.original)
        self.webhooks[application_id] = hook
        return interaction_id, hook

    def rate_limit_next(
        self, times: int = 1, retry_after: float = 0.5, *, scope: str = "user"
    ) -> None:
        """Answer the next ``times`` requests with a 429 of this scope (user, global, shared)."""
        headers = {"retry-after": str(math.ceil(retry_after)), "x-ratelimit-scope": scope}
        if scope == "global":
            headers["x-ratelimit-global"] = "true"
        else:
            headers.update(self._bucket_headers("scripted", 0, retry_after))
        message = "The resource is being rate limited." if scope == "shared" else (
            "You are being rate limited."
        )  # fmt: skip
        body = {"message": message, "retry_after": retry_after, "global": scope == "global"}
        self._scripted += [Scripted(429, body, headers)] * times

    def fail_next(self, status: int, message: str, code: int, times: int = 1) -> None:
        """Answer the next ``times`` requests with this error (a 500, a 403...)."""
        self._scripted += [Scripted(status, {"message": message, "code": code}, {})] * times

    # -- answering -----------------------------------------------------------------------------

    def _bucket_headers(self, key: str, remaining: int, reset_after: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-reset": f"{time.time() + reset_after:.3f}",
            "x-ratelimit-reset-after": f"{reset_after:.3f}",
            "x-ratelimit-bucket": f"bucket-{abs(hash(key.partition(':')[0])) % 10**8:08d}",
        }

    def _take(self, key: str) -> tuple[bool, dict[str, str]]:
        """One request on ``key``'s bucket: whether it may go, and the headers to send."""
        now = time.monotonic()
        with self._lock:
            start, used = self._buckets.get(key, (now, 0))
            if now - start >= self.window:
                start, used = now, 0
            allowed = used < self.limit
            used += allowed
            self._buckets[key] = (start, used)
        reset_after = max(0.0, start + self.window - now)
        return allowed, self._bucket_headers(key, self.limit - used, reset_after)

    def _answer(
        self, recorded: Recorded, status: int, body: Any, headers: dict[str, str]
    ) -> Response:
        recorded.status = status
        if status in (401, 403) or (status == 429 and headers.get("x-ratelimit-scope") != "shared"):
            self.invalid_requests += 1
        headers = {"via": "1.1 google", **headers}
        if body is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(body, status_code=status, headers=headers)

    def _error(self, recorded: Recorded, status: int, message: str, code: int) -> Response:
        return self._answer(recorded, status, {"message": message, "code": code}, {})

    async def _record(self, request: Request) -> tuple[Recorded, Body | Refusal]:
        """The request as recorded, and its parsed body (or why Discord would refuse it)."""
        recorded = Recorded(
            request.method,
            request.url.path,
            dict(request.query_params),
            request.headers.get("authorization"),
            [],
        )
        self.requests.append(recorded)
        return recorded, await read_body(request, recorded)

    def _new_files(self, body: Body) -> list[Attachment]:
        """The body's files, named as its ``attachments`` say, with ids of their own."""
        described = {
            str(a.get("id")): a
            for a in body.payload.get("attachments") or []
            if isinstance(a, dict)
        }
        for file in body.files:
            index = file.part.removeprefix("files[").removesuffix("]")
            if file.part.startswith("files[") and index in described:
                file.filename = str(described[index].get("filename") or file.filename)
            file.id = self.snowflake()
        return body.files

    async def _create_message(self, request: Request) -> Response:
        recorded, parsed = await self._record(request)
        if request.headers.get("authorization") != f"Bot {self.bot_token}":
            return self._error(recorded, 401, "401: Unauthorized", 0)
        channel = self.channels.get(request.path_params["channel_id"])
        if channel is None:
            return self._error(recorded, 404, "Unknown Channel", 10003)
        if not channel.visible:
            return self._error(recorded, 403, "Missing Access", 50001)
        if not channel.can_send:
            return self._error(recorded, 403, "Missing Permissions", 50013)
        return self._post(recorded, parsed, channel, f"channel:{channel.id}", None, wait=True)

    def _webhook(self, recorded: Recorded, request: Request) -> Webhook | Response:
        hook = self.webhooks.get(request.path_params["webhook_id"])
        if hook is None:
            return self._error(recorded, 404, "Unknown Webhook", 10015)
        expired = hook.expires_at is not None and time.time() > hook.expires_at
        if not secrets.compare_digest(hook.token, request.path_params["token"]) or expired:
            return self._error(recorded, 401, "Invalid Webhook Token", 50027)
        return hook

    async def _execute(self, request: Request) -> Response:
        recorded, parsed = await self._record(request)
        hook = self._webhook(recorded, request)
        if isinstance(hook, Response):
            return hook
        channel = self.channels[hook.channel_id]
        # "Functions the same as Execute Webhook, but wait is always true" for follow-ups.
        wait = hook.expires_at is not None or recorded.query.get("wait") in TRUE_QUERY
        return self._post(recorded, parsed, channel, f"webhook:{hook.id}:{hook.token}", hook,
                          wait=wait)  # fmt: skip

    def _scripted_answer(self, recorded: Recorded) -> Response | None:
        if not self._scripted:
            return None
        answer = self._scripted.pop(0)
        return self._answer(recorded, answer.status, answer.body, answer.headers)

    def _limited(self, recorded: Recorded, key: str) -> tuple[Response | None, dict[str, str]]:
        allowed, headers = self._take(key)
        if allowed:
            return None, headers
        retry = float(headers["x-ratelimit-reset-after"])
        body = {"message": "You are being rate limited.", "retry_after": retry, "global": False}
        headers = {**headers, "retry-after": str(math.ceil(retry)), "x-ratelimit-scope": "user"}
        return self._answer(recorded, 429, body, headers), headers

    def _post(
        self,
        recorded: Recorded,
        parsed: Any,
        channel: Channel,
        key: str,
        hook: Webhook | None,
        *,
        wait: bool,
    ) -> Response:
        scripted = self._scripted_answer(recorded)
        if scripted is not None:
            return scripted
        refused, headers = self._limited(recorded, key)
        if refused is not None:
            return refused
        problem = parsed if isinstance(parsed, Refusal) else check_body(parsed, self.file_limit)
        if problem is not None:
            return self._answer(recorded, problem.status, problem.body, headers)
        assert isinstance(parsed, Body)
        message = Message(
            self.snowflake(), channel.id, parsed.payload.get("content") or "",
            self._new_files(parsed), webhook_id=hook.id if hook else None,
        )  # fmt: skip
        channel.messages.append(message)
        if not wait:
            return self._answer(recorded, 204, None, headers)
        return self._answer(recorded, 200, message_json(message), headers)

    async def _edit(self, request: Request) -> Response:
        recorded, parsed = await self._record(request)
        hook = self._webhook(recorded, request)
        if isinstance(hook, Response):
            return hook
        scripted = self._scripted_answer(recorded)
        if scripted is not None:
            return scripted
        refused, headers = self._limited(recorded, f"webhook:{hook.id}:{hook.token}")
        if refused is not None:
            return refused
        wanted = request.path_params["message_id"]
        channel = self.channels[hook.channel_id]
        message = hook.original if wanted == "@original" else next(
            (m for m in channel.messages if m.id == wanted and m.webhook_id == hook.id), None
        )  # fmt: skip
        if message is None:
            return self._answer(recorded, 404, {"message": "Unknown Message", "code": 10008},
                                headers)  # fmt: skip
        problem = (
            parsed
            if isinstance(parsed, Refusal)
            else check_body(parsed, self.file_limit, edit=True)
        )
        if problem is not None:
            return self._answer(recorded, problem.status, problem.body, headers)
        assert isinstance(parsed, Body)
        payload = parsed.payload
        if "content" in payload:
            message.content = payload["content"] or ""
        if isinstance(payload.get("attachments"), list):
            keep = {str(a.get("id")) for a in payload["attachments"] if isinstance(a, dict)}
            message.attachments = [a for a in message.attachments if a.id in keep]
        message.attachments += self._new_files(parsed)
        message.deferred = False
        message.edits += 1
        return self._answer(recorded, 200, message_json(message), headers)


@contextmanager
def fake_discord(bot_token: str, **options: Any) -> Iterator[FakeDiscord]:
    """A ``FakeDiscord`` served on loopback for the duration of the block."""
    fake = FakeDiscord(bot_token, **options)
    with serve(fake.app) as url:
        fake.url = url
        yield fake
