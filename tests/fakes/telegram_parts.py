"""The Telegram fake's pieces: what it keeps (chats, messages, uploads, calls), its error
answers, and how it reads a call's fields from a JSON, urlencoded or multipart body."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class ApiError(Exception):
    """An answer with ``ok: false``."""

    def __init__(self, code: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Message:
    message_id: int
    chat_id: int
    date: int
    from_bot: bool
    text: str | None = None
    caption: str | None = None
    photo: Upload | None = None
    document: Upload | None = None
    reply_to: int | None = None
    edited: int = 0
    deleted: bool = False

    @property
    def kind(self) -> str:
        return "photo" if self.photo else "document" if self.document else "text"


@dataclass
class Chat:
    id: int
    type: str
    messages: list[Message] = field(default_factory=list)
    blocked: bool = False
    migrated_to: int | None = None

    def visible(self) -> list[Message]:
        """The messages still in the chat, in order."""
        return [m for m in self.messages if not m.deleted]


@dataclass
class Call:
    """One request as received: the method, its fields (files apart) and content type."""

    method: str
    token: str
    content_type: str
    fields: dict[str, Any]
    files: dict[str, Upload]
    at: float


@dataclass
class Scripted:
    code: int
    description: str
    parameters: dict[str, Any]
    method: str | None


def dimensions(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return int(width), int(height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def error_response(exc: ApiError) -> Response:
    body: dict[str, Any] = {
        "ok": False,
        "error_code": exc.code,
        "description": exc.description,
    }
    if exc.parameters:
        body["parameters"] = exc.parameters
    return JSONResponse(body, status_code=exc.code)


async def parse_call(request: Request) -> tuple[dict[str, Any], dict[str, Upload]]:
    """The call's fields and uploads, from the query and a JSON, urlencoded or multipart body."""
    fields: dict[str, Any] = dict(request.query_params)
    files: dict[str, Upload] = {}
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if request.method == "GET" or content_type == "":
        return fields, files
    if content_type == "application/json":
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise ValueError("can't parse JSON object") from None
        if not isinstance(body, dict):
            raise ValueError("can't parse JSON object")
        return fields | body, files
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form(max_files=10, max_fields=100, max_part_size=60_000_000)
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                files[name] = Upload(value.filename or "", value.content_type or "", data)
            else:
                fields[name] = value
        return fields, files
    raise ValueError(f"unsupported content type {content_type}")
