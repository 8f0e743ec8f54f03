"""A loopback fake of the Telegram Bot API, written from https://core.telegram.org/bots/api.

``POST`` (or ``GET``) ``/bot<token>/<method>`` with a JSON, urlencoded or multipart body, as
the real API takes. Answers are ``{"ok": true, "result": …}`` or ``{"ok": false,
"error_code": N, "description": "…", "parameters": {…}}``, with the documented limits:

- unknown token: 401 ``Unauthorized``; a path that is not a token, or an unknown method: 404
  ``Not Found``;
- ``sendPhoto``: at most 10 MB (``Bad Request: file is too big``), width + height at most
  10000 and a ratio of at most 20 (``Bad Request: PHOTO_INVALID_DIMENSIONS``);
  ``sendDocument``: at most 50 MB; a caption over 1024 UTF-16 units: ``Bad Request: message
  caption is too long``; a text over 4096: ``Bad Request: message is too long``;
- a chat the bot does not know: 400 ``Bad Request: chat not found``; one that blocked it: 403
  ``Forbidden: bot was blocked by the user``; a group that became a supergroup: 400 with
  ``parameters.migrate_to_chat_id``;
- ``fail_next`` scripts the next answers (a 429 with ``parameters.retry_after``, a 500...).

It keeps each chat's messages (deleted ones marked), the exact bytes of every upload and every
request, for tests to read from their own thread, and queues user messages for ``getUpdates``
(long polling) so a real bot can be driven through it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.telegram_parts import (
    ApiError,
    Call,
    Chat,
    Message,
    Scripted,
    Upload,
    dimensions,
    error_response,
    parse_call,
    utf16_len,
)
from tests.servers import serve

__all__ = ["ApiError", "Call", "Chat", "FakeTelegram", "Message", "Upload", "fake_telegram"]

PHOTO_MAX_BYTES = 10_000_000
DOCUMENT_MAX_BYTES = 50_000_000
PHOTO_MAX_SIDES = 10_000
PHOTO_MAX_RATIO = 20
CAPTION_LIMIT = 1024
TEXT_LIMIT = 4096
MAX_POLL_SECONDS = 10.0
"""getUpdates' long poll is cut to this (the real one allows 50 s)."""

_TOKEN = re.compile(r"\d+:[A-Za-z0-9_-]+")


