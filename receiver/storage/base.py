"""The storage interface: put a finished download, read it back."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StoredBlob:
    location: str
    """A filesystem path or a URL handlers can use."""
    sha256: str
    size: int
    content_type: str


class Storage(abc.ABC):
    """Content-addressed image storage: the same bytes are kept once, under their sha256."""

    async def open(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Prepare the backend (create a directory, a client)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what ``open`` took."""

    @abc.abstractmethod
    async def put(self, source: Path, *, sha256: str, size: int, content_type: str) -> StoredBlob:
        """Keep the file at ``source`` (consumed: moved or deleted) and say where it went."""

    @abc.abstractmethod
    async def read(self, location: str) -> bytes:
        """The bytes at a location ``put`` returned."""

    @abc.abstractmethod
    def staging_dir(self) -> Path:
        """A local directory for downloads in progress (same filesystem, for local storage)."""


EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


def blob_name(sha256: str, content_type: str) -> str:
    """``ab/cd/abcd...ef.jpg``: two levels of fan-out keep directories small."""
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{EXTENSIONS.get(content_type, '')}"
