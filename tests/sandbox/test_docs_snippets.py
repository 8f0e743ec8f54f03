"""The original docs' Python snippets, run against the sandbox with only the base URL changed.

Each function body is the docs' code as published (reformatted; ``https://api.bfl.ai`` and
``https://api.us1.bfl.ai`` replaced by the sandbox's URLs), plus the download the docs advise.
"""

from __future__ import annotations

import os
import time

import pytest
import requests

from tests.sandbox.conftest import open_image
from tests.sandbox.test_finetune import GOOD, training_zip


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", "docs-snippet-key")


def test_quick_start_submit_poll_download(sandbox: str) -> None:
    # submit_request.py
    request = requests.post(
        f"{sandbox}/v1/flux-kontext-pro",
        headers={
            "accept": "application/json",
            "x-key": os.environ.get("BFL_API_KEY"),
            "Content-Type": "application/json",
        },
        json={
            "prompt": "A cat on its back legs running like a human is holding a big silver fish "
            "with its arms. The cat is running away from the shop owner and has a panicked look "
            "on his face. The scene is situated in a crowded market.",
            "aspect_ratio": "1:1",
        },
        timeout=10,
    ).json()
    print(request)
    request_id = request["id"]
    polling_url = request["polling_url"]
    print(f"Request ID: {request_id}")
    print(f"Polling URL: {polling_url}")

    # poll_results.py
    while True:
        time.sleep(0.5)
        result = requests.get(
            polling_url,
            headers={
                "accept": "application/json",
                "x-key": os.environ.get("BFL_API_KEY"),
            },
            params={
                "id": request_id,
            },
            timeout=10,
        ).json()
        status = result["status"]
        print(f"Status: {status}")
        if status == "Ready":
            print(f"Result: {result['result']['sample']}")
            break
        if status in ["Error", "Failed"]:
            print(f"Generation failed: {result}")
            break

    # "We recommend downloading the image": within the 10 minutes the URL lives.
    assert status == "Ready"
    image = requests.get(result["result"]["sample"], timeout=10)
    image.raise_for_status()
    assert open_image(image.content).size == (1024, 1024)


def test_finetuned_inference_with_a_manually_built_polling_url(sandbox: str) -> None:
    us1 = f"{sandbox}/us1"  # https://api.us1.bfl.ai
    headers = {"X-Key": os.environ["BFL_API_KEY"], "Content-Type": "application/json"}
    # bfl_finetune.py request_finetuning(), with a small ZIP of images and a caption.
    payload = {
        "finetune_comment": "docs",
        "trigger_word": "TOK",
        "file_data": training_zip(GOOD),
        "iterations": 300,
        "mode": "general",
        "learning_rate": 0.00001,
        "captioning": True,
        "priority": "quality",
        "lora_rank": 32,
        "finetune_type": "full",
    }
    response = requests.post(f"{us1}/v1/finetune", headers=headers, json=payload, timeout=10)
    response.raise_for_status()
    finetune_id = response.json()["finetune_id"]
    while (
        requests.get(
            f"{us1}/v1/get_result", headers=headers, params={"id": finetune_id}, timeout=10
        ).json()["status"]
        != "Ready"
    ):
        time.sleep(0.1)

    # finetuned_inference.py
    response = requests.post(
        f"{us1}/v1/flux-pro-1.1-ultra-finetuned",  # Use appropriate region
        headers={
            "accept": "application/json",
            "x-key": os.environ.get("BFL_API_KEY"),
            "Content-Type": "application/json",
        },
        json={
            "prompt": "A photo of TOK in a serene landscape",
            "finetune_id": finetune_id,
            "finetune_strength": 1.0,
            "aspect_ratio": "16:9",
        },
        timeout=10,
    )
    data = response.json()
    request_id = data["id"]
    # For legacy endpoints, construct polling URL manually
    polling_url = f"{us1}/v1/get_result"
    # Poll for results
    while True:
        time.sleep(0.5)
        result = requests.get(
            polling_url,
            headers={
                "accept": "application/json",
                "x-key": os.environ.get("BFL_API_KEY"),
            },
            params={"id": request_id},
            timeout=10,
        ).json()
        if result["status"] == "Ready":
            print(f"Finetuned image ready: {result['result']['sample']}")
            break
        if result["status"] in ["Error", "Failed"]:
            print(f"Generation failed: {result}")
            break

    assert result["status"] == "Ready"
    image = requests.get(result["result"]["sample"], timeout=10)
    assert open_image(image.content).size == (2720, 1536)  # ~4 MP at 16:9
