"""Finetuning: ZIP validation, training with progress, region-bound inference, the listing."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from datetime import datetime
from io import BytesIO
from typing import Any

import httpx
import pytest

from sandbox import create_app
from tests.sandbox.conftest import KEY, Sink, b64, open_image, png, settings
from tests.sandbox.test_api import download, ready
from tests.servers import serve, wait_until


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    """A module-local sandbox, so finetunes from other tests never show up here."""
    with serve(create_app(settings())) as url:
        yield url


def training_zip(files: dict[str, bytes]) -> str:
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return b64(buffer.getvalue())


def webp() -> bytes:
    buffer = BytesIO()
    open_image(png()).save(buffer, "WEBP")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = BytesIO()
    open_image(png()).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


#: Three images (one in a folder), one caption, and the junk macOS adds to archives.
GOOD = {
    "a.jpg": jpeg(),
    "b.png": png(),
    "sub/c.webp": webp(),
    "a.txt": b"a photo of TOK",
    "__MACOSX/._a.jpg": b"junk",
}


def finetune(client: httpx.Client, base: str, region: str, **body: Any) -> httpx.Response:
    payload = {
        "file_data": training_zip(GOOD),
        "finetune_comment": "my product",
        "mode": "product",
        "trigger_word": "mycstm",
        **body,
    }
    return client.post(f"{base}/{region}/v1/finetune", json=payload, headers=KEY)


def test_finetune_trains_then_serves_inference_only_in_its_region(
    sandbox: str, client: httpx.Client
) -> None:
    created = finetune(client, sandbox, "us1").json()
    finetune_id = created["finetune_id"]
    assert created["polling_url"] == f"{sandbox}/us1/v1/get_result?id={finetune_id}"
    training = client.get(created["polling_url"]).json()
    assert training["status"] == "Pending"
    assert training["progress"] is not None
    too_early = client.post(
        f"{sandbox}/us1/v1/flux-pro-1.1-ultra-finetuned",
        json={"finetune_id": finetune_id, "prompt": "mycstm"},
        headers=KEY,
    )
    assert too_early.status_code == 422
    assert ready(client, created["polling_url"])["result"] == {"finetune_id": finetune_id}

    details = client.get(
        f"{sandbox}/us1/v1/finetune_details", params={"finetune_id": finetune_id}, headers=KEY
    ).json()["finetune_details"]
    assert details["trigger_word"] == "mycstm"
    assert details["finetune_comment"] == "my product"
    assert details["image_count"] == 3
    assert details["caption_count"] == 1
    assert details["learning_rate"] == 1e-5  # the docs' default for "full"
    mine = client.get(f"{sandbox}/us1/v1/my_finetunes", headers=KEY).json()
    assert mine == {"finetunes": [finetune_id]}

    body = {"finetune_id": finetune_id, "prompt": "mycstm on grass", "aspect_ratio": "1:1"}
    submitted = client.post(
        f"{sandbox}/us1/v1/flux-pro-1.1-ultra-finetuned", json=body, headers=KEY
    )
    assert submitted.status_code == 200, submitted.text
    image = open_image(download(client, ready(client, submitted.json()["polling_url"])).content)
    assert image.size == (2048, 2048)

    for elsewhere in ("eu1", "eu", "us"):
        wrong = client.post(
            f"{sandbox}/{elsewhere}/v1/flux-pro-1.1-ultra-finetuned", json=body, headers=KEY
        )
        assert wrong.status_code == 422
        assert "not found" in wrong.json()["detail"][0]["msg"]
    global_host = client.post(f"{sandbox}/v1/flux-pro-1.1-ultra-finetuned", json=body, headers=KEY)
    assert global_host.status_code == 422
    assert client.get(f"{sandbox}/eu1/v1/my_finetunes", headers=KEY).json() == {"finetunes": []}
    assert client.get(f"{sandbox}/us1/v1/my_finetunes", headers={"x-key": "x"}).json() == {
        "finetunes": []
    }

    deleted = client.post(
        f"{sandbox}/us1/v1/delete_finetune", json={"finetune_id": finetune_id}, headers=KEY
    ).json()
    assert deleted["deleted_finetune_id"] == finetune_id
    assert set(deleted) == {"status", "message", "deleted_finetune_id", "timestamp"}
    after = client.post(f"{sandbox}/us1/v1/flux-pro-1.1-ultra-finetuned", json=body, headers=KEY)
    assert after.status_code == 422
    assert client.get(f"{sandbox}/us1/v1/my_finetunes", headers=KEY).json() == {"finetunes": []}


def test_every_finetuned_endpoint_uses_the_finetune(sandbox: str, client: httpx.Client) -> None:
    created = finetune(client, sandbox, "eu1", finetune_type="lora").json()
    finetune_id = created["finetune_id"]
    ready(client, created["polling_url"])
    image = b64(png((96, 64)))
    bodies: dict[str, dict[str, Any]] = {
        "flux-pro-finetuned": {"width": 512, "height": 256},
        "flux-pro-1.0-fill-finetuned": {"image": image},
        "flux-pro-1.0-canny-finetuned": {"control_image": image},
        "flux-pro-1.0-depth-finetuned": {"control_image": image},
    }
    for endpoint, extra in bodies.items():
        body = {"finetune_id": finetune_id, "prompt": "mycstm", **extra}
        response = client.post(f"{sandbox}/eu1/v1/{endpoint}", json=body, headers=KEY)
        assert response.status_code == 200, (endpoint, response.text)
        assert download(client, ready(client, response.json()["polling_url"]))


def test_finetuning_is_refused_off_the_legacy_regions(sandbox: str, client: httpx.Client) -> None:
    for region in ("", "/eu", "/us"):
        response = client.post(f"{sandbox}{region}/v1/finetune", json={}, headers=KEY)
        assert response.status_code == 404
        assert "eu1 and us1" in response.json()["detail"]


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({}, "no images"),
        ({"notes.txt": b"hello", "readme.md": b"x"}, "unsupported file"),
        ({"a.png": png(), "b.gif": b"GIF89a"}, "unsupported file"),
        ({"a.png": b"not a png"}, "not an image"),
        ({"a.png": jpeg()}, "content is JPEG"),
        ({"a.png": png(), "b.txt": b"orphan caption"}, "without a same-named image"),
        ({f"{i}.png": png() for i in range(21)}, "at most 20"),
        ({"a.png": png(), "a.txt": b"\xff\xfe"}, "not UTF-8"),
    ],
)
def test_bad_training_zips_are_422(
    sandbox: str, client: httpx.Client, files: dict[str, bytes], words: str
) -> None:
    response = finetune(client, sandbox, "eu1", file_data=training_zip(files))
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "file_data"]
    assert words in error["msg"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"file_data": b64(b"this is no zip")}, ["body", "file_data"]),
        ({"file_data": "%%% not base64"}, ["body", "file_data"]),
        ({"mode": "portrait"}, ["body", "mode"]),
        ({"iterations": 99}, ["body", "iterations"]),
        ({"lora_rank": 8}, ["body", "lora_rank"]),
        ({"finetune_type": "half"}, ["body", "finetune_type"]),
    ],
)
def test_bad_finetune_requests_are_422(
    sandbox: str, client: httpx.Client, body: dict[str, Any], loc: list[str]
) -> None:
    response = finetune(client, sandbox, "us1", **body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc


def test_unknown_finetune_is_422_everywhere(sandbox: str, client: httpx.Client) -> None:
    details = client.get(
        f"{sandbox}/us1/v1/finetune_details", params={"finetune_id": "nope"}, headers=KEY
    )
    assert details.status_code == 422
    assert details.json()["detail"][0]["loc"] == ["query", "finetune_id"]
    deleted = client.post(
        f"{sandbox}/us1/v1/delete_finetune", json={"finetune_id": "nope"}, headers=KEY
    )
    assert deleted.status_code == 422
    assert client.get(f"{sandbox}/us1/v1/finetune_details", headers=KEY).status_code == 422


@pytest.mark.parametrize("outcome", ["Ready", "Error"])
def test_a_finished_training_sends_its_webhook(
    sandbox: str, client: httpx.Client, sink: Sink, outcome: str
) -> None:
    comment = "my product" if outcome == "Ready" else "my product [sandbox:error]"
    answer = finetune(
        client,
        sandbox,
        "us1",
        finetune_comment=comment,
        webhook_url=sink.hook(f"training-{outcome}"),
        webhook_secret="training-secret",
    ).json()
    wait_until(lambda: sink.calls(f"training-{outcome}"))
    call = sink.calls(f"training-{outcome}")[0]
    assert call.headers["x-webhook-secret"] == "training-secret"
    body = json.loads(call.body)
    # {task_id, status, result}, as a public receiver of BFL's training webhooks reads it.
    assert body["task_id"] == answer["finetune_id"]
    assert body["status"] == outcome
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    if outcome == "Ready":
        assert body["result"] == {"finetune_id": answer["finetune_id"]}
        assert "error" not in body
    else:
        assert body["result"] is None
        assert body["error"] == "training_failed"
        assert body["message"]
    assert client.get(answer["polling_url"]).json()["status"] == outcome
