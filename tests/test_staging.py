"""Staging files: the ones a dead process left are removed at start (by age, as replicas may
share the directory); and a stored file's fan-out directories are made durable."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from receiver.storage import LocalStorage
from receiver.storage import local as local_storage
from receiver.storage.local import STALE_STAGING_SECONDS
from receiver.storage.s3 import TEMP_PREFIX, S3Settings, S3Storage
from tests.raw_http import raw_server, trickle
from tests.servers import base_url, loopback_socket
from tests.support import SECRET, eventually, ready
from tests.test_crash import _healthy, start_receiver
from tests.test_download_faults import photo_jpeg

OLD = 2 * STALE_STAGING_SECONDS


def plant(directory: Path, name: str, age: float) -> Path:
    """A staging file last written ``age`` seconds ago."""
    path = directory / name
    path.write_bytes(b"partial")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_local_open_removes_stale_staging_files_and_keeps_fresh_ones(tmp_path: Path) -> None:
    staging = tmp_path / "samples" / ".staging"
    staging.mkdir(parents=True)
    stale = plant(staging, "dead.part", age=120)
    fresh = plant(staging, "live.part", age=10)  # another replica's download in progress
    foreign = plant(staging, "notes.txt", age=120)  # not a download: never touched
    asyncio.run(LocalStorage(tmp_path / "samples", stale_staging_seconds=60).open())
    assert not stale.exists()
    assert fresh.exists()
    assert foreign.exists()


def test_the_default_age_outlives_any_download() -> None:
    from receiver.download import ATTEMPT_TIMEOUT  # noqa: PLC0415

    assert STALE_STAGING_SECONDS >= 10 * ATTEMPT_TIMEOUT


def s3_settings(staging_dir: Path | None = None) -> S3Settings:
    # No request is made: open() only builds the client.
    return S3Settings(  # type: ignore[call-arg]
        _env_file=None,
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        access_key_id="test",
        secret_access_key=SecretStr("test"),
        staging_dir=staging_dir,
    )


def test_s3_open_cleans_a_configured_shared_staging_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared-staging"
    shared.mkdir()
    stale = plant(shared, "dead.part", age=120)
    fresh = plant(shared, "live.part", age=10)
    settings = s3_settings(staging_dir=shared)
    storage = S3Storage("bucket", settings=settings, stale_staging_seconds=60)

    async def cycle() -> None:
        await storage.open()
        await storage.close()

    asyncio.run(cycle())
    assert not stale.exists()
    assert fresh.exists()
    assert shared.is_dir()  # configured: never removed by close


def test_s3_open_empties_dead_temporary_staging_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own temp directory
    left = tmp_path / f"{TEMP_PREFIX}killed"
    left.mkdir()
    stale = plant(left, "dead.part", age=120)
    fresh = plant(left, "live.part", age=10)
    storage = S3Storage("bucket", settings=s3_settings(), stale_staging_seconds=60)

    async def cycle() -> None:
        await storage.open()
        assert storage.staging_dir().parent == tmp_path
        await storage.close()

    asyncio.run(cycle())
    assert not stale.exists()
    assert fresh.exists()


def test_each_created_fan_out_level_is_fsynced_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fsync's effect shows only after a power cut: watch the calls (they still go through).
    synced: list[Path] = []
    real = local_storage._fsync_dir

    def spy(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(local_storage, "_fsync_dir", spy)
    root = tmp_path / "samples"
    storage = LocalStorage(root)
    asyncio.run(storage.open())
    digest = "ab" + "cd" + "0" * 60
    first = storage.staging_dir() / "1.part"
    first.write_bytes(b"x")
    blob = asyncio.run(storage.put(first, sha256=digest, size=1, content_type="image/jpeg"))
    assert Path(blob.location) == root / "ab" / "cd" / f"{digest}.jpg"
    # ab in root, cd in ab, then the file's rename in cd.
    assert synced == [root, root / "ab", root / "ab" / "cd"]

    synced.clear()
    second = storage.staging_dir() / "2.part"
    second.write_bytes(b"y")
    other = "ab" + "ef" + "1" * 60
    asyncio.run(storage.put(second, sha256=other, size=1, content_type="image/jpeg"))
    assert synced == [root / "ab", root / "ab" / "ef"]  # only the new level, then the rename


def _partials(staging: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in staging.glob("*.part")} if staging.is_dir() else {}


@pytest.mark.slow
def test_kill_9_mid_download_leaves_nothing_after_the_next_starts_cleanup(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    staging = samples / ".staging"
    with raw_server(trickle(photo_jpeg(96), step=50, every=0.2)) as delivery:
        env = {
            **os.environ,
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
            "RECEIVER_STORAGE_URL": f"file://{samples}",
            "RECEIVER_SAMPLE_HOSTS": delivery.host,
            "RECEIVER_JOB_LEASE_SECONDS": "2",
            "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
            "RECEIVER_LOG_LEVEL": "warning",
        }
        sock = loopback_socket()
        url = base_url(sock)
        proc = start_receiver(sock.fileno(), env)
        try:
            eventually(lambda: _healthy(url), timeout=20)
            for i in range(4):
                sent = httpx.post(
                    url + "/webhooks/bfl",
                    json=ready(f"t{i}", f"{delivery.url}/{i}.jpg"),
                    headers={"x-webhook-secret": SECRET},
                    timeout=10,
                )
                assert sent.status_code == 200
            # Every download is under way, with bytes on disk.
            eventually(lambda: len(_partials(staging)) == 4, timeout=20)
            eventually(lambda: all(_partials(staging).values()), timeout=20)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            left = set(_partials(staging))
            assert len(left) == 4  # the leak: nobody will ever finish these

            # A start right away keeps them: by age they could be another replica's.
            proc = start_receiver(sock.fileno(), env)
            eventually(lambda: _healthy(url), timeout=20)
            assert all(p.exists() for p in left)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

            # Once they are older than any download can live, the next start removes them.
            then = time.time() - OLD
            for path in left:
                os.utime(path, (then, then))
            proc = start_receiver(sock.fileno(), env)
            eventually(lambda: _healthy(url), timeout=20)
            assert not any(p.exists() for p in left)
        finally:
            proc.kill()
            proc.wait()
            sock.close()
