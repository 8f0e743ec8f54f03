"""The submit endpoints: request model, price, and the image size a request implies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from submitter import models as m

SizeRule = Literal["wh", "kontext", "ultra", "flux2", "fill", "expand", "control"]

#: Kontext outputs ~1 MP whatever the ratio, Ultra ~4 MP, FLUX.2 at most 4 MP.
ONE_MP = 1024 * 1024
FOUR_MP = 2048 * 2048
#: An expand of a 20 MP input by 2048 px per side could ask for 70 MP; the sandbox stops here.
MAX_RENDER_PIXELS = 25_000_000

#: Fields that carry an image: base64, or a URL fetched from the allowlist.
IMAGE_FIELDS = frozenset({"image", "mask", "image_prompt", "control_image", "preprocessed_image"})


@dataclass(frozen=True)
class Endpoint:
    """One ``POST /v1/<name>`` inference endpoint."""

    name: str
    model: type[m.Inputs]
    cost: float
    """Credits charged per request (BFL's list prices, 1 credit = 1 cent)."""
    size: SizeRule
    finetuned: bool = False

    @property
    def image_fields(self) -> tuple[str, ...]:
        """The request fields that hold images, in order (the first sets the size)."""
        names = self.model.model_fields
        return tuple(
            n
            for n in names
            if n in IMAGE_FIELDS or (n.startswith("input_image") and not n.endswith("blob_path"))
        )


def _table(*endpoints: Endpoint) -> dict[str, Endpoint]:
    return {e.name: e for e in endpoints}


ENDPOINTS = _table(
    Endpoint("flux-kontext-pro", m.FluxKontextProInputs, 4, "kontext"),
    Endpoint("flux-kontext-max", m.FluxKontextProInputs, 8, "kontext"),
    Endpoint("flux-pro-1.1-ultra", m.FluxUltraInput, 6, "ultra"),
    Endpoint("flux-pro-1.1", m.FluxPro11Inputs, 4, "wh"),
    Endpoint("flux-pro", m.FluxProInputs, 5, "wh"),
    Endpoint("flux-dev", m.FluxDevInputs, 2.5, "wh"),
    Endpoint("flux-pro-1.0-fill", m.FluxProFillInputs, 5, "fill"),
    Endpoint("flux-pro-1.0-expand", m.FluxProExpandInputs, 5, "expand"),
    Endpoint("flux-pro-1.0-canny", m.FluxProControlInputs, 5, "control"),
    Endpoint("flux-pro-1.0-depth", m.FluxProControlInputs, 5, "control"),
    Endpoint("flux-2-pro", m.Flux2Inputs, 3, "flux2"),
    Endpoint("flux-2-pro-preview", m.Flux2Inputs, 3, "flux2"),
    Endpoint("flux-2-max", m.Flux2Inputs, 7, "flux2"),
    Endpoint("flux-2-flex", m.Flux2FlexInputs, 6, "flux2"),
    Endpoint("flux-2-klein-4b", m.Flux2KleinInputs, 1.4, "flux2"),
    Endpoint("flux-2-klein-9b", m.Flux2KleinInputs, 1.5, "flux2"),
    Endpoint("flux-2-klein-9b-preview", m.Flux2KleinInputs, 1.5, "flux2"),
    Endpoint("flux-pro-1.1-ultra-finetuned", m.FinetuneFluxUltraInput, 7, "ultra", True),
    Endpoint("flux-pro-finetuned", m.FinetuneFluxProInputs, 6, "wh", True),
    Endpoint("flux-pro-1.0-fill-finetuned", m.FinetuneFluxProFillInputs, 6, "fill", True),
    Endpoint("flux-pro-1.0-canny-finetuned", m.FinetuneFluxProControlInputs, 6, "control", True),
    Endpoint("flux-pro-1.0-depth-finetuned", m.FinetuneFluxProControlInputs, 6, "control", True),
)

#: Training a finetune (not an inference endpoint; priced like BFL's cheapest training).
FINETUNE_COST = 200.0


class SizeError(ValueError):
    """The request implies an image the sandbox will not render; ``field`` is to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _round32(value: float) -> int:
    return max(32, round(value / 32) * 32)


def by_ratio(ratio_w: float, ratio_h: float, pixels: int) -> tuple[int, int]:
    """A size of about ``pixels`` with the given ratio, sides multiples of 32."""
    width = math.sqrt(pixels * ratio_w / ratio_h)
    return _round32(width), _round32(width * ratio_h / ratio_w)


def _ratio(text: str) -> tuple[int, int]:
    width, _, height = text.partition(":")
    return int(width), int(height)


def output_size(
    endpoint: Endpoint, inputs: m.Inputs, source: tuple[int, int] | None
) -> tuple[int, int]:
    """Width and height of the image ``inputs`` asks for; ``source`` is the first input image."""
    size: tuple[int, int]
    if isinstance(inputs, m.FluxPro11Inputs | m.FluxDevInputs):
        size = (inputs.width, inputs.height)
    elif isinstance(inputs, m.FluxUltraInput):
        size = by_ratio(*_ratio(inputs.aspect_ratio), FOUR_MP)
    elif isinstance(inputs, m.FluxKontextProInputs):
        if inputs.aspect_ratio is not None:
            size = by_ratio(*_ratio(inputs.aspect_ratio), ONE_MP)
        else:
            size = by_ratio(*source, ONE_MP) if source else (1024, 1024)
    elif isinstance(inputs, m.Flux2KleinInputs):
        size = _flux2_size(inputs, source)
    elif isinstance(inputs, m.FluxProExpandInputs):
        assert source is not None  # image is required and decoded before sizing
        size = (
            source[0] + (inputs.left or 0) + (inputs.right or 0),
            source[1] + (inputs.top or 0) + (inputs.bottom or 0),
        )
    elif isinstance(inputs, m.FluxProFillInputs):
        assert source is not None
        size = source
    else:
        size = by_ratio(*source, ONE_MP) if source else (1024, 1024)
    if size[0] * size[1] > MAX_RENDER_PIXELS:
        raise SizeError("image", f"the output would be {size[0]}x{size[1]}, above 25 MP")
    return size


def _flux2_size(inputs: m.Flux2KleinInputs, source: tuple[int, int] | None) -> tuple[int, int]:
    base = source or (1024, 1024)
    if base[0] * base[1] > FOUR_MP:
        base = by_ratio(*base, FOUR_MP)
    width, height = inputs.width, inputs.height
    if width is None and height is None:
        return base
    if width is None:
        assert height is not None
        width = max(64, round(height * base[0] / base[1]))
    if height is None:
        height = max(64, round(width * base[1] / base[0]))
    if width * height > FOUR_MP:
        raise SizeError("width", f"{width}x{height} is above FLUX.2's 4 megapixels")
    return width, height
