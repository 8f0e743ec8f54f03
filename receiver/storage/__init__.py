"""Where images are kept, chosen by the scheme of ``RECEIVER_STORAGE_URL``."""

from __future__ import annotations

from receiver.storage.base import Storage, StoredBlob
from receiver.storage.local import LocalStorage

__all__ = ["LocalStorage", "Storage", "StoredBlob", "open_storage"]


def open_storage(url: str) -> Storage:
    """A storage backend for ``file://dir`` (or a plain path) or ``s3://bucket/prefix``."""
    if url.startswith("s3://"):
        from receiver.storage.s3 import S3Storage  # noqa: PLC0415 - only S3 users need its client

        return S3Storage.from_url(url)
    if url.startswith("file://"):
        return LocalStorage(url.removeprefix("file://"))
    if "://" in url:
        raise ValueError(f"unsupported storage URL (expected file:// or s3://): {url!r}")
    return LocalStorage(url)
