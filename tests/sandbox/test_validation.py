"""Hostile and malformed requests get a clear 4xx in the spec's shape, and change nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.sandbox.conftest import KEY, Sink, StartSandbox, b64, png


def post(client: httpx.Client, url: str, **kwargs: Any) -> httpx.Response:
    return client.post(url, headers={**KEY, **kwargs.pop("headers", {})}, **kwargs)


def detail(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    errors: list[dict[str, Any]] = response.json()["detail"]
    for error in errors:
        assert set(error) == {"loc", "msg", "type"}
    return errors


@pytest.mark.parametrize(
    ("endpoint", "body", "loc"),
    [
        ("flux-dev", {"width": 1000}, ["body", "width"]),  # not a multiple of 32
        ("flux-dev", {"width": 1472}, ["body", "width"]),  # above 1440
        ("flux-dev", {"height": 224}, ["body", "height"]),  # below 256
        ("flux-dev", {"steps": 51}, ["body", "steps"]),
        ("flux-dev", {"guidance": 5.5}, ["body", "guidance"]),
        ("flux-dev", {"seed": "5"}, ["body", "seed"]),  # strings are not integers
        ("flux-dev", {"prompt_upsampling": 1}, ["body", "prompt_upsampling"]),
        ("flux-dev", {"output_format": "gif"}, ["body", "output_format"]),
        ("flux-dev", {"safety_tolerance": 7}, ["body", "safety_tolerance"]),
        ("flux-pro-1.1", {"prompt": ["a", "list"]}, ["body", "prompt"]),
        ("flux-kontext-pro", {}, ["body", "prompt"]),  # required
        ("flux-kontext-pro", {"prompt": "x", "aspect_ratio": "22:9"}, ["body", "aspect_ratio"]),
        ("flux-kontext-pro", {"prompt": "x", "aspect_ratio": "wide"}, ["body", "aspect_ratio"]),
        ("flux-pro-1.1-ultra", {"aspect_ratio": "1:3"}, ["body", "aspect_ratio"]),
        ("flux-2-pro", {"prompt": "x", "width": 32}, ["body", "width"]),
        ("flux-2-pro", {"prompt": "x", "width": 4096, "height": 4096}, ["body", "width"]),
        ("flux-2-pro", {"prompt": "x", "safety_tolerance": 6}, ["body", "safety_tolerance"]),
        ("flux-pro-1.0-expand", {"image": b64(png()), "top": 2049}, ["body", "top"]),
        ("flux-pro-1.0-fill", {"prompt": "no image"}, ["body", "image"]),
        ("flux-dev", {"webhook_url": "ftp://127.0.0.1/x"}, ["body", "webhook_url"]),
        ("flux-dev", {"webhook_url": ""}, ["body", "webhook_url"]),
        ("flux-dev", {"webhook_url": "http://127.0.0.1/" + "x" * 2100}, ["body", "webhook_url"]),
    ],
)
def test_invalid_fields_are_422_at_their_location(
    sandbox: str, client: httpx.Client, endpoint: str, body: dict[str, Any], loc: list[str]
) -> None:
    errors = detail(post(client, f"{sandbox}/v1/{endpoint}", json=body))
    assert loc in [e["loc"] for e in errors]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "https://93.184.215.14/hook",
        "http://10.0.0.1/hook",
        "http://127.0.0.1.nip.io/hook",
        "http://127.0.0.1@example.com/hook",
        "http://[::ffff:10.0.0.1]/hook",
    ],
)
def test_webhook_off_the_allowlist_is_refused_at_submit(
    sandbox: str, client: httpx.Client, url: str
) -> None:
    errors = detail(post(client, f"{sandbox}/v1/flux-dev", json={"webhook_url": url}))
    assert errors[0]["loc"] == ["body", "webhook_url"]
    assert "allowlist" in errors[0]["msg"]


def test_allowlisted_name_is_accepted(start_sandbox: StartSandbox, client: httpx.Client) -> None:
    base = start_sandbox(allowed_hosts=("receiver.internal", "127.0.0.0/8"))
    body = {"webhook_url": "http://receiver.internal:8000/webhooks/bfl"}
    assert post(client, f"{base}/v1/flux-dev", json=body).status_code == 200


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("http://example.com/cat.png", "allowlist"),
        ("file:///etc/passwd", "http(s)"),
        ("not base64 at all!", "base64"),
        (b64(b"GIF89a but not really an image"), "not an image"),
        ("data:image/png;base64," + b64(b"\x89PNG\r\n\x1a\n broken"), "not an image"),
        ("", "empty"),
    ],
)
def test_unusable_input_image_is_422(
    sandbox: str, client: httpx.Client, value: str, words: str
) -> None:
    body = {"prompt": "edit", "input_image": value}
    errors = detail(post(client, f"{sandbox}/v1/flux-kontext-pro", json=body))
    assert errors[0]["loc"] == ["body", "input_image"]
    assert words in errors[0]["msg"]


def test_input_image_url_redirect_is_not_followed(
    sandbox: str, client: httpx.Client, sink: Sink
) -> None:
    body = {"prompt": "edit", "input_image": f"{sink.url}/redirect"}
    errors = detail(post(client, f"{sandbox}/v1/flux-kontext-pro", json=body))
    assert "302" in errors[0]["msg"]


def test_input_image_above_20_megapixels_is_422(sandbox: str, client: httpx.Client) -> None:
    huge = b64(png((5000, 4001), (1, 2, 3)))  # 20.005 MP, a small file: one colour
    errors = detail(
        post(client, f"{sandbox}/v1/flux-2-pro", json={"prompt": "x", "input_image": huge})
    )
    assert "20 megapixels" in errors[0]["msg"]


def test_input_image_above_20_megabytes_is_422(sandbox: str, client: httpx.Client) -> None:
    too_big = b64(b"\0" * (20 * 1024 * 1024 + 1))
    errors = detail(
        post(client, f"{sandbox}/v1/flux-2-pro", json={"prompt": "x", "input_image": too_big})
    )
    assert "20 MB" in errors[0]["msg"]


def test_mask_of_another_size_is_422(sandbox: str, client: httpx.Client) -> None:
    body = {"image": b64(png((64, 64))), "mask": b64(png((32, 32), (255, 255, 255)))}
    errors = detail(post(client, f"{sandbox}/v1/flux-pro-1.0-fill", json=body))
    assert errors[0]["loc"] == ["body", "mask"]


@pytest.mark.parametrize(
    "content", [b"{not json", b"", b'{"prompt": NaN}', b"\xff\xfe", b'{"width": Infinity}']
)
def test_malformed_json_is_422(sandbox: str, client: httpx.Client, content: bytes) -> None:
    errors = detail(post(client, f"{sandbox}/v1/flux-dev", content=content))
    assert errors[0]["type"] == "json_invalid"


@pytest.mark.parametrize("body", [b"[1, 2]", b'"a string"', b"42", b"null"])
def test_body_that_is_not_an_object_is_422(sandbox: str, client: httpx.Client, body: bytes) -> None:
    errors = detail(post(client, f"{sandbox}/v1/flux-dev", content=body))
    assert errors[0]["loc"] == ["body"]


def test_huge_body_is_413(start_sandbox: StartSandbox, client: httpx.Client) -> None:
    base = start_sandbox(max_body_bytes=1024 * 1024)
    body = b'{"prompt": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    assert post(client, f"{base}/v1/flux-dev", content=body).status_code == 413

    def chunks() -> Any:  # no Content-Length: the limit holds while reading
        yield body

    response = post(client, f"{base}/v1/flux-dev", content=chunks())
    assert response.status_code == 413


def test_unknown_fault_is_422(sandbox: str, client: httpx.Client) -> None:
    response = post(
        client, f"{sandbox}/v1/flux-dev", json={}, headers={"X-Sandbox-Fault": "set-on-fire"}
    )
    assert "unknown sandbox fault" in detail(response)[0]["msg"]
    tagged = post(client, f"{sandbox}/v1/flux-dev", json={"prompt": "[sandbox:delay-webhook=x]"})
    assert "not a number" in detail(tagged)[0]["msg"]


def test_refused_requests_cost_nothing(sandbox: str, client: httpx.Client) -> None:
    key = {"x-key": "a-key-of-its-own"}
    post(client, f"{sandbox}/v1/flux-dev", json={"width": 1}, headers=key)
    post(client, f"{sandbox}/v1/flux-dev", json={"webhook_url": "http://a.example/"}, headers=key)
    assert client.get(f"{sandbox}/v1/credits", headers=key).json() == {"credits": 1000.0}
