"""Images in S3-compatible object storage (AWS S3, MinIO, Cloudflare R2, ...), named by sha256.

``RECEIVER_STORAGE_URL=s3://bucket/prefix``. Endpoint, region and credentials come from the
``RECEIVER_S3_*`` settings below when set, else from boto3's usual sources (``AWS_*`` variables,
``~/.aws``, an instance or pod role), so the same image runs on AWS and elsewhere.

What handlers see as ``event.image.location``:

- ``s3://bucket/prefix/ab/cd/abcd….jpg`` by default: it never expires (events are kept for days,
  a presigned URL would die with the hour) and any S3 client can fetch it, as can
  ``await event.image.read()``.
- ``{RECEIVER_S3_PUBLIC_BASE_URL}/prefix/ab/cd/abcd….jpg`` when the bucket (or a CDN in front
  of it) is public: a plain https URL a handler can pass on as it is, say to a chat bot.

boto3 is synchronous: its calls run in worker threads, on one client made in ``open()`` (boto3
clients are thread-safe; sessions are not).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from receiver.storage.base import BlobInfo, Storage, StoredBlob, blob_name, blob_sha256
from receiver.storage.local import STALE_STAGING_SECONDS, remove_stale

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: The temporary staging directories of processes with no ``staging_dir`` configured.
TEMP_PREFIX = "bfl-s3-"
#: S3's limit on keys per DeleteObjects request.
_DELETE_BATCH = 1000


class S3Settings(BaseSettings):
    """How to reach the object store; unset fields fall back to boto3's own configuration."""

    model_config = SettingsConfigDict(
        env_prefix="RECEIVER_S3_", env_file=".env", extra="ignore", frozen=True
    )

    endpoint_url: str | None = None
    """For S3-compatible services (``http://127.0.0.1:9000`` for a local MinIO); AWS if unset."""

    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    """Only for temporary credentials given explicitly."""

    public_base_url: str | None = None
    """When set, locations are ``{public_base_url}/{key}`` https URLs instead of ``s3://``."""

    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """``path`` for servers without per-bucket host names (most self-hosted ones)."""

    staging_dir: Path | None = None
    """Where downloads wait before upload; a fresh temporary directory if unset. It may be
    shared by replicas: files in it untouched for an hour are removed at start."""

    timeout_seconds: float = Field(default=30.0, gt=0)
    """Connect and read timeout of each S3 request (boto3 retries transient failures)."""

    max_connections: int = Field(default=32, ge=1)
    """Connections kept to the endpoint; about the number of jobs run at once."""


