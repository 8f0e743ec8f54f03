"""Fetch a result image from its signed URL, safely.

Only hosts on the allowlist are contacted (redirects are re-checked hop by hop), the body is
streamed to disk with a size cap while it is hashed, and the declared content type must be an
image type whose magic bytes the file really starts with.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

ALLOWED_TYPES = {"image/jpeg", "image/png", "image/webp"}
MAX_REDIRECTS = 5
#: Longest a single attempt may take; the URL's own deadline usually cuts it shorter.
ATTEMPT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
_SE = re.compile(r"[?&]se=([^&#]+)")


class DownloadError(Exception):
    """A download failed; ``transient`` says whether trying again may help."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Downloaded:
    path: Path
    sha256: str
    size: int
    content_type: str


def url_deadline(url: str, received_at: float, ttl: float) -> float:
    """When a signed URL dies: its ``se=`` expiry if it has one, else ``received_at + ttl``."""
    match = _SE.search(url)  # on every webhook: a regex, not a full query parse
    if match:
        with contextlib.suppress(ValueError):
            expiry = datetime.fromisoformat(unquote(match.group(1)).replace("Z", "+00:00"))
            if expiry.tzinfo is not None:
                return expiry.timestamp()
    return received_at + ttl


def host_allowed(url: str, patterns: Sequence[str]) -> bool:
    """True if ``url``'s host matches an allowlist pattern.

    Patterns with ``*`` or ``?`` are globs over the host name and require https. A host named
    exactly, like a local sandbox (``127.0.0.1:8001``), may use plain http; with a port it
    matches that port only.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port
    except ValueError:
        return False
    if not host or parts.scheme not in ("http", "https") or parts.username or parts.password:
        return False
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    for raw in patterns:
        pattern = raw.strip().lower()
        if "*" in pattern or "?" in pattern:
            if parts.scheme == "https" and fnmatch.fnmatchcase(host, pattern):
                return True
        elif pattern in (host, netloc):
            return True
    return False


def sniff(head: bytes) -> str | None:
    """The image type the first bytes of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


async def fetch_sample(
    client: httpx.AsyncClient,
    url: str,
    *,
    allowed_hosts: Sequence[str],
    max_bytes: int,
    staging_dir: Path,
    deadline: float,
) -> Downloaded:
    """Download ``url`` into ``staging_dir``; raise DownloadError saying why not."""
    for _ in range(MAX_REDIRECTS + 1):
        if not host_allowed(url, allowed_hosts):
            raise DownloadError(
                f"sample host not allowed: {urlsplit(url).netloc!r}", transient=False
            )
        remaining = deadline - time.time()
        if remaining <= 0:
            raise DownloadError("the signed URL expired before the download", transient=False)
        timeout = httpx.Timeout(min(remaining, ATTEMPT_TIMEOUT), connect=CONNECT_TIMEOUT)
        try:
            async with client.stream("GET", url, timeout=timeout, follow_redirects=False) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = str(resp.url.join(resp.headers["location"]))
                    continue
                _check_status(resp)
                return await _save(resp, max_bytes=max_bytes, staging_dir=staging_dir)
        except httpx.TransportError as exc:
            raise DownloadError(f"transport error: {type(exc).__name__}", transient=True) from exc
    raise DownloadError("too many redirects", transient=False)


def _check_status(resp: httpx.Response) -> None:
    code = resp.status_code
    if code == 200:
        return
    if code in (401, 403):
        raise DownloadError(f"HTTP {code}: the signed URL is expired or invalid", transient=False)
    if code == 410:
        raise DownloadError("HTTP 410: the sample is gone", transient=False)
    # 404 can be a blob not yet visible; 408/429/5xx are the server's trouble, not ours.
    transient = code in (404, 408, 425, 429) or code >= 500
    raise DownloadError(f"HTTP {code}", transient=transient)


async def _save(resp: httpx.Response, *, max_bytes: int, staging_dir: Path) -> Downloaded:
    content_type = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ALLOWED_TYPES:
        raise DownloadError(f"not an image content type: {content_type!r}", transient=False)
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise DownloadError(
            f"sample is {declared} bytes, over the {max_bytes} cap", transient=False
        )
    fd, name = tempfile.mkstemp(dir=staging_dir, suffix=".part")
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadError(f"sample exceeds the {max_bytes} byte cap", transient=False)
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            # The fsync is what makes the file durable, and slow: keep it off the event loop.
            await asyncio.to_thread(os.fsync, out.fileno())
        sniffed = sniff(head)
        if sniffed != content_type:
            raise DownloadError(
                f"content does not match {content_type!r} (looks like {sniffed or 'no image'})",
                transient=False,
            )
    except BaseException:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - one metadata call on a failure path
        raise
    return Downloaded(path, digest.hexdigest(), size, content_type)
