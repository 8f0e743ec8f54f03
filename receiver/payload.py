"""Parse a verified webhook body into one typed notice, whichever of BFL's shapes it has.

Shape A (BFL docs' get_result): ``{"id", "status": "Ready", "result": {"sample", ...}}``.
Shape B (seen in public receivers): ``{"task_id", "status": "SUCCESS", "result", "error"}``.
BFL's webhook guide adds ``timestamp`` (ISO 8601; kept in the payload as sent) and, on
failure, ``error`` (a code) with ``message`` (the text kept as the event's error).
"""

from __future__ import annotations

import json
import math
import re
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
#: A webhook URL's ``?ref=`` (the submitter's are 22 characters).
MAX_REF_LENGTH = 200
#: BFL's bodies nest three or four levels; far deeper ones only exhaust the parser's and the
#: encoders' recursion (a 500 on every retry), so they are refused.
MAX_DEPTH = 32
#: A surrogate can only enter through a ``\\u`` escape (the body is valid UTF-8): look for
#: one before walking the payload.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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
        payload = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: JSON, and over-long integers
        raise PayloadError(f"body is not UTF-8 JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body is not a JSON object")
    # Depth is at most the number of opening brackets: count before walking.
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth(payload) > MAX_DEPTH:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text):
        return notice_from_payload(payload)  # re-encoded once cleaned, see there
    return notice_from_payload(payload, raw=text)


def notice_from_payload(payload: dict[str, Any], *, raw: str | None = None) -> Notice:
    """Normalise a decoded payload; ``raw`` is its JSON text when the caller has it.

    A lone surrogate (a ``\\ud800`` escape with no pair) decodes into a string no database can
    encode: such strings are kept with U+FFFD, the replacement character, in their place, and
    ``raw`` is then the cleaned payload's JSON rather than the text as received.
    """
    # Checked before any cleaning: a task id is an identifier, never worth repairing.
    task_id = payload.get("id", payload.get("task_id"))
    if not isinstance(task_id, str) or not task_id.strip():
        raise PayloadError("no task id (expected 'id' or 'task_id')")
    if len(task_id) > MAX_TASK_ID_LENGTH or not task_id.isprintable():
        raise PayloadError("task id is too long or not printable")
    if raw is None:
        payload = _replace_lone_surrogates(payload)
        raw = json.dumps(payload, ensure_ascii=False)
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
        raw_status=raw_status if isinstance(raw_status, str) else repr(raw_status)[:200],
        sample_url=sample if isinstance(sample, str) and sample else None,
        error=_error_text(error),
        payload=payload,
        raw=raw,
    )


def _refuse_constant(name: str) -> object:
    # NaN and Infinity are not JSON (RFC 8259); PostgreSQL's json type refuses them.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: no float holds it, and it would come back Infinity
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _depth(value: object) -> int:
    """How deeply ``value`` nests (iteratively: the point is that recursion is what fails)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in node)
    return deepest


def _replace_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD; the
    same object when there is none. Depth is bounded by MAX_DEPTH, so recursion is safe."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value) if _LONE_SURROGATE.search(value) else value
    if isinstance(value, list):
        items = [_replace_lone_surrogates(v) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        pairs = [
            (_replace_lone_surrogates(k), _replace_lone_surrogates(v)) for k, v in value.items()
        ]
        changed = any(
            k2 is not k or v2 is not v
            for (k2, v2), (k, v) in zip(pairs, value.items(), strict=True)
        )
        return dict(pairs) if changed else value
    return value


def _error_text(error: object) -> str | None:
    if error is None or error == {}:
        return None
    if isinstance(error, str):
        return error
    return json.dumps(error, sort_keys=True)[:2000]