class S3Storage(Storage):
    """Content-addressed images in a bucket, under an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        settings: S3Settings | None = None,
        *,
        stale_staging_seconds: float = STALE_STAGING_SECONDS,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 storage URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings if settings is not None else S3Settings()
        self._client: S3Client | None = None
        self._staging: Path | None = None
        self._own_staging = False
        self.stale_staging_seconds = stale_staging_seconds

    @classmethod
    def from_url(cls, url: str, settings: S3Settings | None = None) -> S3Storage:
        """``s3://bucket`` or ``s3://bucket/prefix``; settings from the environment if omitted."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or parts.query or parts.fragment:
            raise ValueError(f"not an S3 storage URL (expected s3://bucket/prefix): {url!r}")
        return cls(parts.netloc, parts.path, settings)

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("the S3 storage is not open")
        return self._client

    async def open(self) -> None:
        self._client = await asyncio.to_thread(self._make_client)
        if self.settings.staging_dir is not None:
            self._staging = self.settings.staging_dir
            await asyncio.to_thread(self._staging.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(remove_stale, self._staging, self.stale_staging_seconds)
        else:
            self._staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=TEMP_PREFIX))
            self._own_staging = True
            # A killed process leaves its temporary directory behind: empty its dead files
            # (the directory itself may belong to a live, idle process: it stays).
            await asyncio.to_thread(_remove_stale_temp, self.stale_staging_seconds)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)
        if self._staging is not None and self._own_staging:
            await asyncio.to_thread(shutil.rmtree, self._staging, ignore_errors=True)
        self._staging = None

    def staging_dir(self) -> Path:
        if self._staging is None:
            raise RuntimeError("the S3 storage is not open")
        return self._staging

    def key(self, sha256: str, content_type: str) -> str:
        """The object key for this content."""
        name = blob_name(sha256, content_type)
        return f"{self.prefix}/{name}" if self.prefix else name

    def location(self, key: str) -> str:
        """What handlers see for ``key`` (see the module docstring)."""
        if self.settings.public_base_url:
            return f"{self.settings.public_base_url.rstrip('/')}/{key}"
        return f"s3://{self.bucket}/{key}"

    async def put(self, source: Path, *, sha256: str, size: int, content_type: str) -> StoredBlob:
        key = self.key(sha256, content_type)
        await asyncio.to_thread(self._upload, source, key, sha256, size, content_type)
        # Consumed once kept. After a failure the file stays: its signed URL may be dead by
        # now, so the caller tries again with these bytes (receiver.jobrun).
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(source.unlink)
        return StoredBlob(self.location(key), sha256, size, content_type)

    async def read(self, location: str) -> bytes:
        key = self._key_of(location)
        return await asyncio.to_thread(self._download, key)

    async def blobs(self) -> list[BlobInfo]:
        return await asyncio.to_thread(self._list)

    async def delete(self, locations: Sequence[str]) -> None:
        keys = [self._key_of(location) for location in locations]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            await asyncio.to_thread(self._delete, batch)

    def _list(self) -> list[BlobInfo]:
        found = []
        start = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        )
        for page in pages:
            for item in page.get("Contents", []):
                sha256 = blob_sha256(item["Key"][len(start) :])
                if sha256 is not None:  # anything else in the bucket is not ours
                    found.append(
                        BlobInfo(
                            self.location(item["Key"]),
                            sha256,
                            item["Size"],
                            item["LastModified"].timestamp(),
                        )
                    )
        return found

    def _delete(self, keys: list[str]) -> None:
        answer = self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise OSError(f"S3 refused to delete {first.get('Key')}: {first.get('Code')}")

    def _key_of(self, location: str) -> str:
        """The key behind a location this storage returned; refuse any other."""
        key: str | None = None
        base = self.settings.public_base_url
        if base and location.startswith(base.rstrip("/") + "/"):
            key = location[len(base.rstrip("/")) + 1 :]
        elif location.startswith("s3://"):
            parts = urlsplit(location)
            if parts.netloc == self.bucket:
                key = parts.path.lstrip("/")
        inside = key is not None and (not self.prefix or key.startswith(self.prefix + "/"))
        if key is None or not inside or any(p in ("", ".", "..") for p in key.split("/")):
            raise ValueError(f"{location!r} is not in s3://{self.bucket}/{self.prefix}")
        return key

    def _make_client(self) -> S3Client:
        s = self.settings
        config = botocore.config.Config(
            region_name=s.region,
            connect_timeout=s.timeout_seconds,
            read_timeout=s.timeout_seconds,
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=s.max_connections,
            s3={"addressing_style": s.addressing_style},
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=s.endpoint_url,
            aws_access_key_id=s.access_key_id,
            aws_secret_access_key=_reveal(s.secret_access_key),
            aws_session_token=_reveal(s.session_token),
            config=config,
        )

    def _upload(self, source: Path, key: str, sha256: str, size: int, content_type: str) -> None:
        if self._exists(key):
            return  # the same content is already kept: the key is its hash
        with source.open("rb") as body:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=size,
                ContentType=content_type,
                Metadata={"sha256": sha256},
            )

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # S3 answers 403, not 404, for a missing key when the credentials may not list the
            # bucket. Uploading again is safe (same key, same bytes), so treat both as absent.
            if status in (403, 404):
                return False
            raise
        return True

    def _download(self, key: str) -> bytes:
        response = self.client.get_object(Bucket=self.bucket, Key=key)
        with contextlib.closing(response["Body"]) as body:
            return body.read()


def _remove_stale_temp(max_age: float) -> None:
    for staging in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):  # gone, or not ours to touch
            remove_stale(staging, max_age)


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None
