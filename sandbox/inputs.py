"""Untrusted inputs: URL allowlists, images (base64 or URL) and finetuning ZIPs.

Every check raises InputError naming the request field, which the API turns into a 422.
Nothing here decodes more than a header before the size limits are checked.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import PurePosixPath

import httpx

from submitter.imagecheck import MAX_IMAGE_BYTES, ImageRejected, check_image

#: The docs: "Supports up to 20MB or 20 megapixels".
FETCH_TIMEOUT = httpx.Timeout(10.0)
#: The docs' finetuning formats; captions are same-named .txt files.
TRAINING_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
MAX_TRAINING_IMAGES = 20


class InputError(ValueError):
    """A request field is unusable; ``field`` names it for the 422's ``loc``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SourceImage:
    """An input image that passed the limits: its bytes and what its header says."""

    data: bytes
    size: tuple[int, int]
    format: str
    has_alpha: bool


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether ``host`` (a name or an IP literal) is one of ``allowed`` (names, IPs, CIDRs)."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    for raw in allowed:
        entry = raw.strip().lower()
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:  # a host name: matches only that name, never what it resolves to
            if ip is None and host == entry.rstrip("."):
                return True
            continue
        if ip is not None and ip in network:
            return True
    return False


def allowed_url(url: str, field: str, allowed: Iterable[str]) -> httpx.URL:
    """``url`` parsed the way the HTTP client will send it, if its host is allowed."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InputError(field, f"not a usable URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(field, "must be an absolute http(s) URL")
    allowed = tuple(allowed)
    if not host_allowed(parsed.host, allowed):
        raise InputError(
            field,
            f"host {parsed.host!r} is not on the sandbox allowlist ({', '.join(allowed)}); "
            "set SANDBOX_ALLOWED_HOSTS to allow it",
        )
    return parsed


def decode_base64(text: str, field: str, limit: int) -> bytes:
    """Decode base64 (optionally a ``data:`` URI) of at most ``limit`` decoded bytes."""
    if text[:5].lower() == "data:":
        text = text.partition(",")[2]
    compact = "".join(text.split())
    if len(compact) > (limit + 2) // 3 * 4:
        raise InputError(field, f"larger than {limit // (1024 * 1024)} MB")
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "neither base64 nor an http(s) URL") from None
    if not data:
        raise InputError(field, "is empty")
    return data


def inspect_image(data: bytes, field: str) -> SourceImage:
    """Check ``data`` is an image within the 20 MB / 20 MP limits (reading its header only)."""
    try:
        info = check_image(data)
    except ImageRejected as exc:
        raise InputError(field, str(exc)) from None
    return SourceImage(data, info.size, info.format, info.has_alpha)


async def load_image(
    value: str, field: str, client: httpx.AsyncClient, allowed: Iterable[str]
) -> SourceImage:
    """An image given as base64 or as a URL on the allowlist (fetched, at most 20 MB)."""
    if "://" in value[:16]:
        url = allowed_url(value, field, allowed)
        return inspect_image(await _fetch(client, url, field), field)
    return inspect_image(decode_base64(value, field, MAX_IMAGE_BYTES), field)


async def _fetch(client: httpx.AsyncClient, url: httpx.URL, field: str) -> bytes:
    try:
        async with client.stream("GET", url, timeout=FETCH_TIMEOUT) as response:
            if response.status_code != 200:
                raise InputError(field, f"{url} answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_IMAGE_BYTES:
                    raise InputError(field, "image is larger than 20 MB")
            return bytes(body)
    except httpx.HTTPError as exc:
        raise InputError(field, f"could not fetch {url}: {exc!r}") from None


@dataclass(frozen=True)
class TrainingSet:
    """A validated finetuning ZIP: image names, and the captions found for some of them."""

    images: tuple[str, ...]
    captions: Mapping[str, str]


def read_training_zip(file_data: str) -> TrainingSet:
    """Validate the base64 ZIP of ``/v1/finetune``: 1-20 images, optional .txt captions."""
    field = "file_data"
    archive = decode_base64(file_data, field, 20 * MAX_IMAGE_BYTES)
    try:
        zf = zipfile.ZipFile(BytesIO(archive))
    except (zipfile.BadZipFile, ValueError):
        raise InputError(field, "not a ZIP archive") from None
    images: list[str] = []
    captions: dict[str, str] = {}
    with zf:
        for info in zf.infolist():
            path = PurePosixPath(info.filename)
            if info.is_dir() or path.parts[0] == "__MACOSX" or path.name.startswith("."):
                continue  # folders and the junk macOS and editors leave in archives
            suffix = path.suffix.lower()
            if suffix not in TRAINING_SUFFIXES and suffix != ".txt":
                raise InputError(
                    field, f"{info.filename}: unsupported file (jpg, jpeg, png, webp, txt)"
                )
            if info.file_size > MAX_IMAGE_BYTES:
                raise InputError(field, f"{info.filename}: larger than 20 MB")
            content = _read_member(zf, info, field)
            stem = str(path.with_suffix(""))
            if suffix == ".txt":
                try:
                    captions[stem] = content.decode("utf-8")
                except UnicodeDecodeError:
                    raise InputError(field, f"{info.filename}: caption is not UTF-8") from None
                continue
            image = inspect_image(content, field)
            if image.format != TRAINING_SUFFIXES[suffix]:
                raise InputError(field, f"{info.filename}: content is {image.format or '?'}")
            images.append(stem)
    if not images:
        raise InputError(field, "the ZIP holds no images (jpg, jpeg, png, webp)")
    if len(images) > MAX_TRAINING_IMAGES:
        raise InputError(field, f"the ZIP holds {len(images)} images; at most 20")
    orphans = sorted(set(captions) - set(images))
    if orphans:
        raise InputError(field, f"captions without a same-named image: {', '.join(orphans)}")
    return TrainingSet(tuple(images), captions)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, field: str) -> bytes:
    try:
        with zf.open(info) as member:
            # file_size is what the archive claims; read one byte more to catch a lie.
            content = member.read(MAX_IMAGE_BYTES + 1)
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        ValueError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
        raise InputError(field, f"{info.filename}: cannot be read ({exc})") from None
    if len(content) > MAX_IMAGE_BYTES:
        raise InputError(field, f"{info.filename}: larger than 20 MB")
    return content
