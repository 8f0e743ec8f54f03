"""The open-file limit: raised at start, and the connection bound fitted inside it."""

from __future__ import annotations

import resource
import subprocess
import sys

from receiver.rlimit import RESERVED_FDS, connection_budget


def test_the_bound_is_kept_when_it_fits_and_lowered_when_it_does_not() -> None:
    assert connection_budget(2048, 20_000) == 2048
    assert connection_budget(2048, 1024) == 1024 - RESERVED_FDS
    assert connection_budget(2048, 100) == 16  # never zero: the receiver must still answer


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = (
        "import resource; from receiver.rlimit import raise_open_files_limit; "
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )

    def soft_64() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    out = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=soft_64,  # one system call: safe between fork and exec
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(hard), str(hard)]