class FakeTelegram:
    """The fake's state and its Starlette app. Register chats with ``add_chat``."""

    def __init__(self, token: str = "123456:TEST-token_abcdefghijklmnopqrstuvwx") -> None:
        self.tokens = {token}
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.chats: dict[int, Chat] = {}
        self.calls: list[Call] = []
        self.url = ""
        self._script: list[Scripted] = []
        self._ids = itertools.count(1)
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[Route("/bot{token}/{method}", self._endpoint, methods=["GET", "POST"])]
        )

    # -- what tests use ------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """What ``TELEGRAM_API_URL`` is set to."""
        return self.url

    def add_chat(self, chat_id: int, kind: str | None = None) -> Chat:
        chat = Chat(chat_id, kind or ("supergroup" if chat_id < 0 else "private"))
        self.chats[chat_id] = chat
        return chat

    def fail_next(
        self,
        times: int,
        code: int,
        description: str,
        *,
        method: str | None = None,
        **parameters: Any,
    ) -> None:
        """Answer the next ``times`` calls (of ``method`` only, when given) with this error."""
        with self._lock:
            self._script += [Scripted(code, description, parameters, method)] * times

    def rate_limit_next(self, times: int, retry_after: int, method: str | None = None) -> None:
        self.fail_next(
            times,
            429,
            f"Too Many Requests: retry after {retry_after}",
            method=method,
            retry_after=retry_after,
        )

    def post_as_bot(self, chat_id: int, text: str) -> Message:
        """A message from the bot, as if sent earlier (a progress message)."""
        return self._add(self.chats[chat_id], from_bot=True, text=text)

    def user_says(self, chat_id: int, text: str, user_id: int = 777) -> Message:
        """A user's message in ``chat_id``, queued for ``getUpdates``."""
        chat = self.chats[chat_id]
        message = self._add(chat, from_bot=False, text=text)
        body = self._message_json(message, chat)
        body["from"] = {"id": user_id, "is_bot": False, "first_name": "Ada", "username": "ada"}
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            body["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        with self._lock:
            self._updates.append({"update_id": next(self._update_ids), "message": body})
        return message

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # -- the API -------------------------------------------------------------------------

    def _add(self, chat: Chat, *, from_bot: bool, **values: Any) -> Message:
        with self._lock:
            message = Message(next(self._ids), chat.id, int(time.time()), from_bot, **values)
            chat.messages.append(message)
        return message

    async def _endpoint(self, request: Request) -> Response:
        token, method = request.path_params["token"], request.path_params["method"]
        try:
            fields, files = await parse_call(request)
        except ValueError as exc:
            return error_response(ApiError(400, f"Bad Request: {exc}"))
        self.calls.append(
            Call(method, token, request.headers.get("content-type", ""), fields, files, time.time())
        )
        try:
            if not _TOKEN.fullmatch(token):
                raise ApiError(404, "Not Found")
            if token not in self.tokens:
                raise ApiError(401, "Unauthorized")
            self._scripted(method)
            handler = getattr(self, f"_m_{method.lower()}", None)
            if handler is None:
                raise ApiError(404, "Not Found")
            result = handler(fields, files)
            if asyncio.iscoroutine(result):
                result = await result
        except ApiError as exc:
            return error_response(exc)
        return JSONResponse({"ok": True, "result": result})

    def _scripted(self, method: str) -> None:
        with self._lock:
            for i, entry in enumerate(self._script):
                if entry.method is None or entry.method.lower() == method.lower():
                    del self._script[i]
                    raise ApiError(entry.code, entry.description, **entry.parameters)

    def _chat(self, fields: dict[str, Any]) -> Chat:
        raw = fields.get("chat_id")
        if raw is None or raw == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        try:
            chat = self.chats.get(int(raw))
        except (TypeError, ValueError):
            chat = None
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        if chat.migrated_to is not None:
            raise ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=chat.migrated_to,
            )
        if chat.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _message(self, chat: Chat, fields: dict[str, Any], verb: str) -> Message:
        try:
            wanted = int(fields.get("message_id", ""))
        except (TypeError, ValueError):
            raise ApiError(400, "Bad Request: message identifier is not specified") from None
        for message in chat.messages:
            if message.message_id == wanted and not message.deleted:
                return message
        raise ApiError(400, f"Bad Request: message to {verb} not found")

    def _reply_to(self, chat: Chat, fields: dict[str, Any]) -> int | None:
        raw = fields.get("reply_parameters")
        params = json.loads(raw) if isinstance(raw, str) else raw
        if params is None and fields.get("reply_to_message_id") is not None:
            params = {"message_id": fields["reply_to_message_id"]}
        if not params:
            return None
        wanted = int(params["message_id"])
        if any(m.message_id == wanted and not m.deleted for m in chat.messages):
            return wanted
        if params.get("allow_sending_without_reply"):
            return None
        raise ApiError(400, "Bad Request: message to be replied not found")

    def _message_json(self, message: Message, chat: Chat) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message_id": message.message_id,
            "date": message.date,
            "chat": {"id": chat.id, "type": chat.type}
            | ({"first_name": "Ada"} if chat.type == "private" else {"title": "Group"}),
        }
        if message.from_bot:
            body["from"] = self._me()
        if message.text is not None:
            body["text"] = message.text
        if message.caption is not None:
            body["caption"] = message.caption
        if message.edited:
            body["edit_date"] = int(time.time())
        if message.reply_to is not None:
            body["reply_to_message"] = {
                "message_id": message.reply_to,
                "date": message.date,
                "chat": body["chat"],
            }
        upload = message.photo or message.document
        if upload is not None:
            file = {
                "file_id": f"file-{message.message_id}",
                "file_unique_id": f"u{message.message_id}",
                "file_size": len(upload.data),
            }
            if message.photo is not None:
                width, height = dimensions(upload.data) or (0, 0)
                body["photo"] = [file | {"width": width, "height": height}]
            else:
                body["document"] = file | {
                    "file_name": upload.filename,
                    "mime_type": upload.content_type,
                }
        return body

    def _me(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Fake", "username": "fake_bot"}

    def _text(self, fields: dict[str, Any], name: str = "text") -> str:
        text = str(fields.get(name) or "")
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > TEXT_LIMIT:
            raise ApiError(400, "Bad Request: message is too long")
        return text

    def _caption(self, fields: dict[str, Any]) -> str | None:
        text = fields.get("caption")
        if text is None or text == "":
            return None
        if utf16_len(str(text)) > CAPTION_LIMIT:
            raise ApiError(400, "Bad Request: message caption is too long")
        return str(text)

    def _m_getme(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        return self._me() | {"can_join_groups": True, "can_read_all_group_messages": False}

    def _m_sendmessage(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(fields)
        text, reply_to = self._text(fields), self._reply_to(chat, fields)
        message = self._add(chat, from_bot=True, text=text, reply_to=reply_to)
        return self._message_json(message, chat)

    def _upload(self, fields: dict[str, Any], files: dict[str, Upload], name: str) -> Upload:
        upload = files.get(name)
        if upload is None:
            # A file_id or an HTTP URL: this fake has no files to look up, nor a network.
            raise ApiError(400, f"Bad Request: there is no {name} in the request")
        return upload

    def _m_sendphoto(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(fields)
        upload = self._upload(fields, files, "photo")
        if len(upload.data) > PHOTO_MAX_BYTES:
            raise ApiError(400, "Bad Request: file is too big")
        size = dimensions(upload.data)
        if size is None:
            raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        width, height = size
        if (
            width + height > PHOTO_MAX_SIDES
            or max(width, height) / max(1, min(width, height)) > PHOTO_MAX_RATIO
        ):
            raise ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        caption, reply_to = self._caption(fields), self._reply_to(chat, fields)
        message = self._add(chat, from_bot=True, photo=upload, caption=caption, reply_to=reply_to)
        return self._message_json(message, chat)

    def _m_senddocument(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(fields)
        upload = self._upload(fields, files, "document")
        if len(upload.data) > DOCUMENT_MAX_BYTES:
            raise ApiError(400, "Bad Request: file is too big")
        caption, reply_to = self._caption(fields), self._reply_to(chat, fields)
        message = self._add(
            chat, from_bot=True, document=upload, caption=caption, reply_to=reply_to
        )
        return self._message_json(message, chat)

    def _m_editmessagetext(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(fields)
        message = self._message(chat, fields, "edit")
        text = self._text(fields)
        if not message.from_bot:
            raise ApiError(400, "Bad Request: message can't be edited")
        if message.text is None:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        if message.text == text:
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup "
                "of the message",
            )
        message.text, message.edited = text, message.edited + 1
        return self._message_json(message, chat)

    def _m_deletemessage(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(fields)
        self._message(chat, fields, "delete").deleted = True
        return True

    def _m_sendchataction(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        self._chat(fields)
        if not fields.get("action"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _m_deletewebhook(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        return True

    def _m_setmycommands(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        return True

    async def _m_getupdates(self, fields: dict[str, Any], files: dict[str, Upload]) -> Any:
        offset = int(fields.get("offset") or 0)
        limit = min(100, int(fields.get("limit") or 100))
        deadline = time.monotonic() + min(float(fields.get("timeout") or 0), MAX_POLL_SECONDS)
        while True:
            with self._lock:
                # Confirmed updates (below offset) are forgotten, as Telegram forgets them.
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                ready = self._updates[:limit]
            if ready or time.monotonic() >= deadline:
                return ready
            await asyncio.sleep(0.02)


@contextmanager
def fake_telegram(token: str | None = None) -> Iterator[FakeTelegram]:
    """The fake served on loopback, on a port the kernel picked, for the block."""
    fake = FakeTelegram(token) if token else FakeTelegram()
    with serve(fake.app) as url:
        fake.url = url
        yield fake
