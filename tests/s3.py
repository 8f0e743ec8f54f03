"""A real S3-compatible server on loopback for tests: ``moto_server`` as a subprocess.

It binds port 0 and prints the port the kernel chose, which is read from its log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

START_TIMEOUT = 30.0

#: moto accepts any credentials; these only have to be the same everywhere.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1, stopped with ``stop()``."""

    def __init__(self) -> None:
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        fd, name = tempfile.mkstemp(prefix="bfl-moto-", suffix=".log")
        os.close(fd)
        self._log = Path(name)

    def start(self) -> MotoServer:
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(rb"Running on (http://127\.0\.0\.1:\d+)", self._log.read_bytes())
            if found:
                self.url = found.group(1).decode()
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        output = self._log.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"moto_server did not start:\n{output}")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server hung (SIGSTOP): connections are accepted, nothing answers; then SIGCONT."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._log.unlink(missing_ok=True)


def client(endpoint: str) -> S3Client:
    """A plain boto3 client for the test server, to look behind the storage's back."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def bucket_env(endpoint: str, bucket: str) -> dict[str, str]:
    """Create ``bucket`` on the test server; the ``RECEIVER_S3_*`` variables a receiver process
    needs to use it (with ``RECEIVER_STORAGE_URL=s3://bucket/...``)."""
    s3 = client(endpoint)
    try:
        s3.create_bucket(Bucket=bucket)
    finally:
        s3.close()
    return {
        "RECEIVER_S3_ENDPOINT_URL": endpoint,
        "RECEIVER_S3_REGION": REGION,
        "RECEIVER_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "RECEIVER_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "RECEIVER_S3_ADDRESSING_STYLE": "path",
    }
