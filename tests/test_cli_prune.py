"""``prune --images`` removes the images no event refers to any more, in a directory and in a
real S3 server, and nothing else: not an image an event still has, not a fresh one, not a
file that is not one of ours."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from receiver.cli import main
from receiver.settings import Settings
from receiver.storage.base import blob_sha256
from tests.s3 import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, client
from tests.support import (
    delivery_server,
    eventually,
    jpeg_bytes,
    read_store,
    ready,
    running_receiver,
    settings_for,
)

_buckets = itertools.count(1)


def run(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args))


@pytest.fixture(params=["local", "s3"])
def storage_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    if request.param == "local":
        return f"file://{tmp_path}/samples"
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket = f"prune-{next(_buckets)}"
    s3 = client(endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.close()
    for name, value in {
        "ENDPOINT_URL": endpoint,
        "REGION": REGION,
        "ACCESS_KEY_ID": ACCESS_KEY_ID,
        "SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "ADDRESSING_STYLE": "path",
    }.items():
        monkeypatch.setenv(f"RECEIVER_S3_{name}", value)
    return f"s3://{bucket}/images"


def stored_hashes(settings: Settings) -> set[str]:
    events = read_store(settings, lambda s: s.list_events())
    return {e.image.sha256 for e in events if e.image is not None}


def kept_images(settings: Settings, tmp_path: Path) -> set[str]:
    """The sha256 of every image the storage holds, read with its own listing tools."""
    if settings.storage_url.startswith("file://"):
        root = tmp_path / "samples"
        found = (blob_sha256(p.relative_to(root).as_posix()) for p in root.rglob("*.jpg"))
        return {sha for sha in found if sha}
    bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
    s3 = client(os.environ["RECEIVER_S3_ENDPOINT_URL"])
    try:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        keys = [item["Key"].removeprefix(prefix + "/") for item in listing.get("Contents", [])]
    finally:
        s3.close()
    return {sha for sha in map(blob_sha256, keys) if sha}


def test_prune_images_removes_only_unreferenced_ones(
    tmp_path: Path, storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with delivery_server() as delivery:
        settings = settings_for(tmp_path, storage_url=storage_url, sample_hosts=(delivery.host,))
        monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
        monkeypatch.setenv("RECEIVER_STORAGE_URL", storage_url)
        with running_receiver(settings) as r:
            for count, (name, color) in enumerate((("old", "red"), ("new", "green")), 1):
                url = delivery.add(f"{name}.jpg")
                delivery.samples[f"{name}.jpg"].body = jpeg_bytes(64, color)
                r.post(ready(name, url))
                eventually(lambda n=count: len(stored_hashes(settings)) == n)
                if name == "old":
                    time.sleep(1.2)  # "old" is over a second older than "new"
    old = read_store(settings, lambda s: s.get_event("old"))
    assert old.image is not None
    old_sha = old.image.sha256
    both = stored_hashes(settings)
    assert kept_images(settings, tmp_path) == both
    if storage_url.startswith("file://"):
        stray = tmp_path / "samples" / "notes.txt"  # not an image of ours: never touched
        stray.write_text("keep me")

    # Fresh images are kept by default, referred to or not: a download may be finishing.
    out = run("prune", "--older-than", "1s", "--images")
    assert out.exit_code == 0, out.output
    pruned, images = out.output.splitlines()
    assert pruned == "pruned 1 event(s) older than 1s"
    assert images.startswith("removed 0 image(s) no event refers to (0 B); kept 2 (")
    assert kept_images(settings, tmp_path) == both

    out = run("prune", "--images", "--image-grace", "0s")
    assert out.exit_code == 0, out.output
    assert out.output.startswith("removed 1 image(s) no event refers to (")
    assert "kept 1 (" in out.output
    assert kept_images(settings, tmp_path) == both - {old_sha}
    if storage_url.startswith("file://"):
        assert stray.read_text() == "keep me"
        assert not (tmp_path / "samples" / old_sha[:2]).exists()  # its empty folders went too

    again = run("prune", "--images", "--image-grace", "0s")
    assert again.output.startswith("removed 0 image(s)")


def test_prune_needs_something_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = run("prune")
    assert out.exit_code == 2
    assert "--older-than" in out.output


def test_prune_images_refuses_a_missing_storage_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = settings_for(tmp_path)
    monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RECEIVER_STORAGE_URL", "file://./no/such/samples")
    with running_receiver(settings):
        pass  # the store exists
    out = run("prune", "--images")
    assert out.exit_code == 1
    assert f"no image storage at {tmp_path / 'no' / 'such' / 'samples'}" in out.output
    assert not (tmp_path / "no").exists()
