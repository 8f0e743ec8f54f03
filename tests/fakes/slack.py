"""A loopback fake of the Slack Web API: the methods a bot uses to post images and texts.

Written from Slack's method pages (docs.slack.dev/reference/methods/…) and its rate-limit page:

- ``POST /api/<method>``, with the token as ``Authorization: Bearer`` or a ``token`` field;
  bodies form-encoded, multipart or JSON. Every answer is HTTP 200 with ``{"ok": true, …}`` or
  ``{"ok": false, "error": "…"}``, except a rate limit: HTTP 429 with ``Retry-After`` (seconds)
  and ``{"ok": false, "error": "ratelimited"}``.
- No token: ``not_authed``; a wrong one: ``invalid_auth``; an unknown method:
  ``unknown_method``; an unknown channel: ``channel_not_found``; a channel the bot is not in:
  ``not_in_channel``; an archived one: ``is_archived``.
- ``auth.test``, ``chat.postMessage`` (``no_text``, ``msg_too_long`` past 40,000 characters),
  ``chat.update`` / ``chat.delete`` (``message_not_found``; ``cant_update_message`` /
  ``cant_delete_message`` for a message that is not the bot's).
- ``files.getUploadURLExternal`` (``filename`` and ``length`` required: ``invalid_arguments``;
  ``length`` 0: ``missing_argument``; ``alt_txt`` past 1,000: ``alt_txt_too_large``; ``length``
  past ``max_file_bytes``, Slack's 1 GB or a workspace's own restriction:
  ``file_upload_size_restricted``) hands back
  ``upload_url`` on this fake itself (``/upload/v1/<ticket>?credential=…``, the credential being
  what makes it a secret, as Slack's is) and a ``file_id``.
- ``POST`` the upload URL with the bytes, raw or multipart: 200 ``OK - <length>``. A wrong
  credential or ticket: 404. Bytes that differ from the announced ``length``: 400 (Slack's docs
  do not say how it refuses them; the fake refuses them so a handler that lies is caught).
- ``files.completeUploadExternal`` (``files`` a JSON array of ``{"id", "title"}``, optional
  ``channel_id``, ``thread_ts``, ``initial_comment``): an id never uploaded, or completed
  already ("can only be called once"), is ``file_not_found``; with a channel, the file is
  shared there in a new message whose text is the ``initial_comment``.

It records every call (method, fields, headers), the uploaded bytes per file id, and each
channel's messages as they stand (updated in place, deleted ones gone). ``fail_next`` scripts a
429 or an error for the next calls of a method.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.servers import serve

TOKEN = "xoxb-fake-0123456789-abcdefABCDEF"  # the fake's own, for tests
BOT_USER = "U0FAKEBOT"
MAX_TEXT_CHARS = 40_000
MAX_ALT_CHARS = 1000
MAX_FILE_BYTES = 1024**3  # "files up to 1 GB" (Slack's help center)


@dataclass
class Message:
    ts: str
    text: str
    user: str = BOT_USER
    thread_ts: str | None = None
    files: list[str] = field(default_factory=list)
    """The ids of the files shared with this message."""


@dataclass
class Channel:
    id: str
    member: bool = True
    archived: bool = False
    messages: list[Message] = field(default_factory=list)

    def find(self, ts: str) -> Message | None:
        return next((m for m in self.messages if m.ts == ts), None)


@dataclass
class FakeFile:
    id: str
    filename: str
    length: int
    alt_txt: str | None
    ticket: str
    credential: str
    data: bytes | None = None
    title: str | None = None
    completed: bool = False


@dataclass
class Call:
    method: str
    fields: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    status: int = 200
    error: str = "internal_error"
    retry_after: int | None = None


class FakeSlack:
    """The fake's state and its Starlette app; ``url`` is set once it is served."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.url = ""
        self.channels: dict[str, Channel] = {}
        self.files: dict[str, FakeFile] = {}
        self.calls: list[Call] = []
        self.uploads: list[Call] = []
        self.failures: dict[str, list[Failure]] = {}
        self.max_file_bytes = MAX_FILE_BYTES
        """Above this, files.getUploadURLExternal refuses (a workspace may restrict uploads)."""
        self.upload_base: str | None = None
        """Where upload URLs point (default: this fake); another server's URL for tests."""
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/api/{method}", self._api, methods=["GET", "POST"]),
                Route("/upload/v1/{ticket}", self._upload, methods=["POST"]),
            ]
        )

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def add_channel(
        self, channel_id: str, *, member: bool = True, archived: bool = False
    ) -> Channel:
        channel = self.channels[channel_id] = Channel(channel_id, member, archived)
        return channel

    def post(self, channel_id: str, text: str, *, user: str = BOT_USER) -> str:
        """Put a message in a channel as if it had been posted (a progress message); its ts."""
        ts = self._ts()
        self.channels[channel_id].messages.append(Message(ts, text, user))
        return ts

    def fail_next(
        self,
        method: str,
        times: int = 1,
        *,
        status: int = 200,
        error: str = "internal_error",
        retry_after: int | None = None,
    ) -> None:
        """The next ``times`` calls of ``method`` (``"upload"`` for the upload URL) fail:
        HTTP ``status`` (429 with ``retry_after`` for a rate limit) or ``ok: false``."""
        if status == 429 and retry_after is None:
            retry_after = 1
        if status == 429:
            error = "ratelimited"
        self.failures.setdefault(method, []).extend(
            Failure(status, error, retry_after) for _ in range(times)
        )

    def uploaded(self, file_id: str) -> bytes | None:
        return self.files[file_id].data

    def _ts(self) -> str:
        return f"1700000000.{next(self._ids):06d}"

    def _scripted(self, method: str) -> Response | None:
        with self._lock:
            queue = self.failures.get(method)
            failure = queue.pop(0) if queue else None
        if failure is None:
            return None
        headers = {"retry-after": str(failure.retry_after)} if failure.retry_after else {}
        if failure.status >= 500:
            return PlainTextResponse("upstream failure", failure.status, headers=headers)
        body = {"ok": False, "error": failure.error}
        return JSONResponse(body, status_code=failure.status, headers=headers)

    # -- the Web API --------------------------------------------------------------------------

    async def _fields(self, request: Request) -> tuple[dict[str, Any], str | None]:
        """The call's arguments and the token it carried (header first, then a field)."""
        fields: dict[str, Any] = dict(request.query_params)
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                body = None
            if isinstance(body, dict):
                fields.update(body)
            else:
                fields["__invalid_json__"] = True
        elif request.method == "POST":
            form = await request.form()
            for name, value in form.multi_items():
                fields[name] = value.filename if isinstance(value, UploadFile) else value
        token = None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        elif isinstance(fields.get("token"), str):
            token = fields["token"]
        fields.pop("token", None)
        return fields, token

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        fields, token = await self._fields(request)
        self.calls.append(Call(method, fields, dict(request.headers)))
        scripted = self._scripted(method)
        if scripted is not None:
            return scripted
        if fields.get("__invalid_json__"):
            return _error("invalid_json")
        if token is None:
            return _error("not_authed")
        if token != self.token:
            return _error("invalid_auth")
        handler = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete,
        }.get(method)
        if handler is None:
            return _error("unknown_method")
        with self._lock:
            return handler(fields)

    def _auth_test(self, fields: dict[str, Any]) -> Response:
        return _ok(
            url="https://fake.slack.test/",
            team="Fake",
            user="bfl-bot",
            team_id="T0FAKE",
            user_id=BOT_USER,
            bot_id="B0FAKE",
        )

    def _channel(self, channel_id: Any) -> Channel | Response:
        channel = self.channels.get(channel_id) if isinstance(channel_id, str) else None
        if channel is None:
            return _error("channel_not_found")
        if channel.archived:
            return _error("is_archived")
        if not channel.member:
            return _error("not_in_channel")
        return channel

    def _post_message(self, fields: dict[str, Any]) -> Response:
        channel = self._channel(fields.get("channel"))
        if isinstance(channel, Response):
            return channel
        text = fields.get("text")
        if not isinstance(text, str) or not text:
            return _error("no_text")
        if len(text) > MAX_TEXT_CHARS:
            return _error("msg_too_long")
        thread = fields.get("thread_ts") if isinstance(fields.get("thread_ts"), str) else None
        message = Message(self._ts(), text, thread_ts=thread)
        channel.messages.append(message)
        return _ok(channel=channel.id, ts=message.ts, message=_shown(message))

    def _message(self, fields: dict[str, Any], verb: str) -> tuple[Channel, Message] | Response:
        channel = self._channel(fields.get("channel"))
        if isinstance(channel, Response):
            return channel
        ts = fields.get("ts")
        message = channel.find(ts) if isinstance(ts, str) else None
        if message is None:
            return _error("message_not_found")
        if message.user != BOT_USER:
            return _error(f"cant_{verb}_message")
        return channel, message

    def _update(self, fields: dict[str, Any]) -> Response:
        found = self._message(fields, "update")
        if isinstance(found, Response):
            return found
        channel, message = found
        text = fields.get("text")
        if not isinstance(text, str) or not text:
            return _error("no_text")
        if len(text) > MAX_TEXT_CHARS:
            return _error("msg_too_long")
        message.text = text
        return _ok(channel=channel.id, ts=message.ts, text=text, message=_shown(message))

    def _delete(self, fields: dict[str, Any]) -> Response:
        found = self._message(fields, "delete")
        if isinstance(found, Response):
            return found
        channel, message = found
        channel.messages.remove(message)
        return _ok(channel=channel.id, ts=message.ts)

    def _upload_url(self, fields: dict[str, Any]) -> Response:
        filename, length = fields.get("filename"), fields.get("length")
        if not isinstance(filename, str) or not filename or length is None:
            return _error("invalid_arguments")
        try:
            size = int(length)
        except (TypeError, ValueError):
            return _error("invalid_arguments")
        if size <= 0:
            return _error("missing_argument")
        if size > self.max_file_bytes:
            return _error("file_upload_size_restricted")
        alt = fields.get("alt_txt")
        if isinstance(alt, str) and len(alt) > MAX_ALT_CHARS:
            return _error("alt_txt_too_large")
        file_id = f"F{next(self._ids):09d}"
        ticket, credential = secrets.token_hex(8), secrets.token_urlsafe(16)
        self.files[file_id] = FakeFile(
            file_id, filename, size, alt if isinstance(alt, str) else None, ticket, credential
        )
        base = self.upload_base or self.url
        return _ok(upload_url=f"{base}/upload/v1/{ticket}?credential={credential}", file_id=file_id)

    def _complete(self, fields: dict[str, Any]) -> Response:
        listed = fields.get("files")
        if isinstance(listed, str):
            try:
                listed = json.loads(listed)
            except ValueError:
                return _error("invalid_arguments")
        if not isinstance(listed, list) or not listed:
            return _error("invalid_arguments")
        chosen: list[tuple[FakeFile, str | None]] = []
        for item in listed:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                return _error("invalid_arguments")
            known = self.files.get(item["id"])
            if known is None or known.data is None or known.completed:
                return _error("file_not_found")
            title = item.get("title")
            chosen.append((known, title if isinstance(title, str) else None))
        channel: Channel | None = None
        if fields.get("channel_id") is not None:
            found = self._channel(fields.get("channel_id"))
            if isinstance(found, Response):
                return found
            channel = found
        comment = fields.get("initial_comment")
        if isinstance(comment, str) and len(comment) > MAX_TEXT_CHARS:
            return _error("msg_too_long")
        for known, title in chosen:
            known.completed = True
            known.title = title or known.filename
        if channel is not None:
            thread = fields.get("thread_ts") if isinstance(fields.get("thread_ts"), str) else None
            text = comment if isinstance(comment, str) else ""
            message = Message(self._ts(), text, thread_ts=thread)
            message.files = [known.id for known, _ in chosen]
            channel.messages.append(message)
        return _ok(files=[{"id": known.id, "title": known.title} for known, _ in chosen])

    # -- the upload URL -----------------------------------------------------------------------

    async def _upload(self, request: Request) -> Response:
        ticket = request.path_params["ticket"]
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            data = await parts[0].read() if parts else b""
        else:
            data = await request.body()
        self.uploads.append(Call("upload", {"ticket": ticket}, dict(request.headers)))
        scripted = self._scripted("upload")
        if scripted is not None:
            return scripted
        with self._lock:
            known = next((f for f in self.files.values() if f.ticket == ticket), None)
            if known is None or request.query_params.get("credential") != known.credential:
                return PlainTextResponse("not found", 404)
            if len(data) != known.length:
                return PlainTextResponse(
                    f"length mismatch: announced {known.length}, got {len(data)}", 400
                )
            known.data = data
        return PlainTextResponse(f"OK - {len(data)}")


def _ok(**fields: Any) -> JSONResponse:
    return JSONResponse({"ok": True, **fields})


def _error(error: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": error})


def _shown(message: Message) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "type": "message",
        "text": message.text,
        "user": message.user,
        "ts": message.ts,
    }
    if message.thread_ts is not None:
        shown["thread_ts"] = message.thread_ts
    return shown


@contextmanager
def fake_slack(*channels: str, token: str = TOKEN) -> Iterator[FakeSlack]:
    """A fake Slack on loopback with these channels (the bot a member of each)."""
    fake = FakeSlack(token)
    for channel in channels:
        fake.add_channel(channel)
    with serve(fake.app) as url:
        fake.url = url
        yield fake
