"""What the whole-image check costs a download: ``check_image`` on a ~1 MB JPEG, and a full
``fetch_sample`` of it from a loopback server with and without the check.

    .venv/bin/python bench/decode.py [--runs 50]

The check decodes every pixel (in a worker thread, off the event loop) to prove the body is
whole; this prints its median cost beside the median of the rest of the download.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver import download
from receiver.download import check_image, fetch_sample
from tests.support import Sample, delivery_server


def one_megabyte_jpeg() -> bytes:
    """A 1400x1400 JPEG with detail everywhere (noise), about 1 MB at quality 85."""
    out = io.BytesIO()
    Image.effect_noise((1400, 1400), 40).convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def fetch_times(url: str, host: str, staging: Path, runs: int) -> list[float]:
    times = []
    async with httpx.AsyncClient() as client:
        for _ in range(runs):
            started = time.perf_counter()
            got = await fetch_sample(
                client,
                url,
                allowed_hosts=[host],
                max_bytes=64 * 1024 * 1024,
                staging_dir=staging,
                deadline=time.time() + 600,
            )
            times.append(time.perf_counter() - started)
            got.path.unlink()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    body = one_megabyte_jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        path = staging / "one.jpg"
        path.write_bytes(body)
        check = []
        for _ in range(args.runs):
            started = time.perf_counter()
            check_image(path, "image/jpeg")
            check.append(time.perf_counter() - started)
        with delivery_server() as delivery:
            url = delivery.add("one.jpg", Sample(body=body))
            with_check = asyncio.run(fetch_times(url, delivery.host, staging, args.runs))
            real = download.check_image
            download.check_image = lambda *_: None
            try:
                without = asyncio.run(fetch_times(url, delivery.host, staging, args.runs))
            finally:
                download.check_image = real
    print(f"JPEG {len(body):,} bytes, 1400x1400, {args.runs} runs, medians:")
    print(f"  check_image (decode, in the calling thread) {median_ms(check):7.1f} ms")
    print(f"  fetch_sample from loopback, with the check  {median_ms(with_check):7.1f} ms")
    print(f"  fetch_sample from loopback, without it      {median_ms(without):7.1f} ms")


if __name__ == "__main__":
    main()
