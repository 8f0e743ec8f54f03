"""Correlation that travels in the webhook URL: pure functions shared by submitter and receiver.

The submitter asks BFL to call::

    RECEIVER_PUBLIC_URL/webhooks/bfl?ref=<ref>&m=<base64url(compact JSON metadata)>

with ``webhook_secret = derive_bound_secret(master, ref, metadata bytes)`` (receiver.verify):
an HMAC of the master over a domain-separated message holding the reference and the SHA-256
of the metadata's bytes. The receiver decodes ``m``, derives the same secret and checks it, so

- the metadata reaches the handler with no store, filesystem or process shared with the
  submitter, whenever the webhook comes (before the submit's answer, after a restart);
- changing ``ref`` or ``m`` (or both) changes the secret: a tampered URL gets 401, and a
  leaked per-task secret cannot attach other metadata, nor another reference. Which *task* a
  reference authenticates is the store's rule (``Store.record``): the first task recorded
  under a reference owns it.

Old-style webhooks still verify, so tasks submitted before an upgrade finish after it:

- ``?ref=<ref>`` without ``m``: the secret derived from the reference alone
  (``derive_secret(master, ref)``), with the metadata taken from the store;
- no reference at all: the shared secret (any of ``RECEIVER_WEBHOOK_SECRET``).

The shared secrets are accepted with ``m`` too (``BFL(per_task_secret=False)`` sends ``?m=``
with the master itself); the reference-only secret never is, since it binds no metadata.

Size. BFL takes a ``webhook_url`` of at most 2083 characters. The fixed parts are
``/webhooks/bfl?ref=`` + a 22-character reference + ``&m=`` (43 characters). Metadata is
limited to ``MAX_METADATA_BYTES`` (1024) bytes of compact UTF-8 JSON, 1366 characters of
base64url: that leaves 674 characters for ``RECEIVER_PUBLIC_URL``, whatever it is. Larger
metadata is refused before anything is sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from receiver.verify import derive_bound_secret, derive_secret

REF_PARAM = "ref"
METADATA_PARAM = "m"

#: BFL's limit on ``webhook_url``.
MAX_WEBHOOK_URL = 2083
#: The largest metadata carried in the URL: bytes of compact UTF-8 JSON (see the docstring).
MAX_METADATA_BYTES = 1024
#: A receiver refuses to decode an ``m`` longer than this (no submitter makes one).
MAX_METADATA_CHARS = 4 * ((MAX_WEBHOOK_URL + 2) // 3)

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class CorrelationError(ValueError):
    """Metadata that cannot travel in the webhook URL, or an ``m`` that does not decode."""


class MetadataError(CorrelationError):
    """The metadata itself cannot travel: too large, or text no store can keep."""


class MetadataTooLarge(MetadataError):
    """The metadata is over ``limit`` bytes of compact JSON (``size`` is how big it was)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"is {size} bytes as compact JSON; at most {limit} fit in the webhook URL "
            f"(BFL allows {MAX_WEBHOOK_URL} characters)"
        )
        self.size = size
        self.limit = limit


def metadata_bytes(metadata: Mapping[str, Any]) -> bytes:
    """The compact JSON the URL carries (and whose hash the secret binds).

    Raises MetadataError for text that PostgreSQL's jsonb cannot keep (NUL, a lone
    surrogate): refused before sending, rather than a webhook no store can ever record.
    """
    problem = _unstorable(metadata)
    if problem is not None:
        raise MetadataError(problem)
    return json.dumps(
        dict(metadata), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _unstorable(value: object) -> str | None:
    """Why some text in ``value`` cannot be stored (None if all can); iterative, so deep
    nesting costs no recursion."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "has a NUL character in its text, which no store keeps"
            try:
                item.encode()
            except UnicodeEncodeError:
                return "has text that is not valid Unicode (a lone surrogate)"
    return None


def encode_metadata(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_metadata(text: str) -> tuple[bytes, dict[str, Any]]:
    """The bytes and the JSON object an ``m`` parameter carries; CorrelationError if none."""
    if len(text) > MAX_METADATA_CHARS or not _BASE64URL.fullmatch(text):
        raise CorrelationError("the webhook URL's metadata is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(data)
    except (binascii.Error, ValueError, RecursionError):
        raise CorrelationError("the webhook URL's metadata is not base64url JSON") from None
    if not isinstance(value, dict):
        raise CorrelationError("the webhook URL's metadata is not a JSON object")
    problem = _unstorable(value)
    if problem is not None:
        raise CorrelationError(f"the webhook URL's metadata {problem}")
    return data, value


@dataclass(frozen=True, slots=True)
class WebhookLink:
    """What a submit sends: ``webhook_url`` and ``webhook_secret``."""

    url: str
    secret: str


def webhook_link(
    base_url: str, master: str, ref: str | None, metadata: Mapping[str, Any]
) -> WebhookLink:
    """The URL and secret for one submission; ``ref=None``: the shared secret (``?m=`` only).

    Raises MetadataTooLarge above MAX_METADATA_BYTES, and CorrelationError when the whole URL
    would pass MAX_WEBHOOK_URL (a very long public URL or reference).
    """
    data = metadata_bytes(metadata)
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataTooLarge(len(data), MAX_METADATA_BYTES)
    m = encode_metadata(data)
    if ref is None:
        url, secret = f"{base_url}?{METADATA_PARAM}={m}", master
    else:
        url = f"{base_url}?{REF_PARAM}={quote(ref, safe='')}&{METADATA_PARAM}={m}"
        secret = derive_bound_secret(master, ref, data)
    if len(url) > MAX_WEBHOOK_URL:
        raise CorrelationError(
            f"the webhook URL would be {len(url)} characters, over BFL's {MAX_WEBHOOK_URL}: "
            f"RECEIVER_PUBLIC_URL is {len(base_url)} characters, the metadata {len(m)}"
        )
    return WebhookLink(url, secret)


@dataclass(frozen=True, slots=True)
class Correlation:
    """What a webhook's query says: its reference, the metadata it carries, which secrets
    authenticate it."""

    ref: str | None
    metadata: dict[str, Any] | None
    """The URL's metadata (None: the URL carries none, the store's is used)."""
    secrets: list[str]
    error: str | None = None
    """Why ``m`` could not be used (then only the shared secrets are accepted)."""


def correlate(ref: str | None, m: str | None, masters: Iterable[str]) -> Correlation:
    """The reference, metadata and accepted secrets for a webhook whose URL had ``ref`` and
    ``m`` (None when absent), given the receiver's secrets."""
    masters = [s for s in masters if s]
    if m is None:
        derived = [derive_secret(s, ref) for s in masters] if ref is not None else []
        return Correlation(ref, None, masters + derived)
    try:
        data, metadata = decode_metadata(m)
    except CorrelationError as exc:
        # Only a shared secret can vouch for a URL we cannot read; the handler then gets a 400.
        return Correlation(ref, None, masters, str(exc))
    bound = [derive_bound_secret(s, ref, data) for s in masters] if ref is not None else []
    return Correlation(ref, metadata, masters + bound)
