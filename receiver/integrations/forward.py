"""Forward each finished task to your own backend, signed as a Standard Webhook.

``RECEIVER_HANDLERS=receiver.integrations.forward:send`` with ``FORWARD_URL`` and
``FORWARD_SECRET`` set. Every terminal event (ready, error, moderated, finetune) is posted once
per task as JSON; retries, dead jobs and replay are the receiver's own job machinery.

The body (compact JSON, the same on every retry of one task)::

    {"type": "task.ready",                 # task.<kind>: ready, error, moderated, finetune
     "data": {"task_id": "…", "status": "ready", "kind": "ready",
              "finetune_id": null,          # the finetune's id on a finetune event
              "error": null,                # BFL's error text for failed tasks
              "metadata": {…},              # what the submitter attached
              "image": null | {"content_type": "image/jpeg", "size": 12345, "sha256": "…",
                               "location": "…",   # event.image.location: a path for file://
                                                  # storage, an s3:// or https URL for S3
                               "base64": "…",     # FORWARD_IMAGE=inline, at most the cap
                               "omitted": "…"}}}  # FORWARD_IMAGE=inline, over the cap: why

BFL's signed sample URL (in the webhook's payload) is never forwarded: it dies after 10 minutes
and is a credential until then.

Signing (https://www.standardwebhooks.com): ``webhook-id`` is the event's idempotency key (the
same on every retry, so the backend can drop duplicates), ``webhook-timestamp`` the send time in
Unix seconds, and ``webhook-signature`` ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``
keyed with each secret's decoded base64 part: one signature per secret, space-separated, so a
backend holding either the old or the new secret verifies during a rotation.

Outcomes, following the spec's sender rules::

    2xx                    done
    3xx                    ForwardError: redirects are not followed; retried, then dead
    410 Gone               ForwardGone (a PermanentError): dead at once; remove the endpoint
    429, 5xx               RetryLater (.retry_after from Retry-After): retried
    other 4xx, no answer   ForwardError: retried, then dead
    settings wrong         ForwardConfigError (a PermanentError): dead at once

Exceptions::

    Exception
     ├── ForwardError                 a send failed; the worker retries it
     │    └── RetryLater               the backend asked to wait (429, 5xx)
     └── receiver.handlers.PermanentError
          ├── ForwardGone              410: the endpoint is gone
          └── ForwardConfigError       FORWARD_* missing or invalid

The worker schedules the retry no sooner than ``RetryLater.retry_after`` (capped at an hour),
or at its own backoff if that is later; the attempt still counts, and the wait asked for is in
the job's error (``bfl-receiver show``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from receiver import handlers
from receiver.events import Event, StoredImage
from receiver.handlers import PermanentError
from receiver.integrations.common import IntegrationSettings, LoopClients, settings_from_env
from receiver.redact import redact_text, redact_url
from receiver.render import finite
from receiver.settings import split_commas

log = logging.getLogger("receiver.integrations.forward")

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
#: How much of a refusing backend's answer goes into the job's error.
MAX_REASON_CHARS = 200

__all__ = [
    "ForwardConfigError",
    "ForwardError",
    "ForwardGone",
    "ForwardSettings",
    "Forwarder",
    "RetryLater",
    "body_for",
    "load_settings",
    "require_complete",
    "retry_after",
    "send",
    "sign",
]


class ForwardError(Exception):
    """A forward failed, and a later try may succeed: the worker retries it."""


class RetryLater(ForwardError, handlers.RetryLater):
    """The backend answered 429 or a 5xx; ``retry_after`` is the wait it asked for (seconds,
    from ``Retry-After``), or None when it named none. The worker waits at least that long."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        handlers.RetryLater.__init__(self, message, retry_after)


class ForwardGone(PermanentError):
    """The backend answered 410 Gone: the endpoint asks to be removed; no retry."""


class ForwardConfigError(PermanentError):
    """``FORWARD_*`` settings are missing or invalid; no retry until they are fixed."""


def _decode_secret(secret: str) -> bytes:
    """The key behind ``whsec_<base64>`` (the prefix optional, as the official libraries do)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Unpadded base64 is accepted too, as the official libraries accept it.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        # Never the value itself: it is a secret, even when mistyped.
        raise ValueError("not a Standard Webhooks secret (whsec_ followed by base64)")
    return key


class ForwardSettings(IntegrationSettings):
    """Where and how to forward: ``FORWARD_*`` variables (or the ``.env`` found upward)."""

    model_config = SettingsConfigDict(env_prefix="FORWARD_")

    url: str | None = None
    """Your backend's endpoint (http or https); required when the handler runs."""

    secret: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Signing secrets, ``whsec_<base64>``, comma-separated: during a rotation each request is
    signed with every one of them. Required when the handler runs."""

    image: Literal["url", "inline"] = "url"
    """``url``: the body names where the image is stored; ``inline``: it embeds the bytes too."""

    inline_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    """With ``inline``, images above this are not embedded (the body says so instead)."""

    timeout_seconds: float = Field(default=15.0, gt=0)
    """For each request to the backend (connect, send, answer)."""

    @field_validator("secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        return split_commas(value)

    @field_validator("secret")
    @classmethod
    def _secrets_decode(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for secret in value:
            _decode_secret(secret.get_secret_value())
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The decoded signing keys, in the order given."""
        return tuple(_decode_secret(s.get_secret_value()) for s in self.secret)


