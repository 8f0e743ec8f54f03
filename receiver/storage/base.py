"""The storage interface: put a finished download, read it back."""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StoredBlob:
    location: str
    """A filesystem path or a URL handlers can use."""
    sha256: str
    size: int
    content_type: str


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One kept image, as a listing sees it."""

    location: str
    sha256: str
    size: int
    modified_at: float
    """When it was stored (epoch seconds)."""


class Storage(abc.ABC):
    """Content-addressed image storage: the same bytes are kept once, under their sha256."""

    async def open(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Prepare the backend (create a directory, a client)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what ``open`` took."""

    @abc.abstractmethod
    async def put(self, source: Path, *, sha256: str, size: int, content_type: str) -> StoredBlob:
        """Keep the file at ``source`` (consumed: moved or deleted) and say where it went.

        When it raises, ``source`` is left where it was, for the caller to try again."""

    @abc.abstractmethod
    async def read(self, location: str) -> bytes:
        """The bytes at a location ``put`` returned."""

    @abc.abstractmethod
    def staging_dir(self) -> Path:
        """A local directory for downloads in progress (same filesystem, for local storage)."""

    async def blobs(self) -> list[BlobInfo]:
        """Every image this storage keeps (named by ``blob_name``; nothing else is listed)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its images")

    async def delete(self, locations: Sequence[str]) -> None:
        """Remove images ``blobs`` listed (a missing one is not an error)."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete images")


EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


_BLOB_NAME = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})(\.[a-z]+)?$")


def blob_sha256(name: str) -> str | None:
    """The sha256 of a ``blob_name`` (``ab/cd/abcd...ef.jpg``), or None for any other name."""
    match = _BLOB_NAME.match(name)
    if match is None or not match.group(3).startswith(match.group(1) + match.group(2)):
        return None
    return match.group(3)


def blob_name(sha256: str, content_type: str) -> str:
    """``ab/cd/abcd...ef.jpg``: two levels of fan-out keep directories small."""
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{EXTENSIONS.get(content_type, '')}"
