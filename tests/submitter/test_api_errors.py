"""The error tree from the Python API: what is retried, what is not, and what it costs."""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import submitter
from receiver.store import opened_store
from receiver.verify import derive_bound_secret, derive_secret
from submitter._http import parse_retry_after
from tests.servers import loopback_socket, serve
from tests.submitter.conftest import CountingTransport, World, sandbox

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def offline(tmp_path: Path, api_url: str, **overrides: Any) -> submitter.Settings:
    """Settings for a client that submits without a webhook, to ``api_url``."""
    values: dict[str, Any] = {
        "api_key": "k",
        "api_url": api_url,
        "webhook_secret": (),
        "data_dir": tmp_path / "submitter",
        "retry_attempts": 3,
        "retry_timeout": 10.0,
    }
    values.update(overrides)
    return submitter.Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Scripted:
    """A loopback BFL stand-in that answers from a script, and keeps what it was sent."""

    def __init__(self, *answers: Response) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, float]] = []
        self.bodies: list[Any] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.answer, methods=["GET", "POST"])])

    async def answer(self, request: Request) -> Response:
        self.seen.append((request.method, time.monotonic()))
        if request.method == "POST":
            self.bodies.append(await request.json())
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


ACCEPTED = JSONResponse({"id": "t1", "polling_url": "http://127.0.0.1:9/v1/get_result?id=t1"})


async def test_client_side_validation_sends_nothing(world: World, tmp_path: Path) -> None:
    transport = CountingTransport()
    async with submitter.BFL(settings=world.settings(tmp_path), transport=transport) as bfl:
        with pytest.raises(submitter.ValidationError) as bad_width:
            await bfl.generate("flux-dev", "x", width=1000)
        with pytest.raises(submitter.ValidationError) as unknown_field:
            await bfl.generate("flux-dev", "x", aspect_ratio="16:9")
        with pytest.raises(submitter.ValidationError) as unknown_model:
            await bfl.generate("flux-nonesuch", "x")
        with pytest.raises(submitter.ValidationError):
            await bfl.generate("flux-kontext-pro", "x", aspect_ratio="50:1")
        with pytest.raises(submitter.ValidationError):
            await bfl.generate("flux-dev", "x", metadata={"when": object()})
        with pytest.raises(submitter.ValidationError):
            await bfl.generate("flux-dev", "x", metadata={1: "non-string key"})  # type: ignore[dict-item]
        with pytest.raises(submitter.ValidationError):
            await bfl.edit(b"not an image", "x")
        with pytest.raises(submitter.ValidationError, match="does not edit"):
            await bfl.edit(tmp_path / "missing.png", "x", model="flux-dev")
        with pytest.raises(submitter.ValidationError, match="no such file"):
            await bfl.edit(tmp_path / "missing.png", "x")
        with pytest.raises(submitter.ValidationError, match="20 megapixels"):
            await bfl.edit(Image.new("1", (5000, 4100)), "too many pixels")
    assert bad_width.value.status_code is None
    assert bad_width.value.errors[0]["loc"] == ["body", "width"]
    assert "aspect_ratio" in str(unknown_field.value)
    assert "flux-nonesuch" in str(unknown_model.value)
    assert transport.sent == []


async def test_oversized_image_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    with big.open("wb") as out:
        out.truncate(21 * 1024 * 1024)  # sparse: 21 MB on paper, nothing on disk
    async with submitter.BFL(settings=offline(tmp_path, "http://127.0.0.1:9")) as bfl:
        with pytest.raises(submitter.ValidationError, match="20 MB"):
            await bfl.edit(big, "too big")


async def test_server_side_422_forgets_the_submission(world: World, tmp_path: Path) -> None:
    # A store of its own: the shared receiver's also counts other tests' tasks, which end
    # (and stop counting) while this test runs.
    own = world.settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'own.db'}")
    async with opened_store(own.database_url):
        pass  # the receiver's store exists: the submitter registers only into one that does
    async with submitter.BFL(settings=own) as bfl:
        store = bfl.store
        assert store is not None
        with pytest.raises(submitter.ValidationError) as refused:
            await bfl.submit(
                "flux-dev", {"prompt": "x [sandbox:no-such-fault]"}, metadata={"a": 1}, ref="r-422"
            )
        assert await store.get_submission(ref="r-422") is None
        assert await store.active_submissions(within=3600) == 0
    assert refused.value.status_code == 422
    assert refused.value.errors[0]["loc"] == ["header", "x-sandbox-fault"]


