"""A storage that hangs or fails after the download never loses the image: the bytes are kept
and put again until the storage answers, long after the signed URL has expired.

The storage is a real S3 server (moto, a process of its own) stopped with SIGSTOP while the
receiver stores an image it has just downloaded; the sample URL lives 3 s, the fault lasts
longer. Before, the bytes were thrown away and the job downloaded again from a dead URL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver import jobrun
from receiver.store import JobState
from tests.s3 import MotoServer, bucket_env, client
from tests.support import (
    Recorder,
    as_handler,
    delivery_server,
    eventually,
    read_store,
    ready,
    running_receiver,
    settings_for,
)

pytestmark = pytest.mark.slow

URL_TTL = 3.0


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


def test_an_image_whose_storage_hangs_past_its_urls_life_is_still_stored(
    tmp_path: Path, moto: MotoServer
) -> None:
    rec = Recorder()
    with delivery_server() as delivery:
        url = delivery.add("kept.jpg")
        settings = settings_for(
            tmp_path,
            storage_url="s3://kept/images",
            sample_hosts=(delivery.host,),
            sample_ttl_seconds=URL_TTL,
        )
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            with moto.frozen():
                assert r.post(ready("kept", url)).status_code == 200
                eventually(lambda: delivery.hits == ["kept.jpg"], timeout=5)
                eventually(lambda: "cannot store images" in r.client.get("/readyz").text, 15)
                assert r.client.get("/readyz").status_code == 200  # a warning: still ready
                time.sleep(URL_TTL + 1)  # the signed URL is dead now: only the bytes are left
                assert rec.events == []
            eventually(lambda: len(rec.events) == 1, timeout=30)
            # Said as a warning (still ready: webhooks are recorded without storage), then gone.
            eventually(lambda: "cannot store images" not in r.client.get("/readyz").text, 10)
            assert r.client.get("/readyz").status_code == 200
            assert r.metric("bfl_hooks_storage_errors_total") >= 1
        event, data = rec.seen[0]
        assert event.image is not None
        assert data is not None
        assert len(data) == event.image.size
        assert delivery.hits == ["kept.jpg"]  # downloaded once: nothing fetched a dead URL
    assert len(objects(moto)) == 1
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
            eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 1, timeout=30)
    assert list((tmp_path / "staging").iterdir()) == []
    jobs = read_store(settings, lambda s: s.jobs_for("lost"))
    assert [j.state for j in jobs] == [JobState.DEAD]
    assert "downloaded, but the storage failed for 2 s" in str(jobs[0].last_error)
