"""A throwaway PostgreSQL cluster on loopback, for tests and benchmarks.

``initdb`` into a fresh temporary directory, ``postgres`` listening on 127.0.0.1 at a free port
with its unix socket in that directory, stopped and deleted at the end. initdb refuses to run as
root, so as root (CI) both run as the ``postgres`` system user the Debian package creates.

``python -m tests.pg`` keeps one up by hand and prints its URL (for benchmarks, or psql).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SERVER_USER = "postgres"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` live: ``$PG_BINDIR``, Debian's newest, or ``$PATH``."""
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    # Debian keeps server binaries off $PATH, one directory per major version.
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian, key=lambda p: _version(p.parent.name), reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "postgres", "pg_isready")):
            return bindir
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the postmaster's backends and helpers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name, in parentheses, may hold spaces: the fields after it are fixed.
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            if ppid == pid:
                found.append(int(stat.parent.name))
    return found


def free_port() -> int:
    """A loopback port nobody listens on right now (postgres cannot take a bound socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """One ``postgres`` server process over a temporary data directory."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {}

    @property
    def url(self) -> str:
        """The maintenance database, as the superuser (trust authentication, loopback only)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        root = os.geteuid() == 0
        # As root, $TMPDIR may sit in a directory the postgres user cannot enter: use /tmp.
        self.root = Path(tempfile.mkdtemp(prefix="bfl-pg-", dir="/tmp" if root else None))
        if root:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        try:
            self._run(
                "initdb",
                *("-D", str(self.root / "data"), "-U", SERVER_USER, "-A", "trust"),
                *("-E", "UTF8", "--locale=C"),
                # Syncing a throwaway template is wasted time; the server itself runs fsync=on.
                "--no-sync",
            )
            # The port is free when chosen but may be taken before postgres binds it: retry.
            for _ in range(3):
                if self._launch(free_port()):
                    return
            raise RuntimeError(f"postgres did not start; see {self.root / 'postgres.log'}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, port: int) -> bool:
        assert self.root is not None
        self.port = port
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.root),
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
        }
        log = (self.root / "postgres.log").open("ab")
        with log:
            self._proc = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    *("-D", str(self.root / "data")),
                    *(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **self._as_user,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                check=False,
                timeout=10,
            )
            if ready.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def restart(self) -> None:
        """What ``pg_ctl restart -m fast`` does: fast shutdown (every session is cut off),
        then start again on the same port and data directory."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(STOP_TIMEOUT)
        self._proc = None
        if not self._launch(self.port):
            raise RuntimeError("postgres did not come back after the restart")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """A hung server, as a stalled disk or a paused VM leaves it: every process of the
        cluster is sent SIGSTOP (connections stay open, nothing answers), then SIGCONT."""
        assert self._proc is not None
        pids = [self._proc.pid, *_children(self._proc.pid)]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.sql(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def sql(self, statement: str) -> str:
        """Run one statement with psql against the maintenance database; its output."""
        psql = [str(self.bindir / "psql"), "-XqAt", "-v", "ON_ERROR_STOP=1", "-d", self.url]
        proc = subprocess.run(
            [*psql, "-c", statement],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.stdout

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint), then delete everything."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _run(self, program: str, *args: str) -> None:
        proc = subprocess.run(
            [str(self.bindir / program), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            **self._as_user,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{program} failed ({proc.returncode}): {proc.stderr.strip()}")


def main() -> None:
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found: run scripts/pg.sh first")
    # SIGTERM too should stop the server and delete its files, not orphan them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cluster = PostgresCluster(bindir)
    cluster.start()
    print(cluster.url, flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
