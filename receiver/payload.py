"""Parse a verified webhook body into one typed notice, whichever of BFL's shapes it has.

Shape A (BFL docs' get_result): ``{"id", "status": "Ready", "result": {"sample", ...}}``.
Shape B (seen in public receivers): ``{"task_id", "status": "SUCCESS", "result", "error"}``.
BFL's webhook guide adds ``timestamp`` (ISO 8601; kept in the payload as sent) and, on
failure, ``error`` (a code) with ``message`` (the text kept as the event's error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from receiver.events import Status

_STATUSES: dict[str, Status] = {
    "ready": Status.READY,
    "success": Status.READY,
    "pending": Status.PENDING,
    "error": Status.ERROR,
    "failed": Status.ERROR,
    "request moderated": Status.REQUEST_MODERATED,
    "content moderated": Status.CONTENT_MODERATED,
    "task not found": Status.TASK_NOT_FOUND,
}

MAX_TASK_ID_LENGTH = 200


class PayloadError(ValueError):
    """The body is not JSON, or carries no usable task id."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A webhook (or a polled result) reduced to what the pipeline needs."""

    task_id: str
    status: Status
    raw_status: str
    sample_url: str | None
    error: str | None
    payload: dict[str, Any]
    raw: str
    """The JSON text as received (or as polled), kept verbatim in the store."""


def parse_status(raw: object) -> Status:
    if not isinstance(raw, str):
        return Status.UNKNOWN
    return _STATUSES.get(raw.strip().lower(), Status.UNKNOWN)


def parse_notice(body: bytes) -> Notice:
    """Decode and normalise ``body``; raise PayloadError when it cannot be used at all."""
    try:
        # UTF-8 only (RFC 8259): json.loads would also take UTF-16/32, which we could not keep
        # verbatim as text.
        text = body.decode()
        payload = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not UTF-8 JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body is not a JSON object")
    return notice_from_payload(payload, raw=text)


def notice_from_payload(payload: dict[str, Any], *, raw: str | None = None) -> Notice:
    """Normalise a decoded payload; ``raw`` is its JSON text when the caller has it."""
    task_id = payload.get("id", payload.get("task_id"))
    if not isinstance(task_id, str) or not task_id.strip():
        raise PayloadError("no task id (expected 'id' or 'task_id')")
    if len(task_id) > MAX_TASK_ID_LENGTH or not task_id.isprintable():
        raise PayloadError("task id is too long or not printable")
    raw_status = payload.get("status")
    status = parse_status(raw_status)
    result = payload.get("result")
    sample = result.get("sample") if isinstance(result, dict) else None
    # BFL's webhook guide sends failures as {"error": <code>, "message": <text>, "timestamp"}:
    # the message is what a person can read, so it is the event's error text.
    error = payload.get("message") or payload.get("error") or payload.get("details")
    return Notice(
        task_id=task_id,
        status=status,
        raw_status=raw_status if isinstance(raw_status, str) else repr(raw_status),
        sample_url=sample if isinstance(sample, str) and sample else None,
        error=_error_text(error),
        payload=payload,
        raw=raw if raw is not None else json.dumps(payload),
    )


def _error_text(error: object) -> str | None:
    if error is None or error == {}:
        return None
    if isinstance(error, str):
        return error
    return json.dumps(error, sort_keys=True)[:2000]
