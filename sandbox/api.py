"""The BFL API's inference routes: submit, get_result, credits.

Submitting runs the checks in the order a client meets them: key (403/401), body (413/422),
faults and URLs (422), images (422), finetune (422), size (422), limits (429), credits (402).
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sandbox.endpoints import ENDPOINTS, Endpoint, SizeError, output_size
from sandbox.faults import HEADER, FaultError, Faults, faults_in, parse_faults
from sandbox.http import (
    ApiError,
    AsciiJSONResponse,
    api_key,
    query,
    read_json,
    unprocessable,
    validate,
)
from sandbox.images import Mode, RenderSpec
from sandbox.inputs import InputError, SourceImage, allowed_url, load_image
from sandbox.results import polling_url, result_body
from sandbox.runtime import Runtime, runtime_of
from sandbox.tasks import Finetune, Task, outcome_of
from sandbox.webhooks import notify
from submitter import models as m
from submitter.models import Status

#: The global and multi-cluster hosts route a task to a cluster; polling_url names it.
CLUSTERS = ("eu", "us")
MODES: dict[str, Mode] = {"fill": "fill", "expand": "expand", "control": "control"}


def task_faults(request: Request, prompt: str, runtime: Runtime) -> Faults:
    """The settings' faults plus those the request names (header or prompt tag)."""
    try:
        asked = faults_in(prompt, request.headers.get(HEADER))
    except FaultError as exc:
        unprocessable(["header", HEADER], str(exc))
    return parse_faults(runtime.settings.faults) | asked


def check_webhook(url: str | None, runtime: Runtime) -> None:
    """Refuse, at submit time, a webhook_url the sandbox would not deliver to."""
    if url is not None:
        try:
            allowed_url(url, "webhook_url", runtime.settings.allowed_hosts)
        except InputError as exc:
            unprocessable(["body", exc.field], str(exc))


def home_region(region: str) -> str:
    """The region a task submitted on ``region`` lives on (random for global)."""
    return secrets.choice(CLUSTERS) if region == "global" else region


def charge(runtime: Runtime, key: str, cost: float) -> None:
    if not runtime.accounts.charge(key, cost):
        balance = runtime.accounts.balance(key)
        raise ApiError(402, detail=f"Insufficient credits: {balance} left, {cost} needed")


async def submit(request: Request, region: str) -> Response:
    """POST /v1/<endpoint>: validate, charge, and start a task."""
    endpoint = ENDPOINTS.get(request.path_params["endpoint"])
    if endpoint is None:
        raise ApiError(404, detail="Not Found")
    runtime = runtime_of(request)
    settings = runtime.settings
    key = api_key(request, settings)
    inputs = validate(endpoint.model, await read_json(request, settings.max_body_bytes))
    faults = task_faults(request, inputs.text, runtime)
    check_webhook(inputs.webhook_url, runtime)
    images = await _images(endpoint, inputs, runtime)
    finetune = _finetune(inputs, runtime, key, region)
    spec = _render_spec(endpoint, inputs, images, finetune)
    now = time.time()
    limit = settings.max_active_tasks
    if runtime.tasks.active(key, now) >= limit:
        raise ApiError(429, detail=f"Too many active tasks: at most {limit} at once")
    if endpoint.name == "flux-kontext-max":
        limit = settings.max_active_kontext_max
        if runtime.tasks.active(key, now, endpoint.name) >= limit:
            raise ApiError(429, detail=f"Too many active flux-kontext-max tasks (max {limit})")
    charge(runtime, key, endpoint.cost)
    outcome = outcome_of(faults)
    task = Task(
        id=str(uuid.uuid4()),
        key=key,
        endpoint=endpoint.name,
        region=home_region(region),
        base_url=base_url_of(request, runtime),
        created=now,
        duration=settings.task_seconds,
        outcome=outcome,
        faults=faults,
        render=spec,
        cost=endpoint.cost,
        webhook_url=inputs.webhook_url,
        webhook_secret=inputs.webhook_secret,
        hidden_for=faults.seconds("early-webhook", settings.fault_delay_seconds),
    )
    runtime.tasks.add(task)
    if task.webhook_url is not None:
        runtime.spawn(notify(runtime, task))
    body: dict[str, Any] = {"id": task.id, "polling_url": polling_url(task)}
    if task.webhook_url is not None and settings.submit_response == "webhook":
        body = {"id": task.id, "status": Status.PENDING.value, "webhook_url": task.webhook_url}
    body["cost"] = endpoint.cost
    body["input_mp"] = round(sum(i.size[0] * i.size[1] for i in images.values()) / 1e6, 2)
    body["output_mp"] = round(spec.size[0] * spec.size[1] / 1e6, 2)
    return AsciiJSONResponse(body)


