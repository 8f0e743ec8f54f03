"""A small disk that fills up, for faults tests: a tmpfs of a few megabytes (mounting one needs
root, as CI has; elsewhere the test is skipped, saying why)."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    try:
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        subprocess.run(mount, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}): the test needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros until the filesystem is full; returns the file to delete to free it."""
    filler = directory / "filler"
    # Unbuffered: a partial write fills the last pages, and close() has nothing left to flush.
    with filler.open("wb", buffering=0) as out:
        chunk = b"\0" * 65536
        with pytest.raises(OSError, match="No space") as raised:  # noqa: PT012 - until full
            while True:
                out.write(chunk)
        assert raised.value.errno == errno.ENOSPC
    return filler
