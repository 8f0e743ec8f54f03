"""Finetuning routes, served only on the legacy regional hosts (eu1, us1), as BFL documents.

A finetune is trained for ``finetune_seconds`` (its training is a task: get_result with the
finetune id shows Pending with progress, then Ready), and then exists only in its region:
elsewhere every lookup answers "not found".
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response

from sandbox.api import base_url_of, charge, check_webhook, task_faults
from sandbox.endpoints import FINETUNE_COST
from sandbox.http import (
    ApiError,
    AsciiJSONResponse,
    api_key,
    query,
    read_json,
    unprocessable,
    validate,
)
from sandbox.inputs import InputError, read_training_zip
from sandbox.results import polling_url
from sandbox.runtime import runtime_of
from sandbox.tasks import Finetune, Task, outcome_of
from sandbox.webhooks import notify
from submitter.models import DeleteFinetuneInputs, FinetuneInputs

LEGACY_REGIONS = ("eu1", "us1")
#: The docs: "0.00001 if finetune_type is full, 0.0001 if lora".
DEFAULT_LEARNING_RATE = {"full": 1e-5, "lora": 1e-4}


def _legacy_only(region: str) -> None:
    if region not in LEGACY_REGIONS:
        raise ApiError(
            404, detail="Finetuning is served only on the legacy regional hosts eu1 and us1"
        )


async def create_finetune(request: Request, region: str) -> Response:
    """POST /v1/finetune: validate the ZIP, charge, start training."""
    _legacy_only(region)
    runtime = runtime_of(request)
    settings = runtime.settings
    key = api_key(request, settings)
    inputs = validate(FinetuneInputs, await read_json(request, settings.max_body_bytes))
    faults = task_faults(request, inputs.finetune_comment, runtime)
    check_webhook(inputs.webhook_url, runtime)
    try:
        training = await asyncio.to_thread(read_training_zip, inputs.file_data)
    except InputError as exc:
        unprocessable(["body", exc.field], str(exc))
    charge(runtime, key, FINETUNE_COST)
    finetune_id = str(uuid.uuid4())
    task = Task(
        id=finetune_id,
        key=key,
        endpoint="finetune",
        region=region,
        base_url=base_url_of(request, runtime),
        created=time.time(),
        duration=settings.finetune_seconds,
        outcome=outcome_of(faults),
        faults=faults,
        render=None,
        cost=FINETUNE_COST,
        webhook_url=inputs.webhook_url,
        webhook_secret=inputs.webhook_secret,
        finetune_id=finetune_id,
    )
    params = inputs.model_dump(exclude={"file_data", "webhook_url", "webhook_secret"})
    if params["learning_rate"] is None:
        params["learning_rate"] = DEFAULT_LEARNING_RATE[inputs.finetune_type]
    finetune = Finetune(
        id=finetune_id,
        key=key,
        region=region,
        task=task,
        params=params,
        image_count=len(training.images),
        caption_count=len(training.captions),
    )
    runtime.tasks.add(task)
    runtime.finetunes.add(finetune)
    if task.webhook_url is not None:
        runtime.spawn(notify(runtime, task))
    return AsciiJSONResponse(
        {"id": finetune_id, "finetune_id": finetune_id, "polling_url": polling_url(task)}
    )


def _find(request: Request, region: str, finetune_id: str, loc: list[str | int]) -> Finetune:
    runtime = runtime_of(request)
    key = api_key(request, runtime.settings)
    finetune = runtime.finetunes.find(key, region, finetune_id)
    if finetune is None:
        unprocessable(loc, f"Finetune {finetune_id!r} not found in region {region}")
    return finetune


async def finetune_details(request: Request, region: str) -> Response:
    """GET /v1/finetune_details?finetune_id=: the training parameters and status."""
    api_key(request, runtime_of(request).settings)
    finetune_id = query(request, "finetune_id")
    finetune = _find(request, region, finetune_id, ["query", "finetune_id"])
    return AsciiJSONResponse({"finetune_details": finetune.details(time.time())})


async def my_finetunes(request: Request, region: str) -> Response:
    """GET /v1/my_finetunes: the key's finetune ids in this region (none off eu1/us1)."""
    runtime = runtime_of(request)
    key = api_key(request, runtime.settings)
    return AsciiJSONResponse({"finetunes": runtime.finetunes.mine(key, region)})


async def delete_finetune(request: Request, region: str) -> Response:
    """POST /v1/delete_finetune: forget a finetune; inference with it fails from then on."""
    runtime = runtime_of(request)
    api_key(request, runtime.settings)
    body = await read_json(request, runtime.settings.max_body_bytes)
    inputs = validate(DeleteFinetuneInputs, body)
    finetune = _find(request, region, inputs.finetune_id, ["body", "finetune_id"])
    runtime.finetunes.delete(finetune)
    return AsciiJSONResponse(
        {
            "status": "success",
            "message": f"Finetune {finetune.id} deleted",
            "deleted_finetune_id": finetune.id,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
