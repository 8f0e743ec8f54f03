"""Fixtures for real services the suite starts itself: PostgreSQL, S3, and store URLs."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from receiver.envfile import find_env_file
from receiver.store import Store, opened_store
from tests.pg import PostgresCluster, find_bindir
from tests.s3 import MotoServer

_databases = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def _no_env_file_above_the_tests(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests run in folders under the base temp dir; settings look for .env upward from there,
    so one above it would be read by every test. Refuse to run rather than read it."""
    found = find_env_file(tmp_path_factory.getbasetemp())
    if found is not None:
        pytest.exit(f"{found} would be read by every test: move it, or pass --basetemp", 2)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster on 127.0.0.1, for the whole session."""
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries not found: run scripts/pg.sh (make test does)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must test PostgreSQL, not skip it")
        pytest.skip(reason)
    cluster = PostgresCluster(bindir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database for one test (creating one takes a few tens of ms)."""
    return postgres_cluster.create_database(f"test_{os.getpid()}_{next(_databases)}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``RECEIVER_DATABASE_URL`` for an empty store, once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'receiver.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open store on an empty database (async: request it from an anyio test)."""
    async with opened_store(store_url) as opened:
        yield opened


@pytest.fixture
async def other(store_url: str) -> AsyncIterator[Store]:
    """A second open store on the same database, as another replica would have."""
    async with opened_store(store_url) as opened:
        yield opened


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of an S3-compatible server (moto) on 127.0.0.1, for the whole session."""
    server = MotoServer().start()
    try:
        yield server.url
    finally:
        server.stop()
