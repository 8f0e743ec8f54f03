"""BFL's limits on input images (20 MB, 20 megapixels), checked the same way by the client and
the sandbox. Only the header is decoded before the limits, so a decompression bomb costs
nothing."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

#: The docs: input images "up to 20MB or 20 megapixels".
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 20_000_000


class ImageRejected(ValueError):
    """The bytes are not an image BFL would take; the message says why."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    size: tuple[int, int]
    format: str
    has_alpha: bool


def check_image(data: bytes) -> ImageInfo:
    """What the image in ``data`` is, if it is one within BFL's limits."""
    if not data:
        raise ImageRejected("image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRejected(f"image is {len(data) / 1e6:.1f} MB; BFL takes at most 20 MB")
    try:
        with warnings.catch_warnings():
            # Pillow warns, then refuses, on huge images; both mean the same here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                size, fmt, mode = img.size, img.format or "", img.mode
                has_alpha = mode in ("RGBA", "LA", "PA") or "transparency" in img.info
                if size[0] * size[1] <= MAX_IMAGE_PIXELS:
                    img.verify()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ):
        raise ImageRejected("not an image (JPEG, PNG or WebP expected)") from None
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageRejected(f"image is {size[0]}x{size[1]}, above BFL's 20 megapixels")
    return ImageInfo(size, fmt, has_alpha)
