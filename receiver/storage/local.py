"""Images as files in a directory, named by their sha256."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from receiver.storage.base import BlobInfo, Storage, StoredBlob, blob_name, blob_sha256

log = logging.getLogger("receiver.storage")

#: A staging file untouched for this long belongs to no live download, so a start may delete
#: it. One attempt lives at most ``receiver.download.ATTEMPT_TIMEOUT`` (120 s, enforced), then
#: is decoded (seconds) and put (a rename, or an S3 upload bounded by its timeouts and retries:
#: minutes). Other replicas may share the directory, so age is the only proof a file is dead;
#: an hour also covers clock skew between machines on a shared filesystem.
STALE_STAGING_SECONDS = 3600.0
#: What ``receiver.download`` names its files; nothing else in a staging directory is touched.
STAGING_SUFFIX = ".part"


class LocalStorage(Storage):
    def __init__(
        self, root: str | Path, *, stale_staging_seconds: float = STALE_STAGING_SECONDS
    ) -> None:
        self.root = Path(root).resolve()
        self.stale_staging_seconds = stale_staging_seconds

    async def open(self) -> None:
        await asyncio.to_thread(self.staging_dir().mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(remove_stale, self.staging_dir(), self.stale_staging_seconds)

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


def remove_stale(staging: Path, max_age: float) -> int:
    """Delete the downloads in ``staging`` left by a dead process (untouched for ``max_age``
    seconds); returns how many. Blocking: run it in a thread."""
    cutoff = time.time() - max_age
    removed = freed = 0
    with os.scandir(staging) as entries:
        for entry in entries:
            if not entry.name.endswith(STAGING_SUFFIX) or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):  # another replica got there first
                info = entry.stat(follow_symlinks=False)
                if info.st_mtime < cutoff:  # a download writes as it goes: mtime is its pulse
                    os.unlink(entry.path)
                    removed += 1
                    freed += info.st_size
    if removed:
        log.info("removed %d stale staging files (%d bytes) from %s", removed, freed, staging)
    return removed


def _place(source: Path, target: Path) -> None:
    _make_dirs(target.parent)
    if target.exists():  # same content already kept
        source.unlink()
        return
    # The download was fsynced before; rename is atomic, then make the rename itself durable.
    os.replace(source, target)
    _fsync_dir(target.parent)


def _make_dirs(path: Path) -> None:
    """``mkdir -p``, making each created directory's entry durable in its parent: after a crash
    the fan-out levels exist, and the file renamed into the last one with them."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent put made it: fsync anyway
            directory.mkdir()
        _fsync_dir(directory.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
