"""Webhook authentication: a pure function over the raw body and headers.

BFL documents the shared secret in ``X-Webhook-Secret``. One unofficial source says it may also
sign the body as ``X-BFL-Signature: sha256=<hex HMAC-SHA256>``; we accept either, and always
compare in constant time. ``verify_headers`` settles the secret header before the body is read
(a wrong secret costs the receiver no body); ``verify`` also checks the signature over the body.
``sign`` lives beside ``verify`` so the sandbox and the tests produce exactly what production
checks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

SECRET_HEADER = "x-webhook-secret"  # noqa: S105 - a header name, not a secret
SIGNATURE_HEADER = "x-bfl-signature"


class VerificationError(Exception):
    """The webhook did not carry a valid secret or signature."""


def sign(body: bytes, secret: str) -> str:
    """The ``X-BFL-Signature`` value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def derive_secret(master: str, ref: str) -> str:
    """The reference-only per-task secret (submitters before URL metadata; still accepted).

    The store lets a reference authenticate one task, the first recorded under it.
    """
    return hmac.new(master.encode(), b"bfl-hooks/task/" + ref.encode(), hashlib.sha256).hexdigest()


def derive_bound_secret(master: str, ref: str, metadata: bytes) -> str:
    """The per-task secret binding ``ref`` and the exact ``metadata`` bytes the URL carries.

    Domain-separated from ``derive_secret``: every message here starts ``bfl-hooks/task+m/``
    where that one's start ``bfl-hooks/task/``, so no reference makes the two meet. The
    metadata's hash has a fixed length and comes first, so (ref, metadata) reads one way only.
    """
    message = b"bfl-hooks/task+m/" + hashlib.sha256(metadata).digest() + ref.encode()
    return hmac.new(master.encode(), message, hashlib.sha256).hexdigest()


def verify_headers(headers: Mapping[str, str], secrets: Iterable[str]) -> bool:
    """Authenticate from the headers alone, before any of the body is read.

    Return True if ``X-Webhook-Secret`` matches one of ``secrets``; False if it does not but an
    ``X-BFL-Signature`` is present, so the body must be read and passed to ``verify``; raise
    VerificationError otherwise (no secret configured, no header, or a wrong secret with no
    signature). Constant time, every secret compared, as in ``verify``.
    """
    secrets = [s for s in secrets if s]
    if not secrets:
        raise VerificationError("no webhook secret is configured")
    presented = headers.get(SECRET_HEADER)
    has_signature = headers.get(SIGNATURE_HEADER) is not None
    if presented is None and not has_signature:
        raise VerificationError("missing X-Webhook-Secret")
    ok = False
    if presented is not None:
        for secret in secrets:
            ok |= hmac.compare_digest(presented.encode(), secret.encode())
    if ok:
        return True
    if has_signature:
        return False
    raise VerificationError("wrong webhook secret")


def verify(body: bytes, headers: Mapping[str, str], secrets: Iterable[str]) -> None:
    """Return if any of ``secrets`` authenticates the request, else raise VerificationError.

    ``headers`` must be case-insensitive or lower-cased (Starlette's ``Headers`` is).
    Every secret is checked, whatever matched first, so timing does not tell which one did.
    """
    secrets = [s for s in secrets if s]
    if not secrets:
        raise VerificationError("no webhook secret is configured")
    presented = headers.get(SECRET_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if presented is None and signature is None:
        raise VerificationError("missing X-Webhook-Secret")
    ok = False
    for secret in secrets:
        if presented is not None:
            ok |= hmac.compare_digest(presented.encode(), secret.encode())
        if signature is not None:
            ok |= hmac.compare_digest(
                signature.strip().lower().encode(), sign(body, secret).encode()
            )
    if not ok:
        raise VerificationError("wrong webhook secret or signature")
