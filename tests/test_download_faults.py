"""Delivery hosts that misbehave: a trickled body, a body cut short, a decompression bomb.

Each is a real server on loopback (a raw socket where no framework would misbehave); nothing a
bad download leaves may be stored or handed on.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from receiver.download import Downloaded, DownloadError, check_image, fetch_sample
from receiver.store import Job, JobKind, JobState
from tests.raw_http import cut_short, raw_server, trickle
from tests.support import (
    Recorder,
    Sample,
    as_handler,
    delivery_server,
    eventually,
    read_store,
    ready,
    running_receiver,
    settings_for,
)


def photo_jpeg(side: int = 64) -> bytes:
    """A JPEG with detail in it (a flat colour would decode from a fraction of its bytes)."""
    out = io.BytesIO()
    Image.effect_noise((side, side), 60).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def png_bomb(width: int, height: int, compressed_bytes: int = 15_000) -> bytes:
    """A valid PNG head claiming ``width`` x ``height`` 1-bit pixels, with about
    ``compressed_bytes`` of zlib data: tiny on the wire, gigabytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    packer = zlib.compressobj(9)
    idat = packer.compress(b"\0" * (compressed_bytes * 1000)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def fetch(url: str, staging: Path, *, deadline_in: float = 600.0, **options: float) -> Downloaded:
    """``fetch_sample`` over a real client, allowing the loopback servers' host."""
    host = url.split("/")[2]

    async def run() -> Downloaded:
        async with httpx.AsyncClient() as client:
            return await fetch_sample(
                client,
                url,
                allowed_hosts=[host],
                max_bytes=64 * 1024 * 1024,
                staging_dir=staging,
                deadline=time.time() + deadline_in,
                **options,  # type: ignore[arg-type]
            )

    return asyncio.run(run())


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


def test_a_trickled_body_is_cut_at_the_urls_deadline(staging: Path) -> None:
    body = photo_jpeg()  # a few KB at 25 bytes/s: minutes, against a URL dying in 2 s
    with raw_server(trickle(body, step=5, every=0.2)) as server:
        started = time.monotonic()
        with pytest.raises(DownloadError) as caught:
            fetch(f"{server.url}/x.jpg", staging, deadline_in=2.0)
        took = time.monotonic() - started
    assert "deadline" in caught.value.reason
    assert "expire" in caught.value.reason
    assert not caught.value.transient  # the URL is dead: trying again cannot help
    assert 1.5 <= took < 6.0  # about the deadline, generous for a loaded machine
    assert list(staging.iterdir()) == []  # the partial file went with the attempt


def test_a_trickled_body_is_cut_at_the_attempt_cap(staging: Path) -> None:
    with raw_server(trickle(photo_jpeg(), step=5, every=0.2)) as server:
        started = time.monotonic()
        with pytest.raises(DownloadError) as caught:
            fetch(f"{server.url}/x.jpg", staging, deadline_in=600.0, attempt_timeout=1.5)
        took = time.monotonic() - started
    assert "cap on one download attempt" in caught.value.reason
    assert caught.value.transient  # the URL lives on: another attempt may be faster
    assert 1.0 <= took < 5.5
    assert list(staging.iterdir()) == []


def test_a_close_delimited_body_cut_short_is_not_stored(staging: Path) -> None:
    body = photo_jpeg()
    answer = cut_short(body, len(body) // 2, declare_length=False)
    with raw_server(answer) as server, pytest.raises(DownloadError) as caught:
        fetch(f"{server.url}/x.jpg", staging)
    assert "not a whole image/jpeg image" in caught.value.reason
    assert "truncated" in caught.value.reason
    assert caught.value.transient
    assert list(staging.iterdir()) == []


def test_a_whole_close_delimited_body_is_stored(staging: Path) -> None:
    body = photo_jpeg()
    with raw_server(cut_short(body, len(body), declare_length=False)) as server:
        got = fetch(f"{server.url}/x.jpg", staging)
    assert got.path.read_bytes() == body
    assert got.size == len(body)


def test_a_body_shorter_than_its_content_length_is_an_error(staging: Path) -> None:
    body = photo_jpeg()
    answer = cut_short(body, len(body) // 2, declare_length=True)
    with raw_server(answer) as server, pytest.raises(DownloadError) as caught:
        fetch(f"{server.url}/x.jpg", staging)
    assert caught.value.reason == "transport error: RemoteProtocolError"
    assert caught.value.transient
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize(
    ("width", "height", "why"),
    [
        (60000, 60000, "decompression bomb"),  # past Pillow's own hard limit
        (8000, 8000, "over the 50000000 pixel limit"),  # past ours, under Pillow's
    ],
)
def test_a_png_bomb_is_refused(staging: Path, width: int, height: int, why: str) -> None:
    bomb = png_bomb(width, height)
    assert len(bomb) < 20_000
    with delivery_server() as delivery:
        url = delivery.add("bomb.png", Sample(body=bomb, content_type="image/png"))
        with pytest.raises(DownloadError) as caught:
            fetch(url, staging)
    assert why in caught.value.reason
    assert not caught.value.transient
    assert list(staging.iterdir()) == []


def test_the_pixel_limit_is_a_parameter(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (100, 100)).save(path, "PNG")
    check_image(path, "image/png", max_pixels=10_000)
    with pytest.raises(DownloadError, match="100x100, over the 9999 pixel limit"):
        check_image(path, "image/png", max_pixels=9_999)


def test_a_bomb_through_the_receiver_is_buried_not_stored(tmp_path: Path) -> None:
    recorder = Recorder()
    bomb = png_bomb(60000, 60000)
    with delivery_server() as delivery:
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        url = delivery.add("bomb.png", Sample(body=bomb, content_type="image/png"))
        with running_receiver(settings, {"rec": as_handler(recorder)}) as receiver:
            assert receiver.post(ready("bomb", url)).status_code == 200

            def download_job() -> Job:
                jobs = read_store(settings, lambda s: s.jobs_for("bomb"))
                job: Job = next(j for j in jobs if j.kind is JobKind.DOWNLOAD)
                return job

            eventually(lambda: download_job().state is JobState.DEAD)
            assert "decompression bomb" in (download_job().last_error or "")
    assert recorder.seen == []
    samples = tmp_path / "samples"
    assert [p for p in samples.rglob("*") if p.is_file()] == []


def test_an_invalid_url_is_a_clear_error(staging: Path) -> None:
    with delivery_server() as delivery:
        url = delivery.add("x.jpg") + "\x00?sig=SECRET"  # urlsplit takes it, httpx does not
        with pytest.raises(DownloadError) as caught:
            fetch(url, staging)
    assert caught.value.reason == "not a valid URL (the sample's or a redirect's)"
    assert not caught.value.transient
    assert delivery.hits == []