async def test_out_of_credits_is_not_retried(tmp_path: Path) -> None:
    transport = CountingTransport()
    with sandbox(credits=3) as api:
        async with submitter.BFL(settings=offline(tmp_path, api), transport=transport) as bfl:
            await bfl.generate("flux-dev", "affordable")
            with pytest.raises(submitter.OutOfCredits) as broke:
                await bfl.generate("flux-dev", "one too many")
    assert broke.value.status_code == 402
    assert transport.count("POST") == 2


async def test_429_waits_and_retries_until_a_slot_frees(tmp_path: Path) -> None:
    transport = CountingTransport()
    with sandbox(max_active_tasks=1, task_seconds=0.6) as api:
        # Another client of the same key holds the only slot; our limiter cannot know it.
        async with httpx.AsyncClient() as other:
            busy = await other.post(f"{api}/v1/flux-dev", json={}, headers={"x-key": "k"})
        assert busy.status_code == 200
        async with submitter.BFL(settings=offline(tmp_path, api), transport=transport) as bfl:
            task = await bfl.generate("flux-dev", "patient")
    assert task.id
    assert transport.count("POST") >= 2


async def test_429_after_the_retries_is_rate_limited(tmp_path: Path) -> None:
    with sandbox(max_active_tasks=1, task_seconds=30) as api:
        async with httpx.AsyncClient() as other:
            await other.post(f"{api}/v1/flux-dev", json={}, headers={"x-key": "k"})
        retry = submitter.RetryPolicy(attempts=2, wait_initial=0.05, wait_max=0.1)
        async with submitter.BFL(settings=offline(tmp_path, api), retry=retry) as bfl:
            with pytest.raises(submitter.RateLimited) as limited:
                await bfl.generate("flux-dev", "never")
    assert limited.value.status_code == 429


async def test_retry_after_as_an_http_date_is_honoured(tmp_path: Path) -> None:
    later = email.utils.formatdate(time.time() + 2, usegmt=True)
    script = Scripted(
        JSONResponse({"detail": "busy"}, status_code=429, headers={"Retry-After": later}),
        ACCEPTED,
    )
    with serve(script.app) as url:
        async with submitter.BFL(settings=offline(tmp_path, url)) as bfl:
            task = await bfl.generate("flux-dev", "later")
    assert task.id == "t1"
    (_, first), (_, second) = script.seen
    assert second - first >= 0.9  # the date has whole seconds: at least 1 s of the 2 is left


def test_retry_after_parsing() -> None:
    now = 1_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after(None, now) is None


async def test_a_submit_is_not_resent_after_a_5xx(tmp_path: Path) -> None:
    # BFL may have created (and charged) the task before failing to answer.
    script = Scripted(JSONResponse({"detail": "oops"}, status_code=503), ACCEPTED)
    with serve(script.app) as url:
        async with submitter.BFL(settings=offline(tmp_path, url)) as bfl:
            with pytest.raises(submitter.ServerError):
                await bfl.generate("flux-dev", "once")
    assert [method for method, _ in script.seen] == ["POST"]


async def test_a_submit_is_resent_when_the_connection_was_refused(tmp_path: Path) -> None:
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: the request never reaches a server
    transport = CountingTransport()
    retry = submitter.RetryPolicy(attempts=3, wait_initial=0.01, wait_max=0.02)
    settings = offline(tmp_path, f"http://127.0.0.1:{port}")
    async with submitter.BFL(settings=settings, transport=transport, retry=retry) as bfl:
        with pytest.raises(submitter.TransportError):
            await bfl.generate("flux-dev", "nobody home")
    assert transport.count("POST") == 3


async def test_wrong_key_is_an_auth_error_that_never_shows_the_key(tmp_path: Path) -> None:
    with sandbox(api_keys=("the-right-key",)) as api:
        settings = offline(tmp_path, api, api_key="sk-wrong-0123456789")
        async with submitter.BFL(settings=settings) as bfl:
            with pytest.raises(submitter.AuthError) as refused:
                await bfl.credits()
    assert refused.value.status_code == 401
    assert "sk-wrong-0123456789" not in str(refused.value)
    assert "sk-wrong" not in repr(settings)


