"""Images as files in a directory, named by their sha256."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from receiver.storage.base import BlobInfo, Storage, StoredBlob, blob_name, blob_sha256


class LocalStorage(Storage):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    async def open(self) -> None:
        await asyncio.to_thread(self.staging_dir().mkdir, parents=True, exist_ok=True)

    def staging_dir(self) -> Path:
        return self.root / ".staging"

    async def put(self, source: Path, *, sha256: str, size: int, content_type: str) -> StoredBlob:
        target = self.root / blob_name(sha256, content_type)
        await asyncio.to_thread(_place, source, target)
        return StoredBlob(str(target), sha256, size, content_type)

    async def read(self, location: str) -> bytes:
        path = Path(location).resolve()  # noqa: ASYNC240 - pure path arithmetic, no I/O
        if not path.is_relative_to(self.root):
            raise ValueError(f"{location!r} is outside the storage directory")
        return await asyncio.to_thread(path.read_bytes)

    async def blobs(self) -> list[BlobInfo]:
        return await asyncio.to_thread(self._list)

    async def delete(self, locations: Sequence[str]) -> None:
        await asyncio.to_thread(self._delete, list(locations))

    def _list(self) -> list[BlobInfo]:
        found = []
        for path in self.root.glob("??/??/*"):
            sha256 = blob_sha256(path.relative_to(self.root).as_posix())
            if sha256 is None or not path.is_file():
                continue  # not one of ours (staging, a user's file): never touched
            stat = path.stat()
            found.append(BlobInfo(str(path), sha256, stat.st_size, stat.st_mtime))
        return found

    def _delete(self, locations: list[str]) -> None:
        for location in locations:
            path = Path(location).resolve()
            rel = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else ""
            if blob_sha256(rel) is None:
                raise ValueError(f"{location!r} is not an image of this storage")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            for parent in (path.parent, path.parent.parent):
                with contextlib.suppress(OSError):  # not empty: another image is there
                    parent.rmdir()


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # same content already kept
        source.unlink()
        return
    # The download was fsynced before; rename is atomic, then make the rename itself durable.
    os.replace(source, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
