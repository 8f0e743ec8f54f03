"""Tasks whose webhook never comes are polled and finished, through the real sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver import Settings
from receiver.verify import derive_secret
from sandbox import SandboxSettings, create_app
from tests.servers import serve
from tests.support import (
    SECRET,
    Receiver,
    Recorder,
    as_handler,
    delivery_server,
    eventually,
    read_store,
    running_receiver,
    settings_for,
)


@contextmanager
def sandbox() -> Iterator[str]:
    with serve(create_app(SandboxSettings(_env_file=None, task_seconds=0.2))) as url:  # type: ignore[call-arg]
        yield url


def submit(
    sandbox_url: str,
    receiver: Receiver,
    settings: Settings,
    fault: str | None,
    metadata: dict[str, Any],
    endpoint: str = "flux-dev",
) -> str:
    """What the submitter does: prepare, POST with a per-task secret, bind."""
    ref = f"ref-{len(metadata)}-{fault}"
    read_store(settings, lambda s: s.prepare_submission(ref, endpoint, metadata))
    headers = {"x-key": "sandbox"}
    if fault:
        headers["x-sandbox-fault"] = fault
    resp = httpx.post(
        f"{sandbox_url}/v1/{endpoint}",
        headers=headers,
        json={
            "prompt": "a lighthouse",
            "webhook_url": f"{receiver.url}/webhooks/bfl?ref={ref}",
            "webhook_secret": derive_secret(SECRET, ref),
        },
    )
    assert resp.status_code == 200, resp.text
    task = resp.json()
    read_store(settings, lambda s: s.bind_submission(ref, task["id"], task["polling_url"]))
    return str(task["id"])


def reconciling(tmp_path: Path, sandbox_url: str, **overrides: Any) -> Settings:
    host = sandbox_url.removeprefix("http://")
    values: dict[str, Any] = {
        "sample_hosts": (host,),
        "reconcile_after": 0.3,
        "bfl_api_key": "sandbox",
        "bfl_api_url": sandbox_url,
    }
    values.update(overrides)
    return settings_for(tmp_path, **values)


def test_dropped_webhook_is_finished_by_polling(tmp_path: Path) -> None:
    rec = Recorder()
    with sandbox() as api:
        settings = reconciling(tmp_path, api)
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            task_id = submit(api, r, settings, "drop-webhook", {"chat_id": 42})
            eventually(lambda: len(rec.events) == 1, timeout=20)
            event = rec.events[0]
            assert event.task_id == task_id
            assert event.status == "ready"
            assert event.metadata == {"chat_id": 42}
            assert event.image is not None
            assert rec.images[0] is not None
            assert rec.images[0][:3] == b"\xff\xd8\xff"
            assert r.metric("bfl_hooks_reconcile_polls_total", outcome="recovered") == 1


def test_webhook_after_polling_is_a_duplicate(tmp_path: Path) -> None:
    rec = Recorder()
    with sandbox() as api:
        settings = reconciling(tmp_path, api)
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            submit(api, r, settings, "delay-webhook=3", {"n": 1})
            eventually(lambda: len(rec.events) == 1, timeout=20)
            eventually(lambda: r.metric("bfl_hooks_webhook_duplicates_total") == 1, timeout=20)
            assert len(rec.events) == 1


def test_webhook_in_time_means_no_polling(tmp_path: Path) -> None:
    rec = Recorder()
    with sandbox() as api:
        settings = reconciling(tmp_path, api, reconcile_after=5.0)
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            submit(api, r, settings, None, {"user": "u1"})
            eventually(lambda: len(rec.events) == 1, timeout=20)
            assert rec.events[0].metadata == {"user": "u1"}
            assert r.metric("bfl_hooks_reconcile_polls_total", outcome="recovered") == 0


def test_failed_task_is_reconciled_and_dispatched_without_image(tmp_path: Path) -> None:
    rec = Recorder()
    with sandbox() as api:
        settings = reconciling(tmp_path, api)
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            submit(api, r, settings, "drop-webhook,content-moderated", {"k": "v"})
            eventually(lambda: len(rec.events) == 1, timeout=20)
            assert rec.events[0].status == "content_moderated"
            assert rec.events[0].image is None


def test_poll_errors_back_off_and_then_succeed(tmp_path: Path) -> None:
    rec = Recorder()
    with sandbox() as api:
        settings = reconciling(tmp_path, api)
        with running_receiver(settings, {"rec": as_handler(rec)}) as r:
            submit(api, r, settings, "drop-webhook,get-result-5xx=1", {"a": 1})
            eventually(lambda: len(rec.events) == 1, timeout=30)
            assert r.metric("bfl_hooks_reconcile_polls_total", outcome="error") >= 1


@pytest.mark.parametrize("key", [None, "sandbox"])
def test_polling_urls_off_the_api_hosts_never_get_the_key(tmp_path: Path, key: str | None) -> None:
    with delivery_server() as rogue:
        rogue.add("v1/get_result")
        settings = settings_for(tmp_path, reconcile_after=0.1, bfl_api_key=key)
        with running_receiver(settings) as r:
            read_store(settings, lambda s: s.prepare_submission("r1", "flux-dev", {}))
            read_store(
                settings,
                lambda s: s.bind_submission("r1", "t1", f"{rogue.url}/v1/get_result?id=t1"),
            )
            eventually(
                lambda: r.metric("bfl_hooks_reconcile_polls_total", outcome="not_pollable") >= 1
            )
        assert rogue.hits == []
