"""``BFL``: the async client. One pooled HTTP client, opened and closed with ``async with``."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from receiver import redact
from receiver.store import Store
from submitter._api import Api
from submitter._endpoints import (
    IMAGE_FIELDS,
    check_metadata,
    is_finetuned,
    model_for,
    validate_body,
)
from submitter._errors import (
    APIStatusError,
    BFLError,
    TaskFailed,
    ValidationError,
    WaitTimeout,
)
from submitter._finetunes import Finetunes
from submitter._http import API_TIMEOUT, RetryPolicy, Sender, certainly_refused
from submitter._images import ImageInput, encode_image
from submitter._limits import Gate
from submitter._receiver_check import preflight
from submitter._registry import open_existing_store
from submitter._settings import (
    Region,
    Settings,
    resolve_connection,
    resolve_webhook,
)
from submitter._types import Result, Task
from submitter.models import Status

log = logging.getLogger("submitter")

USER_AGENT = "bfl-hooks-submitter/0.1"
#: get_result may not know a task for a moment after its submit (or its early webhook).
NOT_FOUND_GRACE = 30.0


class BFL:
    """The whole BFL API, with webhooks filled in and submissions recorded for the receiver::

        async with BFL() as bfl:
            task = await bfl.generate("flux-dev", prompt="a lighthouse", metadata={"chat": 42})

    ``api_key``, ``region`` and ``base_url`` override ``settings`` (read from the environment
    when not given). With ``RECEIVER_WEBHOOK_SECRET`` set, each submit asks BFL to call the
    receiver, with the metadata in the webhook URL, and is recorded in the receiver's store
    when that store exists and answers (never created here); without it, tasks are polled.
    """

    def __init__(
        self,
        api_key: str | None = None,
        region: Region | None = None,
        *,
        settings: Settings | None = None,
        base_url: str | None = None,
        store: Store | None = None,
        webhooks: bool = True,
        per_task_secret: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        max_slot_wait: float = 600.0,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.connection = resolve_connection(
            self.settings, api_key=api_key, region=region, base_url=base_url
        )
        self.webhook = resolve_webhook(self.settings) if webhooks else None
        self.per_task_secret = per_task_secret
        self.notes: dict[str, str] = {}
        """What was assumed for lack of configuration, by topic (``api``, ``webhook``), and
        ``receiver`` once entered if the receiver did not answer its health check."""
        if self.connection.sandbox:
            self.notes["api"] = (
                f"no BFL_API_KEY or BFL_API_URL: using the local sandbox at "
                f"{self.connection.base_url} (bfl-sandbox serve)"
            )
        if self.webhook is None:
            self.notes["webhook"] = (
                "no RECEIVER_WEBHOOK_SECRET: submitting without a webhook (polling only)"
                if webhooks
                else "webhooks off: polling only"
            )
        self._store = store
        self._own_store = False
        self._transport = transport
        self._policy = retry or RetryPolicy(
            attempts=self.settings.retry_attempts, timeout=self.settings.retry_timeout
        )
        self._max_slot_wait = max_slot_wait
        self._client: httpx.AsyncClient | None = None
        self._api: Api | None = None
        self._gate: Gate | None = None
        self._finetunes: Finetunes | None = None

    async def __aenter__(self) -> Self:
        for note in self.notes.values():
            log.info("%s", note)
        redact.install()  # httpx logs URLs; a sample's query is its signature
        self._client = httpx.AsyncClient(
            timeout=API_TIMEOUT,
            transport=self._transport,
            headers={"user-agent": USER_AGENT},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            follow_redirects=False,  # a redirect must not carry the key to another host
        )
        try:
            warning = await preflight(self.connection, self.webhook)
            if warning is not None:
                self.notes["receiver"] = warning
            if self._store is None and self.webhook is not None:
                self._store, warning = await open_existing_store(self.settings.database_url)
                if warning is not None:
                    self.notes["store"] = warning
                self._own_store = self._store is not None
        except BaseException:
            await self._client.aclose()
            raise
        self._api = Api(Sender(self._client, self._policy), self.connection)
        self._gate = Gate(self._store, refresh=self._refresh, max_wait=self._max_slot_wait)
        self._finetunes = Finetunes(
            self._api,
            self.settings.data_dir / "finetunes.json",
            store=self._store,
            # BFL_FINETUNE_WEBHOOK=false: trainings are still recorded, and polled.
            webhook=self.webhook if self.settings.finetune_webhook else None,
            per_task_secret=self.per_task_secret,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client, and the store if this client opened it."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._own_store and self._store is not None:
            await self._store.close()
            self._store = None
            self._own_store = False

    @property
    def api(self) -> Api:
        """The low-level JSON calls (``get``/``post`` with the key on API hosts only)."""
        if self._api is None:
            raise RuntimeError("use the client inside 'async with BFL(...) as bfl:'")
        return self._api

    @property
    def finetunes(self) -> Finetunes:
        """Finetuning: ``create``, ``list``, ``details``, ``delete`` (on the legacy hosts)."""
        if self._finetunes is None:
            raise RuntimeError("use the client inside 'async with BFL(...) as bfl:'")
        return self._finetunes

    @property
    def waiting_for_slot(self) -> str | None:
        """Why a submit is waiting for one of BFL's active-task slots now, else None."""
        return self._gate.waiting if self._gate is not None else None

    @property
    def store(self) -> Store | None:
        """The receiver's store submissions are recorded in (None: polling only)."""
        return self._store

    # -- submitting ---------------------------------------------------------------------------

    async def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Task:
        """Submit ``model`` (e.g. ``"flux-dev"``) with ``prompt`` and the model's parameters.

        Image parameters (``image``, ``mask``, ``control_image``, ``input_image``...) take a
        Path, bytes or a PIL image (encoded here) or a string sent as is (base64 or a URL).
        Everything is validated before anything is sent; ``metadata`` reaches the handlers.
        """
        body: dict[str, Any] = dict(params)
        if prompt is not None:
            body["prompt"] = prompt
        for name in sorted(IMAGE_FIELDS & body.keys()):
            if body[name] is not None:
                body[name] = await encode_image(body[name], name, str_is_path=False)
        return await self.submit(model, body, metadata=metadata)

    async def edit(
        self,
        image: ImageInput,
        prompt: str,
        *,
        model: str = "flux-kontext-pro",
        references: Sequence[ImageInput] = (),
        metadata: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Task:
        """Edit ``image`` (a path, bytes or PIL image; 20 MB / 20 MP at most) as ``prompt`` says.

        ``references`` are more input images (``input_image_2``...) for models that take them.
        """
        fields = model_for(model).model_fields
        if "input_image" not in fields:
            raise ValidationError.one(
                ("model",), f"{model} does not edit an input_image; use generate(image=...)"
            )
        names = ["input_image", *(f"input_image_{n}" for n in range(2, 2 + len(references)))]
        missing = [n for n in names if n not in fields]
        if missing:
            raise ValidationError.one(("references",), f"{model} takes no {missing[0]}")
        body: dict[str, Any] = dict(params, prompt=prompt)
        for name, value in zip(names, (image, *references), strict=True):
            body[name] = await encode_image(value, name)
        return await self.submit(model, body, metadata=metadata)

    async def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        metadata: Mapping[str, Any] | None = None,
        region: str | None = None,
        ref: str | None = None,
    ) -> Task:
        """POST ``body`` to ``/v1/<endpoint>``: validate, wait for a free slot, record, send.

        Finetuned endpoints go to the legacy host of their finetune's region (``region``
        overrides). The webhook URL and a per-task secret are added when webhooks are on.
        ``ref`` is the submission's reference in the store (random by default; a caller that
        logs it first can find the submission again after a crash).
        """
        meta = check_metadata(metadata)
        sent = validate_body(endpoint, body)
        if is_finetuned(endpoint):
            region = region or await self.finetunes.region_of(str(sent["finetune_id"]))
        store = self._store
        ref = ref or secrets.token_urlsafe(16)
        in_url = False
        if self.webhook is not None and "webhook_url" not in sent:
            # The metadata travels in the URL, bound to the secret (receiver.correlation): it
            # reaches the handlers even when no store is shared with the receiver.
            sent.update(self.webhook.fields(ref, per_task=self.per_task_secret, metadata=meta))
            in_url = self.per_task_secret
            sent = validate_body(endpoint, sent)  # the URL too must fit (2083 characters)
        gate = self._gate
        assert gate is not None

        async def record() -> None:
            if store is not None:
                await store.prepare_submission(ref, endpoint, meta)

        token = await gate.enter(endpoint, record)
        try:
            answer = await self.api.post(self.api.url(endpoint, region), sent, idempotent=False)
            task_id = answer.get("id")
            if not isinstance(task_id, str) or not task_id:
                raise APIStatusError(f"POST /v1/{endpoint}: the answer has no task id", 200)
        except BaseException as exc:
            gate.release(token)
            if store is not None and certainly_refused(exc):
                await store.forget_submission(ref)
            raise
        polling_url = answer.get("polling_url")
        polling_url = polling_url if isinstance(polling_url, str) and polling_url else None
        if store is not None:
            await store.bind_submission(ref, task_id, polling_url)
        task = Task(
            id=task_id,
            endpoint=endpoint,
            polling_url=polling_url,
            ref=ref if store is not None or in_url else None,
            cost=_number(answer.get("cost")),
            input_mp=_number(answer.get("input_mp")),
            output_mp=_number(answer.get("output_mp")),
            metadata=meta,
            submitted_at=time.time(),
            webhook="webhook_url" in sent,
            region=region,
        )
        gate.bound(token, task)
        return task

    # -- results ------------------------------------------------------------------------------

    async def result(self, task: Task | str) -> Result:
        """One get_result, at the task's ``polling_url`` exactly as BFL returned it."""
        task_id = task if isinstance(task, str) else task.id
        url = None if isinstance(task, str) else task.polling_url
        if url is None:
            # Only when BFL gave none: ask the host the task was submitted to.
            region = None if isinstance(task, str) else task.region
            url = f"{self.api.url('get_result', region)}?id={task_id}"
        result = Result.from_json(await self.api.get(url), task_id)
        if result.status.terminal and result.status is not Status.NOT_FOUND:
            assert self._gate is not None
            self._gate.finished(task_id)
        return result

    async def wait(
        self,
        task: Task | str,
        *,
        interval: float = 0.5,
        timeout: float | None = 600.0,  # noqa: ASYNC109 - bounds the polling, not one await
    ) -> Result:
        """Poll until the task ends (the docs' 0.5 s by default); the final Result.

        "Task not found" counts as still pending for a grace period after the submit (BFL may
        not know a task for a moment). Raises WaitTimeout after ``timeout`` seconds.
        """
        started = time.monotonic()
        submitted = task.submitted_at if isinstance(task, Task) else time.time()
        while True:
            result = await self.result(task)
            young = time.time() - submitted < NOT_FOUND_GRACE
            if result.status.terminal and not (result.status is Status.NOT_FOUND and young):
                if self._gate is not None:
                    self._gate.finished(result.id)
                return result
            if timeout is not None and time.monotonic() - started + interval > timeout:
                raise WaitTimeout(f"task {result.id} still {result.status.value}", result)
            await asyncio.sleep(interval)

    async def download(self, result: Result, path: str | os.PathLike[str]) -> Path:
        """Save a Ready result's image at ``path`` (written aside, then renamed into place).

        The sample URL lives about 10 minutes; the API key is never sent to it.
        """
        result.raise_for_status()
        sample = result.sample
        if sample is None:
            raise TaskFailed(f"task {result.id} has no image ({result.status.value})", result)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        try:
            with partial.open("wb") as sink:
                await self.api.sender.stream_to(sample, sink)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    async def credits(self) -> float:
        """The account's credit balance."""
        answer = await self.api.get(self.api.url("credits"))
        value = _number(answer.get("credits"))
        if value is None:
            raise APIStatusError("GET /v1/credits: no credits in the answer", 200)
        return value

    async def _refresh(self, tasks: list[Task]) -> None:
        """Without a store: learn whether the oldest tasks ended, to free their slots."""
        for task in tasks:
            try:
                await self.result(task)
            except BFLError as exc:
                log.debug("polling %s to free a slot failed: %s", task.id, exc)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
