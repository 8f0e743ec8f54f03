"""What the submitter records, and how it counts, is the same on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import submitter
from receiver.store import Store
from tests.submitter.conftest import sandbox

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_submissions_are_recorded_and_counted_on_both_engines(
    store_url: str, store: Store, tmp_path: Path
) -> None:
    # ``store``: the receiver's store exists before the submitter records into it.
    with sandbox(credits=3) as api:  # one flux-dev (2.5 credits), then 402
        values: dict[str, Any] = {
            "api_key": "k",
            "api_url": api,
            "public_url": "http://127.0.0.1:9",  # nobody listens: no webhook will land
            "webhook_secret": "s",
            "database_url": store_url,
            "data_dir": tmp_path,
        }
        settings = submitter.Settings(_env_file=None, **values)  # type: ignore[call-arg]
        async with submitter.BFL(settings=settings) as bfl:
            assert bfl.store is not None
            store = bfl.store
            task = await bfl.generate("flux-dev", "recorded", metadata={"chat": 7})
            recorded = await store.get_submission(task_id=task.id)
            assert recorded is not None
            assert (recorded.ref, recorded.endpoint) == (task.ref, "flux-dev")
            assert recorded.metadata == {"chat": 7}
            assert recorded.polling_url == task.polling_url
            assert await store.active_submissions(within=3600) == 1
            with pytest.raises(submitter.OutOfCredits):
                await bfl.generate("flux-dev", "refused", metadata={"chat": 8})
            # The refused one was forgotten: it holds no slot.
            assert await store.active_submissions(within=3600) == 1
