"""Finetuning inputs and memory: the training ZIP, and which region each finetune lives in.

BFL trains a finetune on one legacy regional host (api.eu1 / api.us1) and serves it nowhere
else, so every later call must go back there. The region is remembered in a small JSON file
under the data dir; a finetune made elsewhere is looked up in each region's ``my_finetunes``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from submitter._errors import ValidationError
from submitter._images import inspect_bytes
from submitter.imagecheck import MAX_IMAGE_BYTES

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
CAPTION_SUFFIX = ".txt"
MAX_TRAINING_IMAGES = 20
#: A caption is a sentence or two; a bigger .txt is a mistake.
MAX_CAPTION_BYTES = 64 * 1024


def _fail(msg: str) -> ValidationError:
    return ValidationError.one(("file_data",), msg, "training_data")


def _skipped(path: PurePosixPath) -> bool:
    """Folders' junk: macOS resource forks and hidden files (.DS_Store, editors' backups)."""
    return path.parts[0] == "__MACOSX" or any(p.startswith(".") for p in path.parts)


def _check_members(members: Iterable[tuple[PurePosixPath, bytes]]) -> None:
    images: set[str] = set()
    captions: set[str] = set()
    for path, data in members:
        suffix = path.suffix.lower()
        stem = str(path.with_suffix(""))
        if suffix == CAPTION_SUFFIX:
            if len(data) > MAX_CAPTION_BYTES:
                raise _fail(f"{path}: a caption larger than 64 KB")
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise _fail(f"{path}: caption is not UTF-8 text") from None
            captions.add(stem)
            continue
        if suffix not in IMAGE_SUFFIXES:
            raise _fail(f"{path}: unsupported file (jpg, jpeg, png, webp and .txt captions only)")
        try:
            inspect_bytes(data, "file_data")
        except ValidationError as exc:
            raise _fail(f"{path}: {exc.errors[0]['msg']}") from None
        images.add(stem)
    if not images:
        raise _fail("no training images (jpg, jpeg, png, webp)")
    if len(images) > MAX_TRAINING_IMAGES:
        raise _fail(f"{len(images)} training images; BFL takes 1 to {MAX_TRAINING_IMAGES}")
    orphans = sorted(captions - images)
    if orphans:
        raise _fail(f"captions without a same-named image: {', '.join(orphans)}")


def _folder_members(folder: Path) -> list[tuple[PurePosixPath, bytes]]:
    members = []
    for path in sorted(folder.rglob("*")):
        rel = PurePosixPath(path.relative_to(folder).as_posix())
        if path.is_dir() or _skipped(rel):
            continue
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise _fail(f"{rel}: larger than 20 MB")
        members.append((rel, path.read_bytes()))
    return members


def _zip_members(archive: bytes) -> list[tuple[PurePosixPath, bytes]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(archive))
    except (zipfile.BadZipFile, ValueError):
        raise _fail("not a ZIP archive") from None
    members = []
    with zf:
        for info in zf.infolist():
            rel = PurePosixPath(info.filename)
            if info.is_dir() or _skipped(rel):
                continue
            if info.file_size > MAX_IMAGE_BYTES:
                raise _fail(f"{rel}: larger than 20 MB")
            try:
                with zf.open(info) as member:
                    data = member.read(MAX_IMAGE_BYTES + 1)  # the header may lie about sizes
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                raise _fail(f"{rel}: cannot be read ({exc})") from None
            if len(data) > MAX_IMAGE_BYTES:
                raise _fail(f"{rel}: larger than 20 MB")
            members.append((rel, data))
    return members


def training_zip(source: Path) -> bytes:
    """The ZIP to upload for ``source`` (a folder, zipped here, or a ZIP), once checked:
    1-20 jpg/jpeg/png/webp images, each with an optional same-named ``.txt`` caption."""
    try:
        if source.is_dir():
            members = _folder_members(source)
            _check_members(members)
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w") as zf:
                for rel, data in members:
                    # Images are compressed already; deflating them again only costs time.
                    kind = zipfile.ZIP_DEFLATED if rel.suffix == CAPTION_SUFFIX else 0
                    zf.writestr(str(rel), data, compress_type=kind)
            return out.getvalue()
        if not source.is_file():
            raise _fail(f"{source}: no such file or folder")
        if source.stat().st_size > (MAX_TRAINING_IMAGES + 1) * MAX_IMAGE_BYTES:
            raise _fail(f"{source}: too large for 20 images of 20 MB")
        archive = source.read_bytes()
    except OSError as exc:
        raise _fail(f"{source}: cannot be read ({exc.strerror or exc})") from None
    return check_zip(archive)


def check_zip(archive: bytes) -> bytes:
    """``archive`` itself, once its members passed the same checks as a folder's files."""
    _check_members(_zip_members(archive))
    return archive


class RegionBook:
    """finetune id → legacy region, kept in ``<data_dir>/finetunes.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: the API is asked again, and the file rewritten
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, finetune_id: str) -> str | None:
        return self._load().get(finetune_id)

    def put(self, finetune_id: str, region: str) -> None:
        self.put_many({finetune_id: region})

    def put_many(self, regions: dict[str, str]) -> None:
        book = self._load()
        if any(book.get(k) != v for k, v in regions.items()):
            self._save({**book, **regions})

    def drop(self, finetune_id: str) -> None:
        book = self._load()
        if book.pop(finetune_id, None) is not None:
            self._save(book)

    def _save(self, book: dict[str, str]) -> None:
        # Write then rename: a crash never leaves half a file.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".finetunes.")
        with os.fdopen(fd, "w") as out:
            json.dump(book, out, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
