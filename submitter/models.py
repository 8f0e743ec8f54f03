"""Request bodies, as the official OpenAPI spec's component schemas declare them.

One model per schema, named like it; the few endpoints that only the docs describe
(``flux-pro``, canny, depth and their finetuned siblings, ``finetune``) follow the docs and
BFL's published parameter tables. Models are strict, like the spec: ``"5"`` is not an integer
and ``1`` is not a boolean. Unknown fields are ignored, as FastAPI (BFL's server) does.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: The spec's aspect-ratio bounds: "between 21:9 and 9:21".
MIN_RATIO, MAX_RATIO = 9 / 21, 21 / 9


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


def _aspect_ratio(value: str | None) -> str | None:
    if value is None:
        return None
    width, sep, height = value.partition(":")
    if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
        raise ValueError("must look like '16:9' (two positive integers)")
    if not MIN_RATIO <= int(width) / int(height) <= MAX_RATIO:
        raise ValueError("must be between 21:9 and 9:21")
    return value


WebhookUrl = Annotated[str, Field(min_length=1, max_length=2083), AfterValidator(_http_url)]
AspectRatio = Annotated[str, AfterValidator(_aspect_ratio)]
OutputFormat = Literal["jpeg", "png", "webp"]
Safety6 = Annotated[int, Field(ge=0, le=6)]
Safety5 = Annotated[int, Field(ge=0, le=5)]
Side = Annotated[int, Field(ge=256, le=1440, multiple_of=32)]
Flux2Side = Annotated[int, Field(ge=64)]
Padding = Annotated[int, Field(ge=0, le=2048)]
Steps50 = Annotated[int, Field(ge=1, le=50)]
Steps15To50 = Annotated[int, Field(ge=15, le=50)]
Guidance5 = Annotated[float, Field(ge=1.5, le=5)]
Guidance100 = Annotated[float, Field(ge=1.5, le=100)]
Strength = Annotated[float, Field(ge=0, le=2)]
Unit = Annotated[float, Field(ge=0, le=1)]


class Status(StrEnum):
    """The spec's StatusResponse enum, exactly as get_result spells it."""

    NOT_FOUND = "Task not found"
    PENDING = "Pending"
    REQUEST_MODERATED = "Request Moderated"
    CONTENT_MODERATED = "Content Moderated"
    READY = "Ready"
    ERROR = "Error"

    @property
    def terminal(self) -> bool:
        """The task will not change again."""
        return self is not Status.PENDING


class Inputs(BaseModel):
    """What every submit endpoint takes: the webhook and the output format."""

    model_config = ConfigDict(strict=True, extra="ignore")

    webhook_url: WebhookUrl | None = None
    webhook_secret: str | None = None
    output_format: OutputFormat | None = "jpeg"
    seed: int | None = None
    safety_tolerance: Safety6 = 2

    @property
    def text(self) -> str:
        """The prompt, or "" when the endpoint has none or it is null."""
        return getattr(self, "prompt", None) or ""


class FluxPro11Inputs(Inputs):
    prompt: str | None = ""
    image_prompt: str | None = None
    width: Side = 1024
    height: Side = 768
    prompt_upsampling: bool = False


class FluxDevInputs(Inputs):
    prompt: str = ""
    image_prompt: str | None = None
    width: Side = 1024
    height: Side = 768
    steps: Steps50 | None = 28
    prompt_upsampling: bool = False
    guidance: Guidance5 | None = 3.0


class FluxProInputs(FluxDevInputs):
    """``/flux-pro`` (FLUX.1 [pro]): in the docs' endpoint list, gone from the 2026 spec."""

    steps: Steps50 | None = 40
    guidance: Guidance5 | None = 2.5
    interval: Annotated[float, Field(ge=1, le=4)] | None = 2.0


class FluxUltraInput(Inputs):
    prompt: str | None = ""
    prompt_upsampling: bool = False
    aspect_ratio: AspectRatio = "16:9"
    raw: bool = False
    image_prompt: str | None = None
    image_prompt_strength: Unit = 0.1


class FluxKontextProInputs(Inputs):
    prompt: str
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    aspect_ratio: AspectRatio | None = None
    output_format: OutputFormat | None = "png"
    prompt_upsampling: bool = False


class Flux2KleinInputs(Inputs):
    prompt: str
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    width: Flux2Side | None = None  # the spec's default 0 means "from the input, or 1 MP"
    height: Flux2Side | None = None
    safety_tolerance: Safety5 = 2


class Flux2Inputs(Flux2KleinInputs):
    input_image_5: str | None = None
    input_image_6: str | None = None
    input_image_7: str | None = None
    input_image_8: str | None = None


class Flux2FlexInputs(Flux2Inputs):
    prompt_upsampling: bool | None = True
    input_image_blob_path: str | None = None
    guidance: Annotated[float, Field(ge=1.5, le=10)] | None = 5.0
    steps: Steps50 | None = 50


class _Repaint(Inputs):
    image: str
    prompt: str | None = ""
    steps: Steps15To50 | None = 50
    prompt_upsampling: bool | None = False
    guidance: Guidance100 | None = 60


class FluxProFillInputs(_Repaint):
    mask: str | None = None


class FluxProExpandInputs(_Repaint):
    top: Padding | None = 0
    bottom: Padding | None = 0
    left: Padding | None = 0
    right: Padding | None = 0


class FluxProControlInputs(Inputs):
    """``/flux-pro-1.0-canny`` and ``-depth``: from BFL's parameter tables, not in the spec."""

    prompt: str
    control_image: str | None = None
    preprocessed_image: str | None = None
    steps: Steps15To50 = 50
    guidance: Annotated[float, Field(ge=1, le=100)] = 30
    prompt_upsampling: bool = False
    canny_low_threshold: Annotated[int, Field(ge=0, le=500)] | None = 50
    canny_high_threshold: Annotated[int, Field(ge=0, le=500)] | None = 200


class Finetuned(BaseModel):
    """What every ``*-finetuned`` endpoint adds to its sibling's inputs."""

    model_config = ConfigDict(strict=True, extra="ignore")
    finetune_id: str
    finetune_strength: Strength = 1.1


class FinetuneFluxUltraInput(Finetuned, FluxUltraInput):
    finetune_strength: Strength = 1.2


class FinetuneFluxProFillInputs(Finetuned, FluxProFillInputs):
    prompt: str = ""
    steps: Steps15To50 = 50
    prompt_upsampling: bool = False
    guidance: Guidance100 = 60


class FinetuneFluxProInputs(Finetuned, FluxProInputs):
    pass


class FinetuneFluxProControlInputs(Finetuned, FluxProControlInputs):
    pass


class DeleteFinetuneInputs(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    finetune_id: str


class FinetuneInputs(BaseModel):
    """``/v1/finetune``: the fields of the docs' ``request_finetuning`` example."""

    model_config = ConfigDict(strict=True, extra="ignore")

    file_data: str
    finetune_comment: str
    mode: Literal["character", "product", "style", "general"]
    trigger_word: str = "TOK"
    iterations: Annotated[int, Field(ge=100, le=1000)] = 300
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    captioning: bool = True
    priority: Literal["speed", "quality", "high_res_only"] = "quality"
    finetune_type: Literal["full", "lora"] = "full"
    lora_rank: Literal[16, 32] = 32
    webhook_url: WebhookUrl | None = None
    webhook_secret: str | None = None
