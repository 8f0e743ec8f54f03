"""Fetch a result image from its signed URL, safely.

Only hosts on the allowlist are contacted (redirects are re-checked hop by hop), the body is
streamed to disk with a size cap while it is hashed, and the declared content type must be an
image type whose magic bytes the file really starts with. Each attempt has a total deadline (the
URL's expiry, capped at ``ATTEMPT_TIMEOUT``) that cuts even a transfer trickling a byte at a
time, and the file is decoded in full (in a thread, within ``MAX_IMAGE_PIXELS``) before it is
handed on, so a body cut short or a decompression bomb is never stored.

Errors::

    DownloadError        why the attempt failed; ``transient`` says whether to try again
     └── HostRefused     the URL's host is not on the allowlist (``.host`` names it)
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
from PIL import Image

ALLOWED_TYPES = {"image/jpeg", "image/png", "image/webp"}
#: The Pillow decoder each allowed type is opened with (and no other).
PILLOW_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
MAX_REDIRECTS = 5
#: Longest a single attempt may take in total, redirects and body included; the URL's own
#: deadline usually cuts it shorter. It bounds how long a staging file can be in use (see
#: ``receiver.storage.local.STALE_STAGING_SECONDS``).
ATTEMPT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
#: Images with more pixels than this are refused before they are decoded. FLUX outputs are at
#: most ~4 MP; 50 MP leaves room and caps a decode at ~150 MB of RGB, where a 15 KB PNG may
#: claim 60000 x 60000 (3.6 G pixels, 10 GB decoded).
MAX_IMAGE_PIXELS = 50_000_000
#: The setting a refused sample host must be added to (named in the error, for the operator).
SAMPLE_HOSTS_SETTING = "RECEIVER_SAMPLE_HOSTS"
_SE = re.compile(r"[?&]se=([^&#]+)")


class DownloadError(Exception):
    """A download failed; ``transient`` says whether trying again may help, ``local`` that
    this machine failed (its staging disk), not the sample or its server."""

    def __init__(self, reason: str, *, transient: bool, local: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.local = local


class HostRefused(DownloadError):
    """The sample's host (or a redirect's) is not allowed; ``host`` is it, without any query."""

    def __init__(self, reason: str, *, host: str) -> None:
        super().__init__(reason, transient=False)
        self.host = host


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
    """True if ``url``'s host matches an allowlist entry.

    An entry is a host name or a glob over host names, optionally with a port, optionally
    prefixed with ``https://``:

    - ``https://bfldeliveryprod.blob.core.windows.net`` or ``https://delivery-*.bfl.ai``: https
      only. The defaults are written this way.
    - a glob (``*`` or ``?``) requires https even without the prefix: a glob reaches hosts
      nobody named one by one.
    - a plain exact name (``127.0.0.1:8001``, a local sandbox; ``http://127.0.0.1:8001`` says
      the same) may also use plain http: it is the user's own, explicit choice.

    With a port, an entry matches that port only; without one, any port. URLs with userinfo
    (``user@host``) never match.
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
        https_only = pattern.startswith("https://")
        pattern = pattern.removeprefix("https://").removeprefix("http://").rstrip("/")
        if "*" in pattern or "?" in pattern:
            if parts.scheme == "https" and fnmatch.fnmatchcase(host, pattern):
                return True
        elif pattern in (host, netloc) and (parts.scheme == "https" or not https_only):
            return True
    return False


