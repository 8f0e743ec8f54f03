"""Input images: a path, bytes or a PIL image in; base64 out, within BFL's 20 MB / 20 MP.

Only the header is decoded before the limits are checked, so a decompression bomb costs
nothing. All of it runs in a thread: encoding 20 MB must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from pathlib import Path
from typing import Any, TypeAlias

from PIL import Image

from submitter._errors import ValidationError
from submitter.imagecheck import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageRejected, check_image

#: What ``edit`` and image fields accept: a path, raw bytes, a PIL image, or a URL / data: URI
#: (strings starting with ``http://``, ``https://`` or ``data:`` are sent as they are).
ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | Image.Image"


def _fail(field: str, msg: str) -> ValidationError:
    return ValidationError.one(("body", field), msg, "image")


def inspect_bytes(data: bytes, field: str) -> tuple[int, int]:
    """The size of the image in ``data``, if it is one within the limits."""
    try:
        return check_image(data).size
    except ImageRejected as exc:
        raise _fail(field, str(exc)) from None


def _read_path(path: Path, field: str) -> bytes:
    try:
        if not path.is_file():
            raise _fail(field, f"{path}: no such file")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise _fail(field, f"{path}: larger than 20 MB")
        return path.read_bytes()
    except OSError as exc:
        raise _fail(field, f"{path}: cannot be read ({exc.strerror or exc})") from None


def _encode_pil(img: Image.Image, field: str) -> bytes:
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise _fail(field, f"image is {img.width}x{img.height}, above BFL's 20 megapixels")
    fmt = img.format if img.format in ("JPEG", "PNG", "WEBP") else "PNG"
    if img.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I"):
        img = img.convert("RGBA" if "A" in img.mode else "RGB")
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def _passthrough(value: Any, str_is_path: bool) -> bool:
    if not isinstance(value, str):
        return False
    return not str_is_path or value.startswith(("http://", "https://", "data:"))


def encode_image_sync(value: Any, field: str, *, str_is_path: bool = True) -> str:
    """``value`` as the string a BFL image field takes (see ImageInput).

    With ``str_is_path=False`` a string is taken to be base64 or a URL already and sent as is.
    """
    if _passthrough(value, str_is_path):
        return str(value)
    if isinstance(value, str | os.PathLike):
        data = _read_path(Path(value), field)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, Image.Image):
        data = _encode_pil(value, field)
    else:
        raise _fail(field, f"expected a path, bytes or a PIL image, not {type(value).__name__}")
    inspect_bytes(data, field)
    return base64.b64encode(data).decode("ascii")


async def encode_image(value: Any, field: str, *, str_is_path: bool = True) -> str:
    """encode_image_sync in a thread, unless there is nothing to encode."""
    if _passthrough(value, str_is_path):
        return str(value)
    return await asyncio.to_thread(encode_image_sync, value, field, str_is_path=str_is_path)
