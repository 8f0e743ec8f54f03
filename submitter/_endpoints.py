"""Every BFL submit endpoint, its request model, and validation before anything is sent.

The request models (``submitter/models.py``) are written from the official OpenAPI spec and the
docs; the sandbox validates with the same ones, so client and sandbox cannot drift apart, and the
sandbox's schemathesis run against BFL's own spec checks them both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pydantic

from submitter import models as m
from submitter._errors import ValidationError

#: ``POST /v1/<name>`` → the model of its JSON body.
ENDPOINTS: Mapping[str, type[pydantic.BaseModel]] = {
    "flux-kontext-pro": m.FluxKontextProInputs,
    "flux-kontext-max": m.FluxKontextProInputs,
    "flux-pro-1.1-ultra": m.FluxUltraInput,
    "flux-pro-1.1": m.FluxPro11Inputs,
    "flux-pro": m.FluxProInputs,
    "flux-dev": m.FluxDevInputs,
    "flux-pro-1.0-fill": m.FluxProFillInputs,
    "flux-pro-1.0-expand": m.FluxProExpandInputs,
    "flux-pro-1.0-canny": m.FluxProControlInputs,
    "flux-pro-1.0-depth": m.FluxProControlInputs,
    "flux-2-pro": m.Flux2Inputs,
    "flux-2-pro-preview": m.Flux2Inputs,
    "flux-2-max": m.Flux2Inputs,
    "flux-2-flex": m.Flux2FlexInputs,
    "flux-2-klein-4b": m.Flux2KleinInputs,
    "flux-2-klein-9b": m.Flux2KleinInputs,
    "flux-2-klein-9b-preview": m.Flux2KleinInputs,
    "flux-pro-1.1-ultra-finetuned": m.FinetuneFluxUltraInput,
    "flux-pro-finetuned": m.FinetuneFluxProInputs,
    "flux-pro-1.0-fill-finetuned": m.FinetuneFluxProFillInputs,
    "flux-pro-1.0-canny-finetuned": m.FinetuneFluxProControlInputs,
    "flux-pro-1.0-depth-finetuned": m.FinetuneFluxProControlInputs,
}

#: Request fields that carry an image (base64 or a URL); ``edit`` fills ``input_image``.
IMAGE_FIELDS = frozenset(
    {"image", "mask", "image_prompt", "control_image", "preprocessed_image"}
    | {"input_image"}
    | {f"input_image_{n}" for n in range(2, 9)}
)

#: BFL's limits on active tasks per key: 24, and 6 for flux-kontext-max.
MAX_ACTIVE = 24
MAX_ACTIVE_BY_ENDPOINT: Mapping[str, int] = {"flux-kontext-max": 6}


def is_finetuned(endpoint: str) -> bool:
    """Finetuned inference runs on the legacy host of the finetune's region."""
    return endpoint.endswith("-finetuned")


def model_for(endpoint: str) -> type[pydantic.BaseModel]:
    """The request model of ``endpoint``; an unknown name is a client-side ValidationError."""
    model = ENDPOINTS.get(endpoint)
    if model is None:
        raise ValidationError.one(
            ("model",), f"unknown model {endpoint!r}; known: {', '.join(sorted(ENDPOINTS))}"
        )
    return model


def validate_body(endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` checked against ``endpoint``'s model: what will be sent, or ValidationError."""
    return validate_with(model_for(endpoint), endpoint, body)


def validate_with(
    model: type[pydantic.BaseModel], name: str, body: Mapping[str, Any]
) -> dict[str, Any]:
    """``body`` checked against ``model``; ``name`` (the endpoint) is for messages.

    Fields the model does not know are refused here (BFL would silently ignore them, and a
    ``width`` sent to a ratio-only model would be lost without a word).
    """
    errors: list[dict[str, Any]]
    unknown = sorted(set(body) - set(model.model_fields))
    if unknown:
        errors = [
            {"loc": ["body", field], "msg": f"{name} takes no {field!r}", "type": "extra"}
            for field in unknown
        ]
        raise ValidationError(f"{name} does not take {', '.join(unknown)}", errors)
    try:
        validated = model.model_validate(dict(body))
    except pydantic.ValidationError as exc:
        errors = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationError(describe(errors), errors) from None
    # Send what was given (coerced), not the defaults: BFL applies its own.
    sent: dict[str, Any] = validated.model_dump(mode="json", exclude_unset=True)
    return sent


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metadata must survive JSON (it is stored, then handed to handlers as ``event.metadata``)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise ValidationError.one(("metadata",), "must be a mapping with string keys")
    try:
        data: dict[str, Any] = json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError.one(("metadata",), f"is not JSON-serialisable: {exc}") from None
    return data


def describe(errors: list[dict[str, Any]]) -> str:
    """One line per problem: ``width: Input should be a multiple of 32``."""
    lines = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", []) if p != "body"]
        lines.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', '?')}")
    return "; ".join(lines) or "invalid request"