def load_settings() -> ForwardSettings:
    """``ForwardSettings`` from the environment, or a ``ForwardConfigError`` that says what is
    wrong (and never shows a secret's value)."""
    return settings_from_env(ForwardSettings, ForwardConfigError)


def require_complete(settings: ForwardSettings) -> str:
    """``settings.url`` when the URL and a secret are set, else a ``ForwardConfigError``."""
    if not settings.url:
        raise ForwardConfigError(
            "FORWARD_URL is not set: receiver.integrations.forward:send needs your backend's "
            "URL; set it, restart, then bfl-receiver replay --dead"
        )
    if not settings.secret:
        raise ForwardConfigError(
            "FORWARD_SECRET is not set: receiver.integrations.forward:send signs every request; "
            'set it (whsec_ and base64: "whsec_$(openssl rand -base64 32)"), restart, then '
            "bfl-receiver replay --dead"
        )
    return settings.url


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


async def _image_fields(image: StoredImage, settings: ForwardSettings) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "content_type": image.content_type,
        "size": image.size,
        "sha256": image.sha256,
        "location": image.location,
    }
    if settings.image == "inline":
        if image.size <= settings.inline_max_bytes:
            fields["base64"] = base64.b64encode(await image.read()).decode()
        else:
            fields["omitted"] = (
                f"{image.size} bytes is over FORWARD_INLINE_MAX_BYTES "
                f"({settings.inline_max_bytes}): fetch it from location"
            )
    return fields


async def body_for(event: Event, settings: ForwardSettings) -> bytes:
    """The JSON body forwarded for ``event`` (see the module's docstring)."""
    image = None if event.image is None else await _image_fields(event.image, settings)
    data = {
        "task_id": event.task_id,
        "status": event.status.value,
        "kind": event.kind,
        "finetune_id": event.finetune_id,
        "error": event.error,
        "metadata": event.metadata,
        "image": image,
    }
    document = finite({"type": f"task.{event.kind}", "data": data})
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now) if when.tzinfo is not None else None


def _reason(response: httpx.Response) -> str:
    text = " ".join(response.text.split())[:MAX_REASON_CHARS]
    status = f"{response.status_code} {response.reason_phrase}".strip()
    return f"{status}: {text}" if text else status


class Forwarder:
    """The handler behind ``send``: settings read once, one HTTP client per event loop.

    ``Forwarder(settings)`` forwards with those settings (for embedding and tests);
    ``Forwarder()`` reads ``FORWARD_*`` on its first event and keeps them.
    """

    def __init__(
        self,
        settings: ForwardSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._clients: LoopClients | None = None  # made with the settings, on first use

    @property
    def settings(self) -> ForwardSettings:
        """The settings in use, read from the environment on first use."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _client(self, settings: ForwardSettings) -> httpx.AsyncClient:
        if self._clients is None:
            self._clients = LoopClients(
                timeout=settings.timeout_seconds,
                follow_redirects=False,  # a 3xx is a failure (Standard Webhooks)
                transport=self._transport,
            )
        return self._clients.get()

    async def send(self, event: Event) -> None:
        """Post ``event`` to ``FORWARD_URL``, signed; raise unless it answers 2xx."""
        settings = self.settings
        url = require_complete(settings)
        where = redact_url(url)
        body = await body_for(event, settings)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": event.idempotency_key,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(settings.keys, event.idempotency_key, timestamp, body),
        }
        try:
            response = await self._client(settings).post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            # httpx's text may name the URL: with its query and userinfo elided like the logs.
            raise ForwardError(f"{where}: {type(exc).__name__}: {redact_text(str(exc))}") from None
        status = response.status_code
        if 200 <= status < 300:
            log.info("task %s: forwarded to %s (%d)", event.task_id, where, status)
            return
        if status == 410:
            log.warning(
                "task %s: %s answered 410 Gone: remove this endpoint (FORWARD_URL), or "
                "receiver.integrations.forward:send from RECEIVER_HANDLERS; its job is dead",
                event.task_id,
                where,
            )
            raise ForwardGone(f"{where} is gone ({_reason(response)}): remove the endpoint")
        if 300 <= status < 400:
            location = response.headers.get("location")
            target = repr(redact_url(location)) if location else "nowhere named"
            raise ForwardError(f"{where} redirected ({status}) to {target}: not followed")
        if status == 429 or status >= 500:
            wait = retry_after(response.headers.get("retry-after"), time.time())
            asked = f", Retry-After {wait:g} s" if wait is not None else ""
            raise RetryLater(f"{where} answered {_reason(response)}{asked}", wait)
        raise ForwardError(f"{where} refused it: {_reason(response)}")


_default = Forwarder()


async def send(event: Event) -> None:
    """The handler: forward ``event`` with the ``FORWARD_*`` settings of this process."""
    await _default.send(event)