async def test_expired_sample_url_is_an_auth_error(tmp_path: Path) -> None:
    with sandbox(delivery_ttl_seconds=0.1, task_seconds=0.1) as api:
        async with submitter.BFL(settings=offline(tmp_path, api)) as bfl:
            task = await bfl.generate("flux-dev", "ephemeral")
            result = await bfl.wait(task, interval=0.1)
            await asyncio.sleep(1.3)  # se= is rounded up to whole seconds: let it pass
            with pytest.raises(submitter.AuthError):
                await bfl.download(result, tmp_path / "late.jpg")
    left = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert "late.jpg" not in left
    assert ".late.jpg.part" not in left


async def test_failed_task_raises_task_failed_on_download(tmp_path: Path) -> None:
    with sandbox(task_seconds=0.1) as api:
        async with submitter.BFL(settings=offline(tmp_path, api)) as bfl:
            task = await bfl.generate("flux-dev", "no [sandbox:error]")
            result = await bfl.wait(task, interval=0.1)
            assert result.status is submitter.Status.ERROR
            with pytest.raises(submitter.TaskFailed):
                await bfl.download(result, tmp_path / "none.jpg")
            with pytest.raises(submitter.WaitTimeout):
                await bfl.wait(await bfl.generate("flux-dev", "slow"), timeout=0.05)


async def test_unusable_answers_are_api_errors(tmp_path: Path) -> None:
    script = Scripted(Response("<html>proxy error</html>", media_type="text/html"))
    with serve(script.app) as url:
        async with submitter.BFL(settings=offline(tmp_path, url)) as bfl:
            with pytest.raises(submitter.APIStatusError):
                await bfl.generate("flux-dev", "html")
            with pytest.raises(submitter.APIStatusError):
                await bfl.credits()


@pytest.mark.parametrize("per_task", [True, False])
async def test_webhook_fields_carry_a_per_task_or_the_shared_secret(
    tmp_path: Path, per_task: bool
) -> None:
    script = Scripted(ACCEPTED)
    with serve(script.app) as url:
        settings = offline(
            tmp_path,
            url,
            webhook_secret="master-secret,older-secret",
            public_url="http://127.0.0.1:9/base/",
            database_url=f"sqlite:///{tmp_path}/r.db",
        )
        async with submitter.BFL(settings=settings, per_task_secret=per_task) as bfl:
            task = await bfl.generate("flux-dev", "hooked", metadata={"chat": 1})
    (body,) = script.bodies
    m = "eyJjaGF0IjoxfQ"  # base64url of the compact JSON {"chat":1}
    if per_task:
        assert task.ref is not None
        assert body["webhook_url"] == f"http://127.0.0.1:9/base/webhooks/bfl?ref={task.ref}&m={m}"
        secret = derive_bound_secret("master-secret", task.ref, b'{"chat":1}')
        assert body["webhook_secret"] == secret
        assert secret != derive_secret("master-secret", task.ref)
    else:
        assert task.ref is None  # no store here, and the URL carries no reference
        assert body["webhook_url"] == f"http://127.0.0.1:9/base/webhooks/bfl?m={m}"
        assert body["webhook_secret"] == "master-secret"
    assert body["prompt"] == "hooked"
    assert "metadata" not in body  # it travels in the webhook URL only


async def test_hostile_finetune_sources_and_misuse(tmp_path: Path) -> None:
    bfl = submitter.BFL(settings=offline(tmp_path, "http://127.0.0.1:9"))
    with pytest.raises(RuntimeError, match="async with"):
        await bfl.credits()
    async with bfl:
        with pytest.raises(submitter.ValidationError, match="not a ZIP"):
            await bfl.finetunes.create(b"not a zip", mode="style")
        with pytest.raises(submitter.ValidationError, match="no such file"):
            await bfl.finetunes.create(tmp_path / "missing", mode="style")
        with pytest.raises(submitter.ValidationError, match="mode"):
            await bfl.finetunes.create(tmp_path, mode="everything")
        with pytest.raises(submitter.ValidationError, match="eu1 or us1"):
            await bfl.finetunes.create(tmp_path, mode="style", region="ap1")
