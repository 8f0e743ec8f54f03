"""``POST /drain?budget=SECONDS`` on a real receiver that runs no worker of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import (
    Recorder,
    as_handler,
    delivery_server,
    ready,
    running_receiver,
    settings_for,
)

TOKEN = "admin-token-0123456789"
BEARER = {"authorization": f"Bearer {TOKEN}"}


def test_drain_runs_what_was_recorded_and_answers_its_summary(tmp_path: Path) -> None:
    recorder = Recorder()
    with delivery_server() as delivery:
        settings = settings_for(
            tmp_path, run_worker=False, admin_token=TOKEN, sample_hosts=(delivery.host,)
        )
        with running_receiver(settings, {"mine": as_handler(recorder)}) as r:
            assert r.post(ready("t1", delivery.add("1.jpg"))).status_code == 200
            assert r.post({"id": "t2", "status": "Error", "error": "x"}).status_code == 200
            assert recorder.events == []  # no worker here: nothing runs until a drain
            resp = r.client.post("/drain", params={"budget": "20"}, headers=BEARER)
            assert resp.status_code == 200, resp.text
            summary = resp.json()
            # t1's download and handler, t2's handler.
            assert (summary["done"], summary["queued"], summary["finished"]) == (3, 0, True)
            assert sorted(recorder.task_ids()) == ["t1", "t2"]
            assert recorder.images[recorder.task_ids().index("t1")] is not None
            again = r.client.post("/drain?budget=5", headers=BEARER)
            assert again.status_code == 200
            assert again.json()["done"] == 0


def test_drain_is_not_there_without_an_admin_token(tmp_path: Path) -> None:
    with running_receiver(settings_for(tmp_path)) as r:
        assert r.client.post("/drain?budget=5", headers=BEARER).status_code == 404
        assert r.client.post("/drain?budget=5").status_code == 404


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"]
)
def test_drain_refuses_a_wrong_token(tmp_path: Path, authorization: str | None) -> None:
    recorder = Recorder()
    settings = settings_for(tmp_path, run_worker=False, admin_token=TOKEN)
    with running_receiver(settings, {"mine": as_handler(recorder)}) as r:
        assert r.post({"id": "t1", "status": "Error"}).status_code == 200
        headers = {"authorization": authorization} if authorization is not None else {}
        resp = r.client.post("/drain?budget=5", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in resp.text
        assert recorder.events == []  # nothing ran


@pytest.mark.parametrize("budget", [None, "", "0", "-3", "soon", "nan", "inf", "1e9"])
def test_drain_refuses_a_bad_budget(tmp_path: Path, budget: str | None) -> None:
    settings = settings_for(tmp_path, run_worker=False, admin_token=TOKEN)
    with running_receiver(settings) as r:
        params = {"budget": budget} if budget is not None else {}
        resp = r.client.post("/drain", params=params, headers=BEARER)
        assert resp.status_code == 400
        assert "budget" in resp.json()["error"]
