"""Podman for the image tests: the configuration scripts/podman.sh writes, the image it builds,
and a container of it run on the host's network with a listening socket handed in."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PODMAN_SH = REPO / "scripts" / "podman.sh"
#: The test image's tag: each build moves it, and the build cache makes a rebuild cheap.
TEST_TAG = "localhost/bfl-hooks:test"
#: The first descriptor podman's --preserve-fds hands to the container's process.
PASSED_FD = 3


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def podman_environment() -> dict[str, str]:
    """The environment that makes ``podman`` use scripts/podman.sh's configuration, after
    installing and configuring it; skips the test, saying why, when podman cannot run here."""
    if os.geteuid() != 0:
        pytest.skip("the image test runs podman rootful, and this is not root")
    setup = subprocess.run(
        [str(PODMAN_SH), "setup"], capture_output=True, text=True, timeout=900, check=False
    )
    if setup.returncode != 0:
        pytest.skip(
            f"podman cannot run on this machine (scripts/podman.sh):\n{_tail(setup.stderr)}"
        )
    exports = subprocess.run(
        [str(PODMAN_SH), "env"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    env = dict(os.environ)
    for line in exports.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    return env


def podman(
    env: Mapping[str, str], *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:2])} failed ({result.returncode}):\n{_tail(result.stderr)}"
        )
    return result


def build(env: Mapping[str, str], tag: str, *args: str, log: Path) -> tuple[int, str]:
    """``scripts/podman.sh build tag args...``: its exit code and its output (also in ``log``)."""
    with log.open("w") as out:
        result = subprocess.run(
            [str(PODMAN_SH), "build", tag, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
            check=False,
        )
    return result.returncode, log.read_text()


@dataclass
class Container:
    """A running container of the image, serving on ``url`` (the host's loopback)."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    env: Mapping[str, str]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        """The image's own HEALTHCHECK, run now (no systemd here to run it on a timer)."""
        return podman(self.env, "healthcheck", "run", self.name, check=False).returncode == 0

    def wait_healthy(self, timeout: float = 90.0) -> float:
        """Seconds until the health check passed; fails with the container's output if never."""
        start = time.monotonic()
        while not self.healthy():
            if self.process.poll() is not None:
                raise AssertionError(f"the container exited:\n{_tail(self.output())}")
            if time.monotonic() - start > timeout:
                raise AssertionError(f"not healthy within {timeout} s:\n{_tail(self.output())}")
            time.sleep(0.5)
        return time.monotonic() - start

    def stop(self, timeout: int = 30) -> int:
        """SIGTERM, as ``podman stop`` sends it; the container's exit code."""
        podman(self.env, "stop", "--time", str(timeout), self.name, timeout=timeout + 30)
        return self.process.wait(timeout=60)


@contextmanager
def running_container(
    env: Mapping[str, str],
    image: str,
    *,
    environment: Mapping[str, str],
    volumes: Sequence[str] = (),
    command: Sequence[str] = ("serve",),
    log: Path,
) -> Iterator[Container]:
    """``image`` run with the host's network, on a loopback socket the kernel picked, handed in
    as descriptor 3 (``serve --fd 3``): no fixed port, and nothing listens beyond loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    name = f"bfl-hooks-test-{uuid.uuid4().hex[:12]}"
    args = ["podman", "run", "--rm", "--name", name, "--network", "host"]
    # The timer that would run the health check needs systemd; the test runs it itself.
    args += ["--health-interval", "disable", "--preserve-fds", "1"]
    # RECEIVER_PORT: the health check reads it to find the server.
    for key, value in {**environment, "RECEIVER_PORT": str(port)}.items():
        args += ["--env", f"{key}={value}"]
    for volume in volumes:
        args += ["--volume", volume]
    args += [image, *command, "--fd", str(PASSED_FD)]
    fd = sock.fileno()
    # podman hands on descriptors 3.. by their number: bash moves the socket to 3 (dash takes
    # one-digit descriptors only).
    redirect = f'exec "$@" {PASSED_FD}<&{fd}' + (f" {fd}<&-" if fd != PASSED_FD else "")
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["/bin/bash", "-c", redirect, "bash", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
        )
    sock.close()
    container = Container(name, f"http://127.0.0.1:{port}", process, log, env)
    try:
        yield container
    finally:
        if process.poll() is None:
            podman(env, "rm", "--force", "--time", "5", name, check=False, timeout=60)
            process.wait(timeout=60)
