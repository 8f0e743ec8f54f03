"""``receiver.integrations.telegram:send`` end to end: a real receiver downloads the image from
a loopback delivery server and sends it to the Telegram fake (tests/fakes/telegram.py), whose
chats show what a user would see."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import SecretStr

from receiver.cli import main
from receiver.correlation import webhook_link
from receiver.integrations.common import utf16_len
from receiver.integrations.telegram import Limits, Telegram, TelegramSettings
from receiver.settings import Settings
from receiver.store.base import Job, JobRun, JobState
from tests.fakes.telegram import FakeTelegram, fake_telegram
from tests.support import (
    SECRET,
    Delivery,
    Receiver,
    Sample,
    delivery_server,
    eventually,
    jpeg_bytes,
    read_store,
    running_receiver,
    settings_for,
)

HANDLER = "receiver.integrations.telegram:send"
CHAT = 5550001
GROUP = -1005550002


@contextmanager
def world(
    tmp_path: Path, *, limits: Limits | None = None, **receiver: Any
) -> Iterator[tuple[FakeTelegram, Delivery, Settings, Receiver]]:
    """The fake (with CHAT and GROUP), a delivery server, and a receiver sending to the fake."""
    with fake_telegram() as fake, delivery_server() as delivery:
        fake.add_chat(CHAT)
        fake.add_chat(GROUP)
        settings = settings_for(
            tmp_path,
            sample_hosts=(delivery.host,),
            handler_max_attempts=receiver.pop("max_attempts", 3),
            **receiver,
        )
        values: dict[str, Any] = {"bot_token": fake.token, "api_url": fake.url}
        bot = Telegram(TelegramSettings(_env_file=None, **values), limits or Limits())  # type: ignore[call-arg]
        with running_receiver(settings, {HANDLER: bot.send}) as r:
            yield fake, delivery, settings, r


def post(r: Receiver, task_id: str, metadata: dict[str, Any], **payload: Any) -> None:
    """A webhook for ``task_id`` carrying ``metadata`` in its URL, as the submitter sends it."""
    link = webhook_link(f"{r.url}/webhooks/bfl", SECRET, f"ref-{task_id}", metadata)
    body = {"id": task_id, **payload}
    answer = r.client.post(link.url, json=body, headers={"x-webhook-secret": link.secret})
    assert answer.status_code == 200, answer.text


def ready(r: Receiver, task_id: str, sample: str, metadata: dict[str, Any]) -> None:
    post(r, task_id, metadata, status="Ready", result={"sample": sample, "seed": 1})


def job_of(settings: Settings, task_id: str) -> Job | None:
    jobs: list[Job] = read_store(settings, lambda s: s.jobs_for(task_id))
    return next((j for j in jobs if j.handler == HANDLER), None)


def settled(settings: Settings, task_id: str, state: JobState, timeout: float = 30) -> Job:
    def reached() -> Job | None:
        job = job_of(settings, task_id)
        return job if job is not None and job.state is state else None

    eventually(lambda: reached() is not None, timeout=timeout)
    job = reached()
    assert job is not None
    return job


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: its size is about width * height * 3 bytes."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(
        out, "PNG", compress_level=0
    )
    return out.getvalue()


def test_the_photo_replaces_the_progress_message_with_the_stored_bytes(tmp_path: Path) -> None:
    image = jpeg_bytes(64)
    with world(tmp_path) as (fake, delivery, settings, r):
        question = fake.user_says(CHAT, "/imagine a lighthouse")
        progress = fake.post_as_bot(CHAT, "Generating…")
        meta = {
            "telegram_chat_id": str(CHAT),  # a digit string is taken too
            "telegram_message_id": progress.message_id,
            "telegram_reply_to": question.message_id,
            "caption": "a lighthouse",
        }
        ready(r, "t-photo", delivery.add("a.jpg", Sample(body=image)), meta)
        job = settled(settings, "t-photo", JobState.DONE)
    assert job.attempts == 1
    chat = fake.chats[CHAT].visible()
    assert [m.kind for m in chat] == ["text", "photo"]  # the question, then the photo
    photo = chat[-1]
    assert photo.photo is not None
    assert photo.photo.data == image  # the stored bytes, exactly
    assert photo.caption == "a lighthouse"
    assert photo.reply_to == question.message_id
    assert progress.deleted
    (call,) = fake.calls_to("sendPhoto")
    assert call.content_type.startswith("multipart/form-data; boundary=")
    assert call.fields["chat_id"] == str(CHAT)
    assert call.files["photo"].content_type == "image/jpeg"
    assert call.files["photo"].filename == "image.jpg"
    assert json.loads(call.fields["reply_parameters"])["message_id"] == question.message_id
    assert delivery.url not in json.dumps(call.fields)  # BFL's URL is never handed on
    assert fake.calls_to("deleteMessage")[0].fields == {
        "chat_id": CHAT,
        "message_id": progress.message_id,
    }


@pytest.mark.parametrize("shape", ["over 10 MB", "ratio over 20"])
def test_a_document_when_telegram_would_not_take_a_photo(tmp_path: Path, shape: str) -> None:
    image = noise_png(1900, 1900) if shape == "over 10 MB" else noise_png(2100, 100)
    assert (len(image) > 10_000_000) == (shape == "over 10 MB")
    with world(tmp_path) as (fake, delivery, settings, r):
        progress = fake.post_as_bot(GROUP, "Generating…")
        meta = {"telegram_chat_id": GROUP, "telegram_message_id": progress.message_id}
        sample = delivery.add("big.png", Sample(body=image, content_type="image/png"))
        ready(r, "t-doc", sample, meta)
        settled(settings, "t-doc", JobState.DONE)
    (document,) = fake.chats[GROUP].visible()
    assert document.document is not None
    assert document.document.data == image
    assert document.document.filename == "image.png"
    assert fake.calls_to("sendPhoto") == []  # not tried: Telegram would refuse it
    assert progress.deleted


def test_too_large_even_for_a_document_says_so(tmp_path: Path) -> None:
    small = Limits(photo_max_bytes=100, document_max_bytes=200)
    with world(tmp_path, limits=small) as (fake, delivery, settings, r):
        progress = fake.post_as_bot(CHAT, "Generating…")
        meta = {"telegram_chat_id": CHAT, "telegram_message_id": progress.message_id}
        ready(r, "t-huge", delivery.add("a.jpg"), meta)
        settled(settings, "t-huge", JobState.DONE)
    (message,) = fake.chats[CHAT].visible()
    assert message is progress
    assert message.text is not None
    assert "over Telegram's 0.0002 MB" in message.text
    assert fake.calls_to("sendDocument") == []


def test_a_photo_telegram_refuses_as_a_photo_goes_as_a_document(tmp_path: Path) -> None:
    with world(tmp_path) as (fake, delivery, settings, r):
        fake.fail_next(1, 400, "Bad Request: PHOTO_INVALID_DIMENSIONS", method="sendPhoto")
        ready(r, "t-fallback", delivery.add("a.jpg"), {"telegram_chat_id": CHAT})
        job = settled(settings, "t-fallback", JobState.DONE)
    assert job.attempts == 1
    assert [m.kind for m in fake.chats[CHAT].visible()] == ["document"]


@pytest.mark.parametrize(
    ("given", "cut"),
    [
        ("a" * 1024, False),
        ("😀" * 511 + "ab", False),
        ("😀" * 512 + "ab", True),
        ("b" * 5000, True),
    ],
)
def test_a_caption_at_the_limit(tmp_path: Path, given: str, cut: bool) -> None:
    with world(tmp_path) as (fake, delivery, settings, r):
        meta = {"telegram_chat_id": CHAT, "caption": given}
        # The metadata in a URL is at most 1 KiB: a long caption comes from the store instead,
        # as when the bot shares the receiver's database.
        submit_through_the_store(settings, "t-caption", meta)
        answer = r.post(
            {"id": "t-caption", "status": "Ready", "result": {"sample": delivery.add("a")}}
        )
        assert answer.status_code == 200, answer.text
        settled(settings, "t-caption", JobState.DONE)
    (photo,) = fake.chats[CHAT].visible()
    assert photo.caption is not None
    assert utf16_len(photo.caption) <= 1024
    if cut:
        assert photo.caption.endswith("…")
        assert given.startswith(photo.caption[:-1])
        assert utf16_len(photo.caption) >= 1020
    else:
        assert photo.caption == given


def submit_through_the_store(settings: Settings, task_id: str, meta: dict[str, Any]) -> None:
    """Record a submission with its metadata, as the submitter does beside the URL."""

    async def record(store: Any) -> None:
        await store.prepare_submission(f"ref-{task_id}", "flux-dev", meta)
        await store.bind_submission(f"ref-{task_id}", task_id, None)

    read_store(settings, record)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"status": "Error", "error": "out of credits"}, "could not be generated: out of credits"),
        ({"status": "Request Moderated"}, "moderated"),
        ({"status": "Content Moderated"}, "moderated"),
    ],
)
def test_failure_and_moderation_replace_the_progress_message_with_a_text(
    tmp_path: Path, payload: dict[str, Any], says: str
) -> None:
    with world(tmp_path) as (fake, _, settings, r):
        progress = fake.post_as_bot(CHAT, "Generating…")
        meta = {"telegram_chat_id": CHAT, "telegram_message_id": progress.message_id}
        post(r, "t-fail", meta, **payload)
        post(r, "t-fail-2", {"telegram_chat_id": CHAT}, **payload)  # no progress message
        settled(settings, "t-fail", JobState.DONE)
        settled(settings, "t-fail-2", JobState.DONE)
    edited, sent = fake.chats[CHAT].visible()
    assert edited is progress
    assert edited.edited == 1
    assert sent.message_id > progress.message_id
    for message in (edited, sent):
        assert message.text is not None
        assert says in message.text
    assert [c.method for c in fake.calls if c.method != "getMe"].count("editMessageText") == 1


def test_a_progress_message_already_gone_is_not_a_failure(tmp_path: Path) -> None:
    with world(tmp_path) as (fake, delivery, settings, r):
        first, second = fake.post_as_bot(CHAT, "Generating…"), fake.post_as_bot(CHAT, "Gen…")
        first.deleted = second.deleted = True  # the user deleted both
        ready(
            r,
            "t-a",
            delivery.add("a.jpg"),
            {"telegram_chat_id": CHAT, "telegram_message_id": first.message_id},
        )
        post(
            r,
            "t-b",
            {"telegram_chat_id": CHAT, "telegram_message_id": second.message_id},
            status="Error",
        )
        a = settled(settings, "t-a", JobState.DONE)
        b = settled(settings, "t-b", JobState.DONE)
    assert (a.attempts, b.attempts) == (1, 1)
    kinds = sorted(m.kind for m in fake.chats[CHAT].visible())
    assert kinds == ["photo", "text"]  # the failure went as a new message


def test_a_failed_delete_after_the_photo_does_not_send_it_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with world(tmp_path) as (fake, delivery, settings, r):
        progress = fake.post_as_bot(CHAT, "Generating…")
        fake.fail_next(2, 500, "Internal Server Error", method="deleteMessage")
        meta = {"telegram_chat_id": CHAT, "telegram_message_id": progress.message_id}
        ready(r, "t-undeleted", delivery.add("a.jpg"), meta)
        job = settled(settings, "t-undeleted", JobState.DONE)
    assert job.attempts == 1
    assert len(fake.calls_to("sendPhoto")) == 1
    assert [m.kind for m in fake.chats[CHAT].visible()] == ["text", "photo"]
    assert any("progress message" in m and "not deleted" in m for m in caplog.messages)


def test_a_429_is_waited_out_without_using_an_attempt(tmp_path: Path) -> None:
    with world(tmp_path, max_attempts=1) as (fake, delivery, settings, r):
        fake.rate_limit_next(2, retry_after=1, method="sendPhoto")
        ready(r, "t-429", delivery.add("a.jpg"), {"telegram_chat_id": CHAT})
        job = settled(settings, "t-429", JobState.DONE)
        limited = r.metric("bfl_hooks_handler_runs_total", handler=HANDLER, outcome="rate_limited")
    assert (job.attempts, limited) == (1, 2)
    assert job.waited >= 2.0
    sends = [c.at for c in fake.calls_to("sendPhoto")]
    assert len(sends) == 3
    assert sends[1] - sends[0] >= 0.9
    assert sends[2] - sends[1] >= 0.9
    assert [m.kind for m in fake.chats[CHAT].visible()] == ["photo"]


def test_a_5xx_is_retried(tmp_path: Path) -> None:
    with world(tmp_path) as (fake, delivery, settings, r):
        fake.fail_next(1, 502, "Bad Gateway", method="sendPhoto")
        ready(r, "t-502", delivery.add("a.jpg"), {"telegram_chat_id": CHAT})
        job = settled(settings, "t-502", JobState.DONE)
        runs: list[JobRun] = read_store(settings, lambda s: s.runs_for("t-502"))
    assert job.attempts == 2
    assert any(run.error and "Bad Gateway" in run.error for run in runs)


@pytest.mark.parametrize(
    ("chat", "reason"),
    [
        (999, "Bad Request: chat not found"),
        ("blocked", "Forbidden: bot was blocked by the user"),
        ("migrated", "its new id is -1009876: submit with telegram_chat_id=-1009876"),
    ],
)
def test_a_permanent_error_is_dead_at_once_with_its_reason(
    tmp_path: Path, chat: Any, reason: str
) -> None:
    with world(tmp_path, max_attempts=5) as (fake, delivery, settings, r):
        if chat == "blocked":
            chat, fake.add_chat(31337).blocked = 31337, True
        elif chat == "migrated":
            chat = -4040
            fake.add_chat(chat, "group").migrated_to = -1009876
        ready(r, "t-perm", delivery.add("a.jpg"), {"telegram_chat_id": chat})
        job = settled(settings, "t-perm", JobState.DEAD)
    assert job.attempts == 1
    assert job.last_error is not None
    assert reason in job.last_error
    assert len(fake.calls_to("sendPhoto")) == 1  # no retry storm


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"telegram_chat_id": "not-a-chat"}, "telegram_chat_id must be an integer, got str"),
        ({"telegram_chat_id": {"id": 1}}, "telegram_chat_id must be an integer, got dict"),
        ({"telegram_chat_id": True}, "telegram_chat_id must be an integer"),
        ({"telegram_chat_id": "9" * 5000}, "telegram_chat_id is not a Telegram id"),
        ({"telegram_chat_id": 2**60}, "telegram_chat_id is out of range"),
        ({"telegram_chat_id": 12345}, "Bad Request: chat not found"),
        ({"telegram_chat_id": CHAT, "telegram_message_id": [1]}, "telegram_message_id must be"),
    ],
)
def test_bad_metadata_is_a_clear_permanent_error(
    tmp_path: Path, meta: dict[str, Any], reason: str
) -> None:
    with world(tmp_path) as (_, __, settings, r):
        submit_through_the_store(settings, "t-bad", meta)  # no 1 KiB cap there
        assert r.post({"id": "t-bad", "status": "Error", "error": "x"}).status_code == 200
        job = settled(settings, "t-bad", JobState.DEAD)
        assert r.client.get("/healthz").status_code == 200
    assert job.last_error is not None
    assert reason in job.last_error
    assert "Traceback" not in job.last_error
    assert len(job.last_error) < 600


def test_an_event_for_another_platform_is_skipped(tmp_path: Path) -> None:
    with world(tmp_path) as (fake, delivery, settings, r):
        ready(r, "t-slack", delivery.add("a.jpg"), {"slack_channel": "C123"})
        job = settled(settings, "t-slack", JobState.DONE)
        skipped = r.metric("bfl_hooks_handler_runs_total", handler=HANDLER, outcome="skipped")
    assert skipped == 1
    assert job.last_error == "skipped: no telegram_chat_id in the metadata"
    assert fake.calls == []


def test_replay_after_dead_sends_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with world(tmp_path) as (fake, delivery, settings, r):
        fake.add_chat(31337).blocked = True
        ready(r, "t-replay", delivery.add("a.jpg"), {"telegram_chat_id": 31337})
        settled(settings, "t-replay", JobState.DEAD)
        fake.chats[31337].blocked = False  # the user unblocked the bot
        monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
        monkeypatch.chdir(tmp_path)
        replayed = CliRunner().invoke(main, ["replay", "t-replay"])
        assert replayed.exit_code == 0, replayed.output
        job = settled(settings, "t-replay", JobState.DONE)
    assert job.attempts == 1
    assert [m.kind for m in fake.chats[31337].visible()] == ["photo"]


def test_pacing_spaces_sends_to_one_chat(tmp_path: Path) -> None:
    with world(tmp_path) as (fake, delivery, settings, r):
        for n in range(3):
            ready(r, f"t-pace-{n}", delivery.add(f"{n}.jpg"), {"telegram_chat_id": CHAT})
        for n in range(3):
            settled(settings, f"t-pace-{n}", JobState.DONE)
    sends = sorted(c.at for c in fake.calls_to("sendPhoto"))
    assert len(sends) == 3
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(sends))


def test_no_token_in_any_log_line_error_show_or_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)
    with world(tmp_path, max_attempts=2) as (fake, delivery, settings, r):
        token = fake.token
        fake.fail_next(1, 500, f"Internal Server Error at /bot{token}/sendPhoto")
        ready(r, "t-ok", delivery.add("a.jpg"), {"telegram_chat_id": CHAT})
        post(r, "t-dead", {"telegram_chat_id": 404}, status="Error", error="x")
        settled(settings, "t-ok", JobState.DONE)
        dead = settled(settings, "t-dead", JobState.DEAD)
        fake.tokens.clear()  # Telegram no longer knows the token: 401
        post(r, "t-401", {"telegram_chat_id": CHAT}, status="Error", error="x")
        unauthorized = settled(settings, "t-401", JobState.DEAD)
        metrics = r.client.get("/metrics").text
        runs = [
            run
            for task in ("t-ok", "t-dead", "t-401")
            for run in read_store(settings, lambda s, t=task: s.runs_for(t))
        ]
    monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
    shown = [
        CliRunner(env={"COLUMNS": "240"}).invoke(main, ["show", task, "--json"]).output
        for task in ("t-ok", "t-dead", "t-401")
    ]
    assert unauthorized.last_error is not None
    assert "TELEGRAM_BOT_TOKEN" in unauthorized.last_error
    assert dead.last_error is not None
    assert "chat not found" in dead.last_error
    assert any("HTTP Request: POST" in m and "/bot…/sendPhoto" in m for m in caplog.messages)
    secret = token.split(":", 1)[1]
    for text in (caplog.text, metrics, *shown, *(f"{r.error} {r.traceback}" for r in runs)):
        assert secret not in text


def test_a_missing_token_is_dead_with_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    settings = settings_for(tmp_path, handler_max_attempts=5)
    with running_receiver(settings, {HANDLER: Telegram().send}) as r:
        post(r, "t-notoken", {"telegram_chat_id": CHAT}, status="Error", error="x")
        job = settled(settings, "t-notoken", JobState.DEAD)
    assert job.attempts == 1
    assert job.last_error is not None
    assert "TELEGRAM_BOT_TOKEN is not set" in job.last_error


def test_sends_to_a_group_are_paced_per_minute_too() -> None:
    """Unit check of the pace a group gets: the 21st send in a minute waits (RateLimited)."""
    import anyio  # noqa: PLC0415

    from receiver.handlers import RateLimited  # noqa: PLC0415

    bot = Telegram(TelegramSettings(_env_file=None, bot_token=SecretStr("1:x")))  # type: ignore[call-arg]
    groups = bot._pacer_for(GROUP)
    assert groups.per_minute == 20
    assert bot._pacer_for(CHAT).per_minute is None
    groups.interval = 0.0  # only the per-minute rule, for speed

    async def fill() -> None:
        for _ in range(20):
            await groups.slot("telegram:g")
        with pytest.raises(RateLimited):
            await groups.slot("telegram:g")

    started = time.monotonic()
    anyio.run(fill)
    assert time.monotonic() - started < 5
