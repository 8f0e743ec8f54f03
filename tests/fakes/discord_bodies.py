"""Bodies as Discord reads them, for tests/fakes/discord.py: JSON or ``multipart/form-data``
(``payload_json`` plus files), the checks Discord makes on a message, and the message object it
answers with. Sources: discord-api-docs ``reference.mdx`` ("Uploading Files", "Error Messages"),
``resources/message.mdx`` and ``topics/opcodes-and-status-codes.mdx``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

CONTENT_LIMIT = 2000
INVALID_JSON = {"message": "The request body contains invalid JSON.", "code": 50109}


@dataclass
class Attachment:
    id: str
    filename: str
    content_type: str | None
    data: bytes
    part: str
    """The multipart part's name (``files[0]``, or what the client chose)."""


@dataclass
class Message:
    id: str
    channel_id: str
    content: str
    attachments: list[Attachment] = field(default_factory=list)
    webhook_id: str | None = None
    interaction: bool = False
    deferred: bool = False
    """An interaction's original response still "thinking" (a deferred reply, not edited)."""
    edits: int = 0


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    parts: list[tuple[str, str | None]]
    """Each multipart part's (name, filename); empty for a JSON body."""
    status: int = 0
    at: float = field(default_factory=time.monotonic)
    """When it came (``time.monotonic``)."""


@dataclass
class Body:
    payload: dict[str, Any]
    files: list[Attachment]


@dataclass
class Refusal:
    status: int
    body: dict[str, Any]


def _json_object(text: str | bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def read_body(request: Request, recorded: Recorded) -> Body | Refusal:
    """The request's message fields and files (each part's name noted in ``recorded``).

    In multipart, every part with a filename is a file, whatever its name, as Discord takes
    it; ``payload_json`` is the JSON; other parts are form fields (``content``, ``tts``), as the
    docs' first multipart example sends them."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "multipart/form-data":
        payload = _json_object(await request.body())
        return Refusal(400, INVALID_JSON) if payload is None else Body(payload, [])
    form = await request.form(max_part_size=8 * 1024 * 1024)
    body = Body({}, [])
    for name, value in form.multi_items():
        if isinstance(value, UploadFile) and value.filename is not None:
            recorded.parts.append((name, value.filename))
            data = await value.read()
            body.files.append(Attachment("", value.filename, value.content_type, data, name))
            continue
        recorded.parts.append((name, None))
        text = value if isinstance(value, str) else (await value.read()).decode()
        if name == "payload_json":
            parsed = _json_object(text)
            if parsed is None:
                return Refusal(400, INVALID_JSON)
            body.payload.update(parsed)
        else:
            body.payload[name] = text
    return body


def form_error(key: str, code: str, message: str) -> dict[str, Any]:
    """Discord's ``Invalid Form Body`` (reference.mdx, "Error Messages")."""
    return {
        "code": 50035,
        "errors": {key: {"_errors": [{"code": code, "message": message}]}},
        "message": "Invalid Form Body",
    }


def check_body(body: Body, file_limit: int, *, edit: bool = False) -> Refusal | None:
    """None when Discord would take this message, else its refusal."""
    for file in body.files:
        if len(file.data) > file_limit:
            return Refusal(413, {"message": "Request entity too large", "code": 40005})
    content = body.payload.get("content")
    if content is not None and not isinstance(content, str):
        return Refusal(400, form_error("content", "BASE_TYPE_STRING", "Must be a string."))
    if isinstance(content, str) and len(content) > CONTENT_LIMIT:
        return Refusal(
            400,
            form_error(
                "content", "BASE_TYPE_MAX_LENGTH", f"Must be {CONTENT_LIMIT} or fewer in length."
            ),
        )
    if not edit and not content and not body.files and not body.payload.get("embeds"):
        return Refusal(400, {"message": "Cannot send an empty message", "code": 50006})
    return None


def message_json(message: Message) -> dict[str, Any]:
    """The message object Discord answers with (the fields a client reads)."""
    return {
        "id": message.id,
        "type": 20 if message.interaction else 0,  # 20: CHAT_INPUT_COMMAND (a command's reply)
        "channel_id": message.channel_id,
        "content": message.content,
        "webhook_id": message.webhook_id,
        "attachments": [
            {
                "id": a.id,
                "filename": a.filename,
                "size": len(a.data),
                "content_type": a.content_type,
                "url": f"https://cdn.discordapp.invalid/attachments/{a.id}/{a.filename}",
            }
            for a in message.attachments
        ],
        "embeds": [],
        "flags": 0,
    }
