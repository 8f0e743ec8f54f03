"""Both storage backends against the same expectations: a directory, and a real S3 server
(moto) on loopback."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from receiver.storage import LocalStorage, Storage, StoredBlob, open_storage
from receiver.storage.s3 import S3Settings, S3Storage
from tests.s3 import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, client

pytestmark = pytest.mark.anyio

JPEG = b"\xff\xd8\xff\xe0" + b"not really a jpeg, but the storage does not care" * 20
_buckets = itertools.count(1)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def s3_settings(endpoint: str, public_base_url: str | None = None) -> S3Settings:
    return S3Settings(
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SecretStr(SECRET_ACCESS_KEY),
        public_base_url=public_base_url,
    )


@pytest.fixture
def bucket(s3_endpoint: str) -> Iterator[str]:
    """A new empty bucket on the S3 server."""
    name = f"images-{next(_buckets)}"
    s3 = client(s3_endpoint)
    s3.create_bucket(Bucket=name)
    yield name
    s3.close()


def keys(s3_endpoint: str, bucket: str) -> list[str]:
    s3 = client(s3_endpoint)
    try:
        listing = s3.list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listing.get("Contents", [])]
    finally:
        s3.close()


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend: Storage
    if request.param == "local":
        backend = LocalStorage(tmp_path / "samples")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        name = request.getfixturevalue("bucket")
        backend = S3Storage(name, "samples", s3_settings(endpoint))
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def stage(storage: Storage, data: bytes = JPEG, name: str = "sample.part") -> Path:
    """A finished download waiting in the staging directory, as the downloader leaves it."""
    path = storage.staging_dir() / name
    path.write_bytes(data)
    return path


async def put(storage: Storage, source: Path, data: bytes = JPEG) -> StoredBlob:
    digest = hashlib.sha256(data).hexdigest()
    return await storage.put(source, sha256=digest, size=len(data), content_type="image/jpeg")


async def test_put_then_read_round_trip(storage: Storage) -> None:
    blob = await put(storage, stage(storage))
    digest = hashlib.sha256(JPEG).hexdigest()
    assert (blob.sha256, blob.size, blob.content_type) == (digest, len(JPEG), "image/jpeg")
    assert blob.location.endswith(f"samples/{digest[:2]}/{digest[2:4]}/{digest}.jpg")
    assert await storage.read(blob.location) == JPEG


async def test_put_consumes_the_staged_file(storage: Storage) -> None:
    source = stage(storage)
    await put(storage, source)
    assert not source.exists()
    assert list(storage.staging_dir().iterdir()) == []


async def test_same_content_is_stored_once(storage: Storage) -> None:
    first = await put(storage, stage(storage, name="a.part"))
    second_source = stage(storage, name="b.part")
    second = await put(storage, second_source)
    assert second == first
    assert not second_source.exists()
    other = await put(storage, stage(storage, b"other bytes", "c.part"), b"other bytes")
    assert other.location != first.location
    assert await storage.read(other.location) == b"other bytes"


async def test_local_read_outside_the_root_is_refused(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "samples")
    await storage.open()
    (tmp_path / "secret.txt").write_text("no")
    for location in (str(tmp_path / "secret.txt"), str(tmp_path / "samples/../secret.txt")):
        with pytest.raises(ValueError, match="outside the storage directory"):
            await storage.read(location)


async def test_s3_stores_one_object_with_type_and_hash(s3_endpoint: str, bucket: str) -> None:
    storage = S3Storage(bucket, "samples", s3_settings(s3_endpoint))
    await storage.open()
    try:
        blob = await put(storage, stage(storage, name="a.part"))
        await put(storage, stage(storage, name="b.part"))
        key = f"samples/{blob.location.split('/samples/', 1)[1]}"
        assert blob.location == f"s3://{bucket}/{key}"
        assert keys(s3_endpoint, bucket) == [key]
        head = storage.client.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "image/jpeg"
        assert head["Metadata"] == {"sha256": blob.sha256}
    finally:
        await storage.close()


async def test_s3_read_refuses_other_buckets_and_prefixes(s3_endpoint: str, bucket: str) -> None:
    storage = S3Storage(bucket, "samples", s3_settings(s3_endpoint))
    await storage.open()
    try:
        for location in (
            "s3://another-bucket/samples/ab/cd/x.jpg",
            f"s3://{bucket}/elsewhere/x.jpg",
            f"s3://{bucket}/samples/../elsewhere/x.jpg",
            "/etc/passwd",
            "https://example.org/samples/x.jpg",
        ):
            with pytest.raises(ValueError, match="is not in"):
                await storage.read(location)
    finally:
        await storage.close()


async def test_s3_public_base_url_gives_https_locations(s3_endpoint: str, bucket: str) -> None:
    settings = s3_settings(s3_endpoint, public_base_url="https://cdn.example.org/img/")
    storage = S3Storage(bucket, "", settings)
    await storage.open()
    try:
        blob = await put(storage, stage(storage))
        assert (
            blob.location == f"https://cdn.example.org/img/{storage.key(blob.sha256, 'image/jpeg')}"
        )
        assert await storage.read(blob.location) == JPEG  # read through the API, not the CDN
    finally:
        await storage.close()


async def test_s3_staging_dir_is_local_and_removed_on_close(s3_endpoint: str, bucket: str) -> None:
    storage = S3Storage(bucket, "", s3_settings(s3_endpoint))
    with pytest.raises(RuntimeError, match="not open"):
        storage.staging_dir()
    await storage.open()
    staging = storage.staging_dir()
    assert staging.is_dir()
    await storage.close()
    assert not staging.exists()


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [("s3://images", "images", ""), ("s3://images/bfl/samples/", "images", "bfl/samples")],
)
def test_s3_url_names_bucket_and_prefix(url: str, bucket: str, prefix: str) -> None:
    storage = open_storage(url)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == (bucket, prefix)


@pytest.mark.parametrize("url", ["s3:///prefix", "s3://bucket/p?x=1"])
def test_s3_url_without_a_bucket_or_with_a_query_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="bucket"):
        open_storage(url)


async def test_s3_settings_come_from_receiver_and_aws_environment(
    s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECEIVER_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)  # boto3's own chain
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    storage = open_storage(f"s3://{bucket}/from-env")
    assert isinstance(storage, S3Storage)
    assert storage.settings.endpoint_url == s3_endpoint
    await storage.open()
    try:
        blob = await put(storage, stage(storage))
        assert blob.location.startswith(f"s3://{bucket}/from-env/")
        assert await storage.read(blob.location) == JPEG
    finally:
        await storage.close()
