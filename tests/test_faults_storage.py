"""A storage that hangs or fails never loses an image it could keep.

- S3 hangs after the download (a real S3 server, moto, stopped with SIGSTOP): the bytes are
  kept and put again until it answers, long after the 5 s sample URL has expired. Before, they
  were thrown away and the job downloaded again from a dead URL.
- The image disk is full before the download (a small tmpfs): the download is tried again,
  with /readyz saying why, and succeeds once space is freed, within the URL's life.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver import jobrun
from receiver.store import JobState
from tests.disk import fill, small_tmpfs
from tests.s3 import MotoServer, bucket_env, client
from tests.support import (
    Recorder,
    Sample,
    as_handler,
    delivery_server,
    eventually,
    jpeg_bytes,
    read_store,
    ready,
    running_receiver,
    settings_for,
)

pytestmark = pytest.mark.slow

URL_TTL = 5.0


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MotoServer]:
    """A server of its own (the session's must keep answering), the receiver's S3 settings
    pointing at it, with a short request timeout so a hung server fails each try quickly."""
    server = MotoServer().start()
    try:
        for name, value in bucket_env(server.url, "kept").items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("RECEIVER_S3_TIMEOUT_SECONDS", "0.5")
        monkeypatch.setenv("RECEIVER_S3_STAGING_DIR", str(tmp_path / "staging"))
        yield server
    finally:
        server.stop()


def objects(server: MotoServer) -> list[str]:
    s3 = client(server.url)
    try:
        return [o["Key"] for o in s3.list_objects_v2(Bucket="kept").get("Contents", [])]
    finally:
        s3.close()


def test_images_whose_storage_hangs_past_their_urls_life_are_still_stored(
    tmp_path: Path, moto: MotoServer
) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        first, second = delivery.add("kept.jpg"), delivery.add("next.jpg", Sample(jpeg_bytes(48)))
        settings = settings_for(
            tmp_path,
            storage_url="s3://kept/images",
            sample_hosts=(delivery.host,),
            sample_ttl_seconds=URL_TTL,
            download_workers=1,
        )
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            with moto.frozen():
                assert r.post(ready("kept", first)).status_code == 200
                # boto3 tries each request 5 times with jittered backoff: up to ~20 s.
                eventually(lambda: "cannot store images" in r.client.get("/readyz").text, 45)
                assert r.client.get("/readyz").status_code == 200  # a warning: still ready
                # The one download slot is not held by the image waiting for S3: the next URL
                # is fetched too, before it expires.
                assert r.post(ready("next", second)).status_code == 200
                eventually(lambda: sorted(delivery.hits) == ["kept.jpg", "next.jpg"], 5)
                time.sleep(URL_TTL + 1)  # the signed URLs are dead now: only the bytes are left
                assert rec.events == []
            eventually(lambda: len(rec.events) == 2, timeout=60)
            # Said as a warning (still ready: webhooks are recorded without storage), then gone.
            eventually(lambda: "cannot store images" not in r.client.get("/readyz").text, 10)
            assert r.client.get("/readyz").status_code == 200
            assert r.metric("bfl_hooks_storage_errors_total") >= 1
        for event, data in rec.seen:
            assert event.image is not None
            assert data is not None
            assert len(data) == event.image.size
        assert sorted(delivery.hits) == ["kept.jpg", "next.jpg"]  # once each: no dead URL
    assert len(objects(moto)) == 2
    assert list((tmp_path / "staging").iterdir()) == []  # and its staged copy is gone


def test_a_storage_that_never_comes_back_ends_the_job_dead_saying_so(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobrun, "STORE_RETRY_SECONDS", 2.0)  # the real bound is half an hour
    with delivery_server() as delivery:
        url = delivery.add("lost.jpg")
        settings = settings_for(
            tmp_path, storage_url="s3://kept/images", sample_hosts=(delivery.host,)
        )
        with running_receiver(settings) as r, moto.frozen():
            r.post(ready("lost", url))
            eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 1, timeout=60)
    assert list((tmp_path / "staging").iterdir()) == []
    jobs = read_store(settings, lambda s: s.jobs_for("lost"))
    assert [j.state for j in jobs] == [JobState.DEAD]
    assert "downloaded, but the storage failed for 2 s" in str(jobs[0].last_error)


def test_a_full_image_disk_is_waited_out_while_the_url_lives(tmp_path: Path) -> None:
    rec = Recorder()
    with small_tmpfs(tmp_path / "disk", "4m") as disk, delivery_server() as delivery:
        url = delivery.add("later.jpg")
        settings = settings_for(
            tmp_path,
            storage_url=f"file://{disk}/samples",
            sample_hosts=(delivery.host,),
            sample_ttl_seconds=60,
        )
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            filler = fill(disk)
            assert r.post(ready("later", url)).status_code == 200  # the store is elsewhere
            eventually(lambda: "cannot stage downloads" in r.client.get("/readyz").text, 15)
            assert "No space left on device" in r.client.get("/readyz").text
            assert rec.events == []
            filler.unlink()
            eventually(lambda: len(rec.events) == 1, timeout=30)
            assert "cannot stage downloads" not in r.client.get("/readyz").text
        assert rec.seen[0][1] is not None  # the handler read the stored image