def base_url_of(request: Request, runtime: Runtime) -> str:
    configured = runtime.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


async def _images(endpoint: Endpoint, inputs: m.Inputs, runtime: Runtime) -> dict[str, SourceImage]:
    images: dict[str, SourceImage] = {}
    for name in endpoint.image_fields:
        value = getattr(inputs, name)
        if value is None:
            continue
        try:
            images[name] = await load_image(
                value, name, runtime.client, runtime.settings.allowed_hosts
            )
        except InputError as exc:
            unprocessable(["body", exc.field], str(exc))
    if endpoint.size == "control" and not images:
        unprocessable(["body", "control_image"], "control_image or preprocessed_image is required")
    if "mask" in images and images["mask"].size != images["image"].size:
        unprocessable(["body", "mask"], "the mask's dimensions differ from the image's")
    return images


def _finetune(inputs: m.Inputs, runtime: Runtime, key: str, region: str) -> Finetune | None:
    if not isinstance(inputs, m.Finetuned):
        return None
    finetune = runtime.finetunes.find(key, region, inputs.finetune_id)
    loc: list[str | int] = ["body", "finetune_id"]
    if finetune is None:
        unprocessable(loc, f"Finetune {inputs.finetune_id!r} not found in region {region}")
    status = finetune.task.status(time.time())[0]
    if status is not Status.READY:
        unprocessable(loc, f"Finetune {finetune.id!r} is not ready ({status.value})")
    return finetune


def _render_spec(
    endpoint: Endpoint,
    inputs: m.Inputs,
    images: dict[str, SourceImage],
    finetune: Finetune | None,
) -> RenderSpec:
    source = next((i for name, i in images.items() if name != "mask"), None)
    try:
        size = output_size(endpoint, inputs, source.size if source else None)
    except SizeError as exc:
        unprocessable(["body", exc.field], str(exc))
    badge = None
    if finetune is not None and isinstance(inputs, m.Finetuned):
        trigger = finetune.params["trigger_word"]
        badge = f"{trigger} · finetune {finetune.id[:8]} · strength {inputs.finetune_strength}"
    offset = (0, 0)
    if isinstance(inputs, m.FluxProExpandInputs):
        offset = (inputs.left or 0, inputs.top or 0)
    mask = images.get("mask")
    return RenderSpec(
        prompt=inputs.text,
        seed=inputs.seed if inputs.seed is not None else secrets.randbelow(2**32),
        size=size,
        output_format=inputs.output_format or "jpeg",
        mode=MODES.get(endpoint.size, "edit" if source else "generate"),
        source=source.data if source else None,
        mask=mask.data if mask else None,
        offset=offset,
        badge=badge,
    )


async def get_result(request: Request, region: str) -> Response:
    """GET /v1/get_result?id=: no key needed (the spec declares no security here)."""
    runtime = runtime_of(request)
    task_id = query(request, "id")
    task = runtime.tasks.get(task_id)
    if task is not None and runtime.settings.strict_regions and task.region != region:
        task = None  # asked on another host than its polling_url names
    if task is not None:
        task.polls += 1
        if task.polls <= task.faults.count("get-result-5xx", runtime.settings.fault_failures):
            return AsciiJSONResponse({"detail": "sandbox fault: get-result-5xx"}, status_code=503)
    return AsciiJSONResponse(result_body(runtime, task_id, task, time.time()))


async def credits(request: Request, region: str) -> Response:
    """GET /v1/credits: the key's balance."""
    runtime = runtime_of(request)
    return AsciiJSONResponse(
        {"credits": runtime.accounts.balance(api_key(request, runtime.settings))}
    )
