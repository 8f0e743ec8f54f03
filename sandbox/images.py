"""Real images with Pillow: deterministic for (prompt, seed), edits visibly from their input.

Not art: a gradient, a few shapes and the prompt written on it, so a test (or a person) can
tell which request produced which file, and that an edit started from the given image.
"""

from __future__ import annotations

import hashlib
import random
import textwrap
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from typing import Literal

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps, features

Mode = Literal["generate", "edit", "fill", "expand", "control"]
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
#: How much of the generated scene shows through an edit: the input must stay recognisable.
EDIT_BLEND = 0.3

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class RenderSpec:
    """Everything that decides the pixels of one result."""

    prompt: str
    seed: int
    size: tuple[int, int]
    output_format: str = "jpeg"
    mode: Mode = "generate"
    source: bytes | None = None
    """The input image an edit, fill, expand or control request starts from."""
    mask: bytes | None = None
    """Fill: white is repainted; without it, the source's transparent pixels are."""
    offset: tuple[int, int] = (0, 0)
    """Expand: where the source sits on the larger canvas."""
    badge: str | None = None
    """Finetuned inference: the trigger word, drawn in a corner."""


def render(spec: RenderSpec) -> bytes:
    """The encoded image for ``spec`` (CPU-bound: run it in a thread)."""
    image = _scene(spec.prompt, spec.seed, spec.size)
    if spec.source is not None and spec.mode != "generate":
        image = _derive(spec, image)
    _caption(image, spec)
    return encode(image, spec.output_format)


def encode(image: Image.Image, output_format: str) -> bytes:
    """``image`` as JPEG, PNG or WebP bytes."""
    buffer = BytesIO()
    if output_format == "png":
        image.save(buffer, "PNG", compress_level=1)  # speed over size: tests download many
    elif output_format == "webp":
        image.save(buffer, "WEBP", quality=80)
    else:
        image.convert("RGB").save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def _scene(prompt: str, seed: int, size: tuple[int, int]) -> Image.Image:
    # Reproducible pictures, not secrets: a seeded PRNG is the point.
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"), which is still a distinct prompt.
    key = f"{seed}\x00{prompt}".encode("utf-8", "surrogatepass")
    rng = random.Random(hashlib.sha256(key).digest())  # noqa: S311
    width, height = size

    def color() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    gradient = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270))).resize(size)
    image = ImageOps.colorize(gradient, color(), color())
    draw = ImageDraw.Draw(image, "RGBA")
    for _ in range(rng.randint(4, 9)):
        cx, cy = rng.random() * width, rng.random() * height
        radius = rng.uniform(0.05, 0.3) * min(width, height)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = (*color(), 170)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    return image


def _open_rgb(data: bytes, mode: str = "RGB") -> Image.Image:
    with Image.open(BytesIO(data)) as img:
        img.load()
        return img.convert(mode)


def _derive(spec: RenderSpec, scene: Image.Image) -> Image.Image:
    assert spec.source is not None
    if spec.mode == "expand":
        scene.paste(_open_rgb(spec.source), spec.offset)
        return scene
    if spec.mode == "fill":
        source = _open_rgb(spec.source, "RGBA")
        if spec.mask is not None:
            mask = _open_rgb(spec.mask, "L").resize(source.size)
        elif source.getchannel("A").getextrema()[0] != 255:
            mask = ImageOps.invert(source.getchannel("A"))  # transparent pixels get painted
        else:
            mask = Image.new("L", source.size, 255)
        return Image.composite(scene, source.convert("RGB"), mask)
    if spec.mode == "control":
        edges = _open_rgb(spec.source, "L").filter(ImageFilter.FIND_EDGES).resize(spec.size)
        white = Image.new("RGB", spec.size, (255, 255, 255))
        return Image.composite(white, scene, edges)
    base = ImageOps.fit(_open_rgb(spec.source), spec.size)
    return Image.blend(base, scene, EDIT_BLEND)


@cache
def _font(size: int) -> Font:
    if features.check("freetype2"):
        return ImageFont.load_default(size=size)
    return ImageFont.load_default()


def _caption(image: Image.Image, spec: RenderSpec) -> None:
    width, height = image.size
    size = max(10, min(width, height) // 24)
    font = _font(size)
    chars = max(8, int(width / (size * 0.6)))
    printable = spec.prompt[:1000].encode("utf-8", "replace").decode()
    lines = textwrap.wrap(printable, chars)[:3] or ["(no prompt)"]
    lines.append(f"seed {spec.seed} · bfl sandbox")
    draw = ImageDraw.Draw(image, "RGBA")
    top = height - (len(lines) * size * 1.25 + size)
    draw.rectangle((0, top, width, height), fill=(0, 0, 0, 140))
    for i, line in enumerate(lines):
        draw.text((size // 2, top + size // 2 + i * size * 1.25), line, fill="white", font=font)
    if spec.badge:
        draw.rectangle((0, 0, width, size * 2), fill=(255, 255, 255, 200))
        draw.text((size // 2, size // 2), spec.badge, fill="black", font=font)
