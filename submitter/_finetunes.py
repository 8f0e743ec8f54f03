"""Finetuning operations, on the legacy regional hosts where BFL serves them."""

from __future__ import annotations

import asyncio
import base64
import builtins
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from receiver.store import Store
from receiver.store.base import FINETUNE_ENDPOINT
from submitter._api import Api
from submitter._endpoints import check_metadata, validate_with
from submitter._errors import APIStatusError, ValidationError
from submitter._http import certainly_refused
from submitter._settings import LEGACY_REGIONS, Webhook
from submitter._training import RegionBook, check_zip, training_zip
from submitter._types import Task
from submitter.models import FinetuneInputs

#: The endpoint, which is also the submissions' endpoint the receiver knows a training by.
FINETUNE = FINETUNE_ENDPOINT
#: Where a finetune is trained when no region is asked for (the docs' examples use us1).
DEFAULT_REGION = "us1"


class Finetunes:
    """``bfl.finetunes``: create, list, details, delete; each finetune's region remembered.

    With a store (webhooks configured), ``create`` records the training as a submission, as
    generations are, so the receiver hands its end to ``on("finetune")`` handlers with the
    metadata: by webhook when ``webhook`` is given (and BFL sends one), else by polling.
    """

    def __init__(
        self,
        api: Api,
        book: Path,
        default_region: str = DEFAULT_REGION,
        *,
        store: Store | None = None,
        webhook: Webhook | None = None,
        per_task_secret: bool = True,
    ) -> None:
        self.api = api
        self.book = RegionBook(book)
        self.default_region = default_region
        self.store = store
        self.webhook = webhook
        self.per_task_secret = per_task_secret

    async def create(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        mode: str = "general",
        comment: str | None = None,
        trigger_word: str = "TOK",
        region: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Task:
        """Train a finetune on ``source``: a folder (zipped here), a ZIP file or ZIP bytes.

        The training set is checked first: 1-20 jpg/jpeg/png/webp images, captions as
        same-named ``.txt`` files. With a store, the training is recorded with ``metadata``
        and its end reaches the receiver's ``on("finetune")`` handlers (webhook or polling);
        ``details`` or ``wait`` on the returned task follow it from here.
        """
        meta = check_metadata(metadata)
        region = _legacy(region or self.default_region)
        if comment is None:
            comment = Path(source).stem if not isinstance(source, bytes) else "bfl-hooks"
        body: dict[str, Any] = {
            "mode": mode,
            "finetune_comment": comment,
            "trigger_word": trigger_word,
            **params,
        }
        # Parameters first, with a stand-in for the data: a typo fails before any zipping.
        validate_with(FinetuneInputs, FINETUNE, {**body, "file_data": ""})
        if isinstance(source, bytes):
            archive = await asyncio.to_thread(check_zip, source)
        else:
            archive = await asyncio.to_thread(training_zip, Path(source))
        body["file_data"] = base64.b64encode(archive).decode("ascii")
        ref = secrets.token_urlsafe(16)
        if self.webhook is not None and "webhook_url" not in body:
            body.update(self.webhook.fields(ref, per_task=self.per_task_secret, metadata=meta))
        sent = validate_with(FinetuneInputs, FINETUNE, body)
        store = self.store
        if store is not None:
            await store.prepare_submission(ref, FINETUNE, meta)
        try:
            # Not retried on 5xx: a second POST would train (and charge) a second finetune.
            answer = await self.api.post(self.api.url(FINETUNE, region), sent, idempotent=False)
            finetune_id = answer.get("finetune_id") or answer.get("id")
            if not isinstance(finetune_id, str) or not finetune_id:
                raise APIStatusError("POST /v1/finetune: the answer has no finetune id", 200)
        except BaseException as exc:
            if store is not None and certainly_refused(exc):
                await store.forget_submission(ref)
            raise
        self.book.put(finetune_id, region)
        polling_url = answer.get("polling_url")
        if not isinstance(polling_url, str) or not polling_url:
            # BFL's docs poll a training at get_result on its own legacy host.
            polling_url = f"{self.api.url('get_result', region)}?id={finetune_id}"
        if store is not None:
            await store.bind_submission(ref, finetune_id, polling_url)
        return Task(
            id=finetune_id,
            endpoint=FINETUNE,
            polling_url=polling_url,
            ref=ref if store is not None else None,
            metadata=meta,
            submitted_at=time.time(),
            webhook="webhook_url" in sent,
            region=region,
        )

    async def list(self, region: str | None = None) -> builtins.list[dict[str, Any]]:
        """``{"finetune_id", "region"}`` for every finetune of the key (both regions by
        default)."""
        found: builtins.list[dict[str, Any]] = []
        for name in [_legacy(region)] if region else LEGACY_REGIONS:
            for finetune_id in await self._ids(name):
                found.append({"finetune_id": finetune_id, "region": name})
        return found

    async def details(self, finetune_id: str) -> dict[str, Any]:
        """The training parameters and status of ``finetune_id``, from its own region."""
        region = await self.region_of(finetune_id)
        answer = await self.api.get(
            self.api.url("finetune_details", region), params={"finetune_id": finetune_id}
        )
        details = answer.get("finetune_details")
        if not isinstance(details, dict):
            raise APIStatusError("GET /v1/finetune_details: no finetune_details", 200)
        return {"region": region, **details}

    async def delete(self, finetune_id: str) -> dict[str, Any]:
        """Delete ``finetune_id``; inference with it fails from then on."""
        region = await self.region_of(finetune_id)
        # Deleting is idempotent in effect, so a 5xx may be retried safely.
        answer = await self.api.post(
            self.api.url("delete_finetune", region), {"finetune_id": finetune_id}, idempotent=True
        )
        self.book.drop(finetune_id)
        return answer

    async def region_of(self, finetune_id: str) -> str:
        """The legacy region ``finetune_id`` lives in: remembered, or asked of each region."""
        known = self.book.get(finetune_id)
        if known in LEGACY_REGIONS:
            return known
        for region in LEGACY_REGIONS:
            if finetune_id in await self._ids(region):
                return region
        raise ValidationError.one(
            ("body", "finetune_id"),
            f"finetune {finetune_id!r} is in neither {' nor '.join(LEGACY_REGIONS)}",
        )

    async def _ids(self, region: str) -> builtins.list[str]:
        answer = await self.api.get(self.api.url("my_finetunes", region))
        items = answer.get("finetunes")
        ids: builtins.list[str] = []
        for item in items if isinstance(items, list) else []:
            # The spec leaves the items untyped: ids, or objects that carry one.
            value = item.get("finetune_id") or item.get("id") if isinstance(item, dict) else item
            if isinstance(value, str):
                ids.append(value)
        self.book.put_many(dict.fromkeys(ids, region))
        return ids


def _legacy(region: str) -> str:
    """``eu1``/``us1``; ``eu``/``us`` are taken to mean their legacy host."""
    name = {"eu": "eu1", "us": "us1"}.get(region, region)
    if name not in LEGACY_REGIONS:
        raise ValidationError.one(
            ("region",), f"finetunes live in {' or '.join(LEGACY_REGIONS)}, not {region!r}"
        )
    return name
