"""One SQLite connection on one thread, with group commit.

Callers hand in functions of a connection; the thread runs every function that is waiting
in one transaction and commits once. If one of them fails, each is run again in a transaction
of its own, so one failure does not undo its neighbours. With ``synchronous=FULL`` a commit is
an fsync of the WAL, the expensive part: webhooks that arrive together share one, so
durability does not cost throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MAX_BATCH = 512


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class DatabaseFileGone(OSError):
    """The database file was deleted or replaced under the open connection.

    SQLite would go on writing into the unlinked file, and everything acknowledged from then
    on would vanish at the next restart; so every call fails instead, until an operator puts
    the file back or restarts the receiver on the new one.
    """


class SQLiteThread:
    """Runs functions of one ``sqlite3.Connection`` on a dedicated thread, batched per commit."""

    def __init__(self, path: str, *, synchronous: str = "FULL", create: bool = True) -> None:
        self._path = path
        self._synchronous = synchronous
        self._create = create
        self._queue: queue.SimpleQueue[_Call | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._identity: tuple[int, int] | None = None
        self.commits = 0
        """How many transactions were committed (a batch commits once): for the benchmarks."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="sqlite-store", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise self._open_error

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` inside the next committed batch and return its result."""
        if self._thread is None:
            raise RuntimeError("the SQLite store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Call(fn, future, loop))
        return await future

    def _connect(self) -> sqlite3.Connection:
        target, uri = self._path, False
        if not self._create and self._path != ":memory:":
            # mode=rw: open an existing file or fail, never create an empty one in its place.
            target, uri = Path(os.path.abspath(self._path)).as_uri() + "?mode=rw", True
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, uri=uri)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        if self._path != ":memory:":
            info = os.stat(self._path)
            self._identity = (info.st_dev, info.st_ino)
        return conn

    def _check_file(self) -> None:
        """One stat per batch (about a microsecond): is the file we write still the file?"""
        if self._identity is None:
            return
        try:
            info = os.stat(self._path)
        except FileNotFoundError:
            raise DatabaseFileGone(f"the database file {self._path} was deleted") from None
        if (info.st_dev, info.st_ino) != self._identity:
            raise DatabaseFileGone(f"the database file {self._path} was replaced")

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # reported to start(), which re-raises it
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = _STOP in batch
                calls = [c for c in batch if isinstance(c, _Call)]
                self._run_batch(conn, calls)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, calls: list[_Call]) -> None:
        try:
            results = self._transaction(conn, calls)
        except _StoreWide as wide:
            # The store itself refused (locked by another process, disk full, file gone):
            # every call would fail the same way, so fail them all now rather than make each
            # wait out its own busy timeout in turn.
            results = [(call, None, wide.error) for call in calls]
        except Exception:
            # One call failed: none of the batch is durable. Run each call in a transaction of
            # its own so one bad call does not fail its neighbours. Rare, so the common path
            # pays for no savepoints.
            results = []
            for call in calls:
                try:
                    results += self._transaction(conn, [call])
                except _StoreWide as wide:
                    results.append((call, None, wide.error))
                except Exception as exc:
                    results.append((call, None, exc))
        by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
        for result in results:
            by_loop.setdefault(result[0].loop, []).append(result)
        for loop, settled in by_loop.items():
            # One wake-up per event loop and batch, not one per call.
            # RuntimeError: that loop has closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, settled)

    def _transaction(self, conn: sqlite3.Connection, calls: list[_Call]) -> list[_Result]:
        try:
            self._check_file()
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            raise _StoreWide(exc) from exc
        try:
            results: list[_Result] = [(call, call.fn(conn), None) for call in calls]
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _StoreWide(exc) from exc
        self.commits += 1
        return results


class _StoreWide(Exception):
    """A failure of the transaction itself (BEGIN or COMMIT), not of one call in it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


_Result = tuple[_Call, Any, BaseException | None]


def _settle(results: list[_Result]) -> None:
    for call, value, error in results:
        if call.future.cancelled():
            continue
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(value)