def refusal(url: str, patterns: Sequence[str]) -> HostRefused:
    """Why ``url`` is refused, naming its host (never its query) and the setting to change."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return HostRefused("sample URL has no valid host", host="")
    if not host or parts.scheme not in ("http", "https"):
        return HostRefused("sample URL is not an http(s) URL with a host", host=host)
    if parts.username or parts.password:
        return HostRefused(f"sample URL for {host!r} carries credentials (user@host)", host=host)
    if parts.scheme == "http" and host_allowed(parts._replace(scheme="https").geturl(), patterns):
        return HostRefused(
            f"sample host {host!r} is allowed over https only (see {SAMPLE_HOSTS_SETTING})",
            host=host,
        )
    return HostRefused(f"sample host {host!r} is not in {SAMPLE_HOSTS_SETTING}", host=host)


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
    attempt_timeout: float = ATTEMPT_TIMEOUT,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Downloaded:
    """Download ``url`` into ``staging_dir``; raise DownloadError saying why not.

    The whole attempt ends by ``deadline`` (wall clock, the URL's expiry) or after
    ``attempt_timeout`` seconds, whichever comes first. The file is returned only once decoded.
    """
    remaining = deadline - time.time()
    if remaining <= 0:
        raise DownloadError("the signed URL expired before the download", transient=False)
    budget = min(remaining, attempt_timeout)
    try:
        # httpx's timeouts bound each read, not the transfer: this bounds the transfer.
        async with asyncio.timeout(budget):
            got = await _follow(
                client,
                url,
                allowed_hosts=allowed_hosts,
                max_bytes=max_bytes,
                staging_dir=staging_dir,
                budget=budget,
            )
    except TimeoutError:
        if remaining <= attempt_timeout:
            raise DownloadError(
                f"cut at the URL's deadline: the signed URL expired {budget:.1f} s"
                " after the download started",
                transient=False,
            ) from None
        raise DownloadError(
            f"cut after {budget:.1f} s, the cap on one download attempt", transient=True
        ) from None
    try:
        await asyncio.to_thread(check_image, got.path, got.content_type, max_pixels)
    except BaseException:
        got.path.unlink(missing_ok=True)
        raise
    return got


async def _follow(
    client: httpx.AsyncClient,
    url: str,
    *,
    allowed_hosts: Sequence[str],
    max_bytes: int,
    staging_dir: Path,
    budget: float,
) -> Downloaded:
    """The GET, redirect by redirect, each hop's host checked before it is contacted."""
    timeout = httpx.Timeout(budget, connect=min(budget, CONNECT_TIMEOUT))
    for _ in range(MAX_REDIRECTS + 1):
        if not host_allowed(url, allowed_hosts):
            raise refusal(url, allowed_hosts)
        try:
            async with client.stream("GET", url, timeout=timeout, follow_redirects=False) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = str(resp.url.join(resp.headers["location"]))
                    continue
                _check_status(resp)
                return await _save(resp, max_bytes=max_bytes, staging_dir=staging_dir)
        except httpx.TransportError as exc:
            # A body cut short under a Content-Length or chunked framing lands here too.
            raise DownloadError(f"transport error: {type(exc).__name__}", transient=True) from exc
        except httpx.InvalidURL as exc:  # the URL or a redirect's Location; its text stays out
            raise DownloadError(
                "not a valid URL (the sample's or a redirect's)", transient=False
            ) from exc
    raise DownloadError("too many redirects", transient=False)


def check_image(path: Path, content_type: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Decode the file, or raise DownloadError: is it whole, and not a bomb?

    A close-delimited body (no Content-Length) that was cut short looks complete to HTTP; only
    the decoder can tell. The size in the header is checked before any pixel is decoded.
    Blocking: run it in a thread.
    """
    try:
        with Image.open(path, formats=[PILLOW_FORMATS[content_type]]) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise DownloadError(
                    f"image is {image.width}x{image.height}, over the {max_pixels} pixel limit",
                    transient=False,
                )
            if image.format == "JPEG":
                # Decoded at 1/8 scale: libjpeg still reads the whole entropy-coded stream (a
                # file cut short still fails) but skips most of the inverse DCT and keeps a
                # 64th of the pixels in memory, which makes the check 1.5-2x cheaper.
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except DownloadError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit
        raise DownloadError(
            f"image refused as a decompression bomb: {exc}", transient=False
        ) from exc
    except Exception as exc:  # decoders of hostile input raise many types: all mean "refused"
        # Most often a body cut short: another attempt may get all of it.
        raise DownloadError(
            f"not a whole {content_type} image: {type(exc).__name__}: {exc}", transient=True
        ) from exc


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
    try:
        fd, name = tempfile.mkstemp(dir=staging_dir, suffix=".part")
    except OSError as exc:
        raise _unstageable(exc) from None
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
    except BaseException as exc:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - one metadata call on a failure path
        if isinstance(exc, OSError):
            raise _unstageable(exc) from None
        raise
    return Downloaded(path, digest.hexdigest(), size, content_type)


def _unstageable(exc: OSError) -> DownloadError:
    """This machine's disk, not the sample, failed (full, read-only): tried again while the
    URL lives. The worker says so on /readyz (receiver.jobrun)."""
    return DownloadError(
        f"cannot write the download to the staging folder: {exc.strerror or exc}",
        transient=True,
        local=True,
    )
