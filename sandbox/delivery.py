"""Delivery URLs: signed, expiring links to results, served by the sandbox itself.

They look like BFL's Azure-blob URLs::

    http://127.0.0.1:8001/delivery/eu1/results/<task id>/sample.jpeg
        ?se=2026-05-01T08%3A46%3A02Z&sp=r&sv=2024-11-04&sr=b&rsct=image/jpeg&sig=<HMAC>

``sig`` is an HMAC-SHA256 over the path and the other parameters with a per-process key:
change any of them, or come after ``se``, and the answer is 403, as from Azure.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from sandbox.images import CONTENT_TYPES
from sandbox.runtime import runtime_of
from sandbox.tasks import Task
from submitter.models import Status

SIGNED_VERSION = "2024-11-04"
EXPIRY_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_SIGNED = ("se", "sp", "sv", "sr", "rsct")


def sample_path(task: Task) -> str:
    """Where ``task``'s image lives, under its region's delivery prefix."""
    assert task.render is not None
    return f"/delivery/{task.region}/results/{task.id}/sample.{task.render.output_format}"


def _signature(key: bytes, path: str, params: Mapping[str, str]) -> str:
    message = "\n".join([path, *(params.get(name, "") for name in _SIGNED)])
    return base64.b64encode(hmac.new(key, message.encode(), hashlib.sha256).digest()).decode()


def signed_url(task: Task, key: bytes, expires: float) -> str:
    """The ``result.sample`` URL of ``task``, valid until ``expires`` (epoch seconds)."""
    assert task.render is not None
    path = sample_path(task)
    params = {
        # Rounded up, so the URL lives at least as long as configured.
        "se": time.strftime(EXPIRY_FORMAT, time.gmtime(math.ceil(expires))),
        "sp": "r",
        "sv": SIGNED_VERSION,
        "sr": "b",
        "rsct": CONTENT_TYPES[task.render.output_format],
    }
    params["sig"] = _signature(key, path, params)
    return f"{task.base_url}{path}?{urlencode(params, safe='/')}"


def refusal(key: bytes, path: str, params: Mapping[str, str], now: float) -> str | None:
    """Why the URL ``path?params`` must be refused (403), or None when it is good now."""
    if any(name not in params for name in (*_SIGNED, "sig")) or params["sp"] != "r":
        return "Signature fields not well formed."
    if not hmac.compare_digest(params["sig"].encode(), _signature(key, path, params).encode()):
        return "Signature did not match."
    try:
        expiry = datetime.strptime(params["se"], EXPIRY_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return "Signed expiry time is not valid."
    if now >= expiry.timestamp():
        return "Signed expiry time has passed."
    return None


def _azure_error(status: int, code: str, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
    body += f"<Message>{message}</Message></Error>"
    return Response(body, status_code=status, media_type="application/xml")


async def serve_sample(request: Request) -> Response:
    """GET a delivery URL: the image until ``se``; 403 after it or with a bad signature."""
    runtime = runtime_of(request)
    reason = refusal(runtime.signing_key, request.url.path, request.query_params, time.time())
    if reason is not None:
        return _azure_error(403, "AuthenticationFailed", reason)
    task = runtime.tasks.get(request.path_params["task_id"])
    if task is None or task.render is None or sample_path(task) != request.url.path:
        return _azure_error(404, "BlobNotFound", "The specified blob does not exist.")
    # Not task.status(): under early-webhook the blob exists while get_result cannot see it.
    if task.outcome is not Status.READY or time.time() < task.done_at:
        return _azure_error(404, "BlobNotFound", "The specified blob does not exist.")
    settings = runtime.settings
    await asyncio.sleep(task.faults.seconds("slow-delivery", settings.fault_delay_seconds))
    task.fetches += 1
    if task.fetches <= task.faults.count("failing-delivery", settings.fault_failures):
        return _azure_error(503, "ServerBusy", "sandbox fault: failing-delivery")
    data = await runtime.image(task)
    return Response(
        data,
        media_type=CONTENT_TYPES[task.render.output_format],
        headers={"Cache-Control": "private, no-transform", "x-ms-blob-type": "BlockBlob"},
    )
