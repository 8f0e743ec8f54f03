"""Submitting and polling: every endpoint, sizes, formats, determinism, edits, regions, auth."""

from __future__ import annotations

import json
import time
from io import BytesIO
from typing import Any

import httpx
import pytest
from PIL import Image, ImageStat

from sandbox.endpoints import ENDPOINTS
from tests.sandbox.conftest import KEY, Sink, StartSandbox, b64, open_image, png
from tests.servers import wait_until

IMAGE = b64(png())
#: The smallest valid body of each endpoint that is not a finetune's.
MINIMAL: dict[str, dict[str, Any]] = {
    "flux-pro-1.0-fill": {"image": IMAGE},
    "flux-pro-1.0-expand": {"image": IMAGE, "left": 32},
    "flux-pro-1.0-canny": {"prompt": "edges", "control_image": IMAGE},
    "flux-pro-1.0-depth": {"prompt": "depth", "control_image": IMAGE},
}


def ready(client: httpx.Client, polling_url: str) -> dict[str, Any]:
    """Poll until the task leaves Pending; return the last get_result body."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(client.get(polling_url).json())
        return bool(seen["status"] != "Pending")

    wait_until(done, timeout=10)
    return seen


def generate(client: httpx.Client, base: str, endpoint: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"{base}/v1/{endpoint}", json=body, headers=KEY)
    assert response.status_code == 200, response.text
    return ready(client, response.json()["polling_url"])


def download(client: httpx.Client, result: dict[str, Any]) -> httpx.Response:
    assert result["status"] == "Ready", result
    response = client.get(result["result"]["sample"])
    assert response.status_code == 200
    return response


def test_task_is_pending_with_progress_then_ready(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    base = start_sandbox(task_seconds=1.0)
    submitted = client.post(
        f"{base}/v1/flux-kontext-pro", json={"prompt": "a cat", "aspect_ratio": "16:9"}, headers=KEY
    ).json()
    assert set(submitted) >= {"id", "polling_url", "cost"}
    assert submitted["polling_url"].startswith(f"{base}/")
    pending = client.get(submitted["polling_url"]).json()
    assert pending["status"] == "Pending"
    assert 0 <= pending["progress"] < 1
    result = ready(client, submitted["polling_url"])
    assert result["result"]["prompt"] == "a cat"
    image = open_image(download(client, result).content)
    assert image.format == "PNG"  # Kontext's default output_format
    assert image.size == (1376, 768)  # ~1 MP at 16:9, sides multiples of 32


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if not ENDPOINTS[e].finetuned])
def test_every_endpoint_produces_an_image(
    sandbox: str, client: httpx.Client, endpoint: str
) -> None:
    body = MINIMAL.get(endpoint, {"prompt": f"made by {endpoint}"})
    result = generate(client, sandbox, endpoint, **body)
    response = download(client, result)
    assert response.headers["content-type"].startswith("image/")
    assert open_image(response.content).size[0] >= 64


@pytest.mark.parametrize(
    ("endpoint", "body", "size"),
    [
        ("flux-dev", {"width": 512, "height": 320}, (512, 320)),
        ("flux-pro-1.1", {}, (1024, 768)),
        ("flux-pro-1.1-ultra", {"aspect_ratio": "1:1"}, (2048, 2048)),
        ("flux-kontext-max", {"aspect_ratio": "9:21"}, (672, 1568)),
        ("flux-2-pro", {}, (1024, 1024)),
        ("flux-2-flex", {"width": 640, "height": 64}, (640, 64)),
        ("flux-2-klein-4b", {"input_image": b64(png((300, 200)))}, (300, 200)),
        ("flux-pro-1.0-expand", {"image": b64(png((64, 48))), "top": 10, "right": 6}, (70, 58)),
        ("flux-pro-1.0-fill", {"image": b64(png((90, 70)))}, (90, 70)),
    ],
)
def test_image_has_the_size_the_request_implies(
    sandbox: str,
    client: httpx.Client,
    endpoint: str,
    body: dict[str, Any],
    size: tuple[int, int],
) -> None:
    result = generate(client, sandbox, endpoint, prompt="size", **body)
    assert open_image(download(client, result).content).size == size


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_image_has_the_requested_format(
    sandbox: str, client: httpx.Client, fmt: str, pil: str
) -> None:
    result = generate(client, sandbox, "flux-dev", prompt="fmt", output_format=fmt)
    response = download(client, result)
    assert response.headers["content-type"] == f"image/{fmt}"
    assert f"rsct=image/{fmt}" in result["result"]["sample"]
    assert open_image(response.content).format == pil


def test_same_prompt_and_seed_give_the_same_image(sandbox: str, client: httpx.Client) -> None:
    def image(seed: int) -> bytes:
        body = {"prompt": "a lighthouse", "seed": seed, "width": 256, "height": 256}
        return download(client, generate(client, sandbox, "flux-dev", **body)).content

    assert image(7) == image(7)
    assert image(7) != image(8)


def test_seed_is_chosen_and_reported_when_absent(sandbox: str, client: httpx.Client) -> None:
    result = generate(client, sandbox, "flux-dev", prompt="no seed")
    assert isinstance(result["result"]["seed"], int)


def _mean(data: bytes) -> list[float]:
    return list(ImageStat.Stat(open_image(data).convert("RGB")).mean)


def test_edit_visibly_derives_from_the_input_image(sandbox: str, client: httpx.Client) -> None:
    red = b64(png((128, 128), (255, 0, 0)))
    body = {"prompt": "make it glow", "input_image": red, "seed": 3, "output_format": "png"}
    red_mean = _mean(
        download(client, generate(client, sandbox, "flux-kontext-pro", **body)).content
    )
    assert red_mean[0] > 150  # mostly the input's red ...
    assert max(red_mean[1:]) < 110  # ... whatever the prompt drew on it


def test_expand_keeps_the_input_where_the_padding_puts_it(
    sandbox: str, client: httpx.Client
) -> None:
    body = {"image": b64(png((64, 64), (0, 0, 255))), "left": 40, "top": 20, "output_format": "png"}
    image = open_image(
        download(client, generate(client, sandbox, "flux-pro-1.0-expand", **body)).content
    )
    assert image.size == (104, 84)
    assert image.convert("RGB").getpixel((40 + 5, 20 + 5)) == (0, 0, 255)


def test_fill_repaints_only_the_transparent_part(sandbox: str, client: httpx.Client) -> None:
    half = Image.new("RGBA", (64, 64), (0, 255, 0, 255))
    half.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent: to be filled
    buffer = BytesIO()
    half.save(buffer, "PNG")
    body = {"image": b64(buffer.getvalue()), "output_format": "png", "prompt": "x"}
    result = generate(client, sandbox, "flux-pro-1.0-fill", **body)
    image = open_image(download(client, result).content).convert("RGB")
    assert image.getpixel((60, 5)) == (0, 255, 0)  # opaque: kept
    assert image.getpixel((5, 5)) != (0, 0, 0)  # transparent: painted


def test_input_image_url_on_the_allowlist_is_fetched(
    sandbox: str, client: httpx.Client, sink: Sink
) -> None:
    body = {"prompt": "from a URL", "input_image": f"{sink.url}/image.png"}
    result = generate(client, sandbox, "flux-2-pro", **body)
    assert open_image(download(client, result).content).size == (80, 60)


def test_polling_url_names_the_region_and_only_that_host_knows_the_task(
    sandbox: str, client: httpx.Client
) -> None:
    for region in ("eu", "us", "eu1", "us1"):
        submitted = client.post(f"{sandbox}/{region}/v1/flux-dev", json={}, headers=KEY).json()
        assert submitted["polling_url"] == (
            f"{sandbox}/{region}/v1/get_result?id={submitted['id']}"
        )
        other = "us1" if region != "us1" else "eu"
        elsewhere = client.get(f"{sandbox}/{other}/v1/get_result", params={"id": submitted["id"]})
        assert elsewhere.json()["status"] == "Task not found"
    from_global = client.post(f"{sandbox}/v1/flux-dev", json={}, headers=KEY).json()
    assert from_global["polling_url"].split("/")[3] in ("eu", "us")


def test_without_strict_regions_every_host_finds_the_task(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    base = start_sandbox(strict_regions=False)
    task_id = client.post(f"{base}/v1/flux-dev", json={}, headers=KEY).json()["id"]
    assert client.get(f"{base}/v1/get_result?id={task_id}").json()["status"] == "Pending"


def test_unknown_id_is_task_not_found_and_missing_id_is_422(
    sandbox: str, client: httpx.Client
) -> None:
    body = client.get(f"{sandbox}/v1/get_result", params={"id": "nope"}).json()
    assert body == {
        "id": "nope",
        "status": "Task not found",
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }
    missing = client.get(f"{sandbox}/v1/get_result")
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "id"]


def test_public_url_is_the_base_of_polling_and_delivery_urls(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    base = start_sandbox()
    public = start_sandbox(public_url=base + "/")  # another instance announcing the first
    submitted = client.post(f"{public}/eu1/v1/flux-dev", json={}, headers=KEY).json()
    assert submitted["polling_url"].startswith(f"{base}/eu1/v1/get_result?id=")


def test_webhook_submit_response_shape_is_available(
    start_sandbox: StartSandbox, client: httpx.Client, sink: Sink
) -> None:
    base = start_sandbox(submit_response="webhook")
    hook = sink.hook("submit-response")
    body = client.post(f"{base}/v1/flux-dev", json={"webhook_url": hook}, headers=KEY).json()
    assert body["webhook_url"] == hook
    assert body["status"] == "Pending"
    assert "polling_url" not in body


def test_missing_key_is_403_and_unknown_key_401(
    start_sandbox: StartSandbox, client: httpx.Client
) -> None:
    base = start_sandbox(api_keys=("right",))
    assert client.post(f"{base}/v1/flux-dev", json={}).status_code == 403
    assert (
        client.post(f"{base}/v1/flux-dev", json={}, headers={"x-key": "wrong"}).status_code == 401
    )
    assert client.get(f"{base}/v1/credits").status_code == 403
    assert (
        client.post(f"{base}/v1/flux-dev", json={}, headers={"x-key": "right"}).status_code == 200
    )


def test_get_result_needs_no_key(sandbox: str, client: httpx.Client) -> None:
    polling = client.post(f"{sandbox}/v1/flux-dev", json={}, headers=KEY).json()["polling_url"]
    time.sleep(0.3)
    assert client.get(polling).json()["status"] == "Ready"


def test_unknown_endpoint_is_404(sandbox: str, client: httpx.Client) -> None:
    response = client.post(f"{sandbox}/v1/flux-ultra-mega", json={}, headers=KEY)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("prompt", ["\ud800 a lone surrogate", "😀 中文 עברית \x00", "x" * 100_000])
def test_any_prompt_renders(sandbox: str, client: httpx.Client, prompt: str) -> None:
    body = json.dumps({"prompt": prompt, "width": 256, "height": 256})  # ASCII: \ud800 escaped
    submitted = client.post(f"{sandbox}/v1/flux-dev", content=body, headers=KEY).json()
    result = ready(client, submitted["polling_url"])
    assert open_image(download(client, result).content).size == (256, 256)
