"""Delivery URLs: signed, served by the sandbox, 403 after expiry; get_result and outcome faults."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.sandbox.conftest import KEY, StartSandbox
from tests.sandbox.test_api import download, generate, ready


def sample_url(client: httpx.Client, base: str, **body: Any) -> str:
    result = generate(client, base, "flux-dev", prompt="delivery", **body)
    url: str = result["result"]["sample"]
    return url


def test_sample_url_is_on_the_sandbox_host_with_azure_style_parameters(
    sandbox: str, client: httpx.Client
) -> None:
    url = urlsplit(sample_url(client, sandbox))
    assert f"{url.scheme}://{url.netloc}" == sandbox
    params = parse_qs(url.query)
    assert set(params) == {"se", "sp", "sv", "sr", "rsct", "sig"}
    assert params["sp"] == ["r"]
    assert params["sr"] == ["b"]
    assert params["rsct"] == ["image/jpeg"]
    assert "rsct=image/jpeg" in url.query
    expiry = datetime.strptime(params["se"][0], "%Y-%m-%dT%H:%M:%SZ")
    assert 590 < expiry.timestamp() - time.mktime(time.gmtime()) <= 602  # 10 minutes


def test_sample_is_403_after_its_lifetime(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    base = start_sandbox(delivery_ttl_seconds=0.5)
    url = sample_url(client, base)
    assert client.get(url).status_code == 200
    se = parse_qs(urlsplit(url).query)["se"][0]
    expiry = datetime.strptime(se + "+0000", "%Y-%m-%dT%H:%M:%SZ%z").timestamp()
    time.sleep(max(0.0, expiry - time.time()) + 0.05)
    expired = client.get(url)
    assert expired.status_code == 403
    assert "expiry" in expired.text


@pytest.mark.parametrize(
    "tamper",
    [
        # Another first character, whatever it was ("A" + sig[1:] changed nothing 1 time in 64).
        lambda q: {**q, "sig": ("B" if q["sig"][0] == "A" else "A") + q["sig"][1:]},
        lambda q: {**q, "se": "2099-01-01T00:00:00Z"},
        lambda q: {**q, "rsct": "text/html"},
        lambda q: {k: v for k, v in q.items() if k != "sig"},
    ],
)
def test_tampered_sample_url_is_403(sandbox: str, client: httpx.Client, tamper: Any) -> None:
    url = urlsplit(sample_url(client, sandbox))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    forged = f"{sandbox}{url.path}?{urlencode(tamper(query))}"
    assert client.get(forged).status_code == 403


def test_signature_of_one_task_does_not_open_another(sandbox: str, client: httpx.Client) -> None:
    first, second = urlsplit(sample_url(client, sandbox)), urlsplit(sample_url(client, sandbox))
    assert client.get(f"{sandbox}{second.path}?{first.query}").status_code == 403


def test_slow_delivery_waits_before_answering(sandbox: str, client: httpx.Client) -> None:
    result = generate(client, sandbox, "flux-dev", prompt="[sandbox:slow-delivery=0.7]")
    started = time.monotonic()
    assert download(client, result).status_code == 200
    assert time.monotonic() - started >= 0.7


def test_failing_delivery_answers_503_then_the_image(sandbox: str, client: httpx.Client) -> None:
    result = generate(client, sandbox, "flux-dev", prompt="[sandbox:failing-delivery=2]")
    url = result["result"]["sample"]
    assert [client.get(url).status_code for _ in range(3)] == [503, 503, 200]


def test_get_result_5xx_then_the_result(sandbox: str, client: httpx.Client) -> None:
    submitted = client.post(
        f"{sandbox}/v1/flux-dev",
        json={"prompt": "flaky"},
        headers={**KEY, "X-Sandbox-Fault": "get-result-5xx"},  # default: fault_failures = 2
    ).json()
    time.sleep(0.15)
    codes = [client.get(submitted["polling_url"]).status_code for _ in range(3)]
    assert codes == [503, 503, 200]


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("request-moderated", "Request Moderated"),
        ("content-moderated", "Content Moderated"),
        ("error", "Error"),
    ],
)
def test_outcome_faults_end_the_task_without_an_image(
    sandbox: str, client: httpx.Client, fault: str, status: str
) -> None:
    submitted = client.post(
        f"{sandbox}/v1/flux-pro-1.1", json={"prompt": f"[sandbox:{fault}]"}, headers=KEY
    ).json()
    result = ready(client, submitted["polling_url"])
    assert result["status"] == status
    assert result["result"] is None
    assert result["details"]


def test_signature_is_checked_before_the_task_is_looked_up(
    sandbox: str, client: httpx.Client
) -> None:
    url = urlsplit(sample_url(client, sandbox))
    other = url.path.replace("/results/", "/results/0")
    assert client.get(f"{sandbox}{other}?{url.query}").status_code == 403
