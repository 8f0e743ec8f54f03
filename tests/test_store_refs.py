"""One reference, one task; URL metadata first: the store contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from receiver.payload import notice_from_payload
from receiver.store import Store, open_store
from receiver.store.base import ForeignReference, RecordOutcome, StoreMissing

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def record(
    store: Store,
    task_id: str,
    status: str = "Error",
    *,
    ref: str | None = None,
    metadata: dict[str, object] | None = None,
) -> RecordOutcome:
    notice = notice_from_payload({"id": task_id, "status": status})
    return await store.record(notice, deadline=None, handlers=["h"], ref=ref, metadata=metadata)


async def test_an_unknown_reference_authenticates_the_first_task_only(store: Store) -> None:
    assert await record(store, "t1", ref="never-submitted") is RecordOutcome.NEW
    for other in ("t2", "t3"):
        with pytest.raises(ForeignReference):
            await record(store, other, ref="never-submitted")
        assert await store.get_event(other) is None
    # The owner's own repeats are fine.
    assert await record(store, "t1", ref="never-submitted") is RecordOutcome.DUPLICATE


async def test_a_progress_notice_claims_the_reference_too(store: Store) -> None:
    assert await record(store, "t1", "Pending", ref="r") is RecordOutcome.PROGRESS
    with pytest.raises(ForeignReference):
        await record(store, "t2", "Ready", ref="r")
    assert await record(store, "t1", ref="r") is RecordOutcome.NEW


async def test_an_unbound_submission_is_claimed_by_its_first_task(store: Store) -> None:
    await store.prepare_submission("r", "flux-dev", {"chat": 1})
    assert await record(store, "early", ref="r") is RecordOutcome.NEW
    with pytest.raises(ForeignReference):
        await record(store, "late", ref="r")
    # The submit's answer comes after its webhook, with the same task id: nothing changes.
    await store.bind_submission("r", "early", None)
    assert await record(store, "early", ref="r") is RecordOutcome.DUPLICATE
    event = await store.get_event("early")
    assert event is not None
    assert event.metadata == {"chat": 1}


async def test_a_claim_on_one_replica_holds_on_another(store: Store, other: Store) -> None:
    async def attempt(target: Store, task_id: str) -> bool:
        try:
            await record(target, task_id, ref="contested")
        except ForeignReference:
            return False
        return True

    won = await asyncio.gather(*(attempt((store, other)[i % 2], f"t{i}") for i in range(8)))
    assert sum(won) == 1
    winner = f"t{won.index(True)}"
    assert [e.task_id for e in await store.list_events()] == [winner]


async def test_url_metadata_wins_and_fills_an_empty_one(store: Store) -> None:
    await store.prepare_submission("r", "flux-dev", {"from": "store"})
    await record(store, "t1", ref="r", metadata={"from": "url"})
    first = await store.get_event("t1")
    assert first is not None
    assert first.metadata == {"from": "url"}
    await store.bind_submission("r", "t1", None)  # copies only into an empty metadata
    again = await store.get_event("t1")
    assert again is not None
    assert again.metadata == {"from": "url"}
    # A task first seen without metadata (a poll, say) takes the URL's when its webhook comes.
    await record(store, "t2", "Pending")
    await record(store, "t2", ref="r2", metadata={"late": True})
    filled = await store.get_event("t2")
    assert filled is not None
    assert filled.metadata == {"late": True}
    # But never replaces metadata already there.
    await record(store, "t2", ref="r2", metadata={"late": False})
    kept = await store.get_event("t2")
    assert kept is not None
    assert kept.metadata == {"late": True}


async def test_opening_without_create_never_makes_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "receiver.db"
    store = open_store(f"sqlite:///{missing}", create=False)
    with pytest.raises(StoreMissing, match="no store at"):
        await store.open()
    await store.close()
    assert not missing.parent.exists()
    made = open_store(f"sqlite:///{missing}")
    await made.open()
    await made.close()
    existing = open_store(f"sqlite:///{missing}", create=False)
    await existing.open()
    assert await existing.get_event("x") is None
    await existing.close()
