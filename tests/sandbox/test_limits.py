"""BFL's limits: 24 active tasks per key (6 for flux-kontext-max) → 429; credits → 402."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.sandbox.conftest import KEY, StartSandbox

OTHER_KEY = {"x-key": "another-key"}


def post(client: httpx.Client, base: str, endpoint: str, key: dict[str, str] = KEY) -> int:
    body = {"prompt": "limits"}
    return client.post(f"{base}/v1/{endpoint}", json=body, headers=key).status_code


def test_the_25th_active_task_is_429_until_one_finishes(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    base = start_sandbox(task_seconds=3.0)
    started = time.monotonic()
    assert [post(client, base, "flux-dev") for _ in range(24)] == [200] * 24
    response = client.post(f"{base}/v1/flux-2-pro", json={"prompt": "x"}, headers=KEY)
    assert response.status_code == 429
    assert "active tasks" in response.json()["detail"]
    assert post(client, base, "flux-dev", OTHER_KEY) == 200  # the limit is per key
    assert time.monotonic() - started < 2.8  # all of this happened while they were active
    time.sleep(max(0.0, 3.1 - (time.monotonic() - started)))
    assert post(client, base, "flux-dev") == 200


def test_the_7th_active_kontext_max_task_is_429(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    base = start_sandbox(task_seconds=30)
    assert [post(client, base, "flux-kontext-max") for _ in range(6)] == [200] * 6
    assert post(client, base, "flux-kontext-max") == 429
    assert post(client, base, "flux-kontext-pro") == 200  # others still have room
    assert post(client, base, "flux-kontext-max", OTHER_KEY) == 200


def test_limits_are_configurable(start_sandbox: StartSandbox, client: httpx.Client) -> None:
    base = start_sandbox(task_seconds=30, max_active_tasks=2)
    assert [post(client, base, "flux-dev") for _ in range(3)] == [200, 200, 429]


def test_credits_are_charged_per_request_and_402_when_short(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    base = start_sandbox(credits=10)
    assert client.get(f"{base}/v1/credits", headers=KEY).json() == {"credits": 10}
    submitted = client.post(f"{base}/v1/flux-pro-1.1", json={}, headers=KEY).json()
    assert submitted["cost"] == 4
    assert post(client, base, "flux-pro-1.1") == 200
    assert client.get(f"{base}/v1/credits", headers=KEY).json() == {"credits": 2}
    short = client.post(f"{base}/v1/flux-dev", json={}, headers=KEY)  # 2.5 credits
    assert short.status_code == 402
    assert "credits" in short.json()["detail"]
    assert post(client, base, "flux-2-klein-4b") == 200  # 1.4: still affordable
    assert client.get(f"{base}/v1/credits", headers=KEY).json() == {"credits": pytest.approx(0.6)}
    assert client.get(f"{base}/v1/credits", headers=OTHER_KEY).json() == {"credits": 10}
