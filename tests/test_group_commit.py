"""Webhooks that arrive together share one durable commit (SQLite group commit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from receiver.payload import notice_from_payload
from receiver.store.base import RecordOutcome
from receiver.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_concurrent_records_share_commits(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/r.db")
    await store.open()
    try:
        before = store.commits
        notices = [notice_from_payload({"id": f"t{i}", "status": "Error"}) for i in range(200)]
        outcomes = await asyncio.gather(
            *(store.record(n, deadline=None, handlers=["h"]) for n in notices)
        )
        assert outcomes == [RecordOutcome.NEW] * 200
        commits = store.commits - before
        assert 1 <= commits < 50, commits  # far fewer fsyncs than webhooks
        assert len(await store.list_events(limit=1000)) == 200
    finally:
        await store.close()


async def test_one_failing_call_does_not_undo_its_batch(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/r.db")
    await store.open()
    try:
        await store.prepare_submission("dup", "flux-dev", {})
        good = [notice_from_payload({"id": f"g{i}", "status": "Error"}) for i in range(20)]
        results = await asyncio.gather(
            store.prepare_submission("dup", "flux-dev", {}),  # violates the primary key
            *(store.record(n, deadline=None, handlers=[]) for n in good),
            return_exceptions=True,
        )
        assert isinstance(results[0], Exception)
        assert results[1:] == [RecordOutcome.NEW] * 20
        assert len(await store.list_events(limit=100)) == 20
    finally:
        await store.close()
