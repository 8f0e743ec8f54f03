"""``receiver.integrations.discord:send`` end to end: a real receiver downloads the image, stores
it, and its Discord handler posts the stored bytes to the loopback fake of Discord's API, to a
channel (as the bot) and to a slash command's deferred reply (by its interaction token)."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from receiver.cli import main
from receiver.integrations import discord, discord_api
from receiver.integrations.discord import DiscordSender, DiscordSettings, load_settings
from receiver.settings import Settings
from receiver.store.base import Job, JobRun, JobState
from tests.fakes.discord import (
    DISCORD_EPOCH_MS,
    FILE_LIMIT,
    Channel,
    FakeDiscord,
    Webhook,
    fake_discord,
)
from tests.support import (
    Delivery,
    Receiver,
    Sample,
    delivery_server,
    eventually,
    jpeg_bytes,
    read_store,
    ready,
    running_receiver,
    settings_for,
)

HANDLER = "receiver.integrations.discord:send"
BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.discord-bot-token-secret"
APP_ID = "1100000000000000042"


@dataclass
class Scene:
    fake: FakeDiscord
    delivery: Delivery
    settings: Settings
    receiver: Receiver
    sender: DiscordSender

    def attach(self, task_id: str, metadata: dict[str, Any]) -> None:
        """What the submitter records before BFL answers: the task's metadata."""
        ref = secrets.token_urlsafe(8)

        async def bind(store: Any) -> None:
            await store.prepare_submission(ref, "flux-dev", metadata)
            await store.bind_submission(ref, task_id, None)

        read_store(self.settings, bind)

    def finish(self, task_id: str, metadata: dict[str, Any], sample: Sample | None = None) -> None:
        """The task ``task_id`` with this metadata ends Ready, its image served by delivery."""
        self.attach(task_id, metadata)
        url = self.delivery.add(f"{task_id}.jpg", sample)
        assert self.receiver.post(ready(task_id, url)).status_code == 200

    def job(self, task_id: str) -> Job | None:
        jobs: list[Job] = read_store(self.settings, lambda s: s.jobs_for(task_id))
        return next((j for j in jobs if j.handler == HANDLER), None)

    def settled(self, task_id: str, state: JobState, timeout: float = 30) -> Job:
        def reached() -> Job | None:
            job = self.job(task_id)
            return job if job is not None and job.state is state else None

        eventually(lambda: reached() is not None, timeout=timeout)
        job = reached()
        assert job is not None
        return job

    def runs(self, task_id: str) -> list[JobRun]:
        return list(read_store(self.settings, lambda s: s.runs_for(task_id)))


@contextmanager
def scene(tmp_path: Path, *, max_attempts: int = 5, **fake_options: Any) -> Iterator[Scene]:
    with fake_discord(BOT_TOKEN, **fake_options) as fake, delivery_server() as delivery:
        settings = settings_for(
            tmp_path, sample_hosts=(delivery.host,), handler_max_attempts=max_attempts
        )
        values: dict[str, Any] = {"bot_token": BOT_TOKEN, "api_url": fake.api_url}
        sender = DiscordSender(DiscordSettings(_env_file=None, **values))  # type: ignore[call-arg]
        with running_receiver(settings, {HANDLER: sender.send}) as r:
            yield Scene(fake, delivery, settings, r, sender)


def interaction_metadata(hook: Webhook, interaction_id: str, **more: Any) -> dict[str, Any]:
    return {
        "discord_application_id": hook.id,
        "discord_interaction_token": hook.token,
        "discord_interaction_id": interaction_id,
        **more,
    }


def big_png(at_least: int) -> bytes:
    """A real PNG (noise does not compress) of at least ``at_least`` bytes."""
    side = int((at_least / 3) ** 0.5) + 16
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    assert len(out.getvalue()) > at_least
    return out.getvalue()


def test_a_photo_reaches_the_channel_as_files_0_and_payload_json(tmp_path: Path) -> None:
    image = jpeg_bytes(64)
    with scene(tmp_path) as s:
        channel = s.fake.channel()
        s.finish("t-photo", {"discord_channel_id": channel.id, "caption": "a lighthouse"},
                 Sample(body=image))  # fmt: skip
        job = s.settled("t-photo", JobState.DONE)
    assert job.attempts == 1
    [message] = channel.messages
    assert message.content == "a lighthouse"
    [attachment] = message.attachments
    assert attachment.data == image  # the stored bytes, exactly
    assert (attachment.part, attachment.filename) == ("files[0]", "flux-t-photo.jpg")
    assert attachment.content_type == "image/jpeg"
    [request] = s.fake.requests
    assert (request.method, request.path) == ("POST", f"/api/v10/channels/{channel.id}/messages")
    assert request.authorization == f"Bot {BOT_TOKEN}"
    assert request.parts == [("payload_json", None), ("files[0]", "flux-t-photo.jpg")]
    assert s.delivery.url not in message.content


def test_a_deferred_reply_is_replaced_by_the_photo_without_a_bot_token(tmp_path: Path) -> None:
    image = jpeg_bytes(48, "green")
    with scene(tmp_path) as s:
        channel = s.fake.channel()
        interaction, hook = s.fake.interaction(channel, APP_ID)
        s.finish("t-slash", interaction_metadata(hook, interaction, caption="/imagine a fox"),
                 Sample(body=image))  # fmt: skip
        s.settled("t-slash", JobState.DONE)
    [message] = channel.messages  # the "thinking…" reply itself, not a new message
    assert message is hook.original
    assert (message.deferred, message.edits) == (False, 1)
    assert message.content == "/imagine a fox"
    assert message.attachments[0].data == image
    [request] = s.fake.requests
    assert request.method == "PATCH"
    assert request.path == f"/api/v10/webhooks/{APP_ID}/{hook.token}/messages/@original"
    assert request.authorization is None  # interaction tokens need no bot token


def test_a_follow_up_when_the_deferred_reply_was_deleted(tmp_path: Path) -> None:
    with scene(tmp_path) as s:
        channel = s.fake.channel()
        interaction, hook = s.fake.interaction(channel, APP_ID)
        hook.original = None  # the user dismissed it
        channel.messages.clear()
        s.finish("t-gone", interaction_metadata(hook, interaction))
        s.settled("t-gone", JobState.DONE)
    assert [(r.method, r.status) for r in s.fake.requests] == [("PATCH", 404), ("POST", 200)]
    assert s.fake.requests[1].query == {"wait": "true"}
    assert len(channel.messages[0].attachments) == 1


def test_an_image_over_10_mib_becomes_a_text_with_its_size(tmp_path: Path) -> None:
    image = big_png(FILE_LIMIT + 1)
    with scene(tmp_path) as s:
        channel = s.fake.channel()
        sample = Sample(body=image, content_type="image/png")
        s.finish("t-big", {"discord_channel_id": channel.id, "caption": "huge"}, sample)
        s.settled("t-big", JobState.DONE, timeout=60)
    [message] = channel.messages
    assert message.attachments == []
    assert "too large for Discord" in message.content
    assert f"{len(image) / 1024 / 1024:.1f} MiB" in message.content
    assert message.content.endswith("huge")
    assert len(s.fake.requests) == 1  # not tried first: Discord would refuse it


def test_a_413_from_discord_becomes_the_too_large_text(tmp_path: Path) -> None:
    image = jpeg_bytes(64)
    with scene(tmp_path, file_limit=len(image) - 1) as s:  # a server whose limit is lower
        channel = s.fake.channel()
        s.finish("t-413", {"discord_channel_id": channel.id}, Sample(body=image))
        job = s.settled("t-413", JobState.DONE)
    assert job.attempts == 1
    assert [r.status for r in s.fake.requests] == [413, 200]
    [message] = channel.messages
    assert message.content.startswith("The image is too large for Discord")


@pytest.mark.parametrize(("length", "cut"), [(2000, False), (2600, True)])
def test_a_caption_at_and_over_the_2000_character_limit(
    tmp_path: Path, length: int, cut: bool
) -> None:
    text = ("a lighthouse at dusk, " * 200)[:length]
    with scene(tmp_path) as s:
        channel = s.fake.channel()
        s.finish("t-cap", {"discord_channel_id": channel.id, "caption": text})
        s.settled("t-cap", JobState.DONE)
    content = channel.messages[0].content
    assert len(content) == min(length, 2000)
    if cut:
        assert content.endswith("…")
        assert text.startswith(content[:-1].rstrip())
    else:
        assert content == text


def test_failure_and_moderation_texts_reach_the_channel_and_replace_the_reply(
    tmp_path: Path,
) -> None:
    with scene(tmp_path) as s:
        channel = s.fake.channel()
        s.attach("t-err", {"discord_channel_id": channel.id})
        s.receiver.post({"id": "t-err", "status": "Error", "error": "out of credits"})
        other = s.fake.channel()
        interaction, hook = s.fake.interaction(other, APP_ID)
        s.attach("t-mod", interaction_metadata(hook, interaction))
        s.receiver.post({"id": "t-mod", "status": "Content Moderated"})
        s.settled("t-err", JobState.DONE)
        s.settled("t-mod", JobState.DONE)
    assert [m.content for m in channel.messages] == [
        "The image could not be generated: out of credits"
    ]
    [reply] = other.messages
    assert reply is hook.original
    assert not reply.deferred
    assert reply.content == "The image was not generated: the request was moderated."


def test_429_is_waited_out_without_using_an_attempt(tmp_path: Path) -> None:
    with scene(tmp_path, max_attempts=1) as s:
        channel = s.fake.channel()
        s.fake.rate_limit_next(2, retry_after=0.3)
        s.finish("t-429", {"discord_channel_id": channel.id})
        job = s.settled("t-429", JobState.DONE)
        runs = s.runs("t-429")
    assert job.attempts == 1
    assert job.waited == pytest.approx(0.6, abs=0.05)
    outcomes = [run.outcome for run in runs if run.job_id == job.id]
    assert outcomes == ["rate limited", "rate limited", "ok"]
    assert [r.status for r in s.fake.requests] == [429, 429, 200]
    assert len(channel.messages) == 1


def test_an_exhausted_bucket_is_waited_for_before_the_next_send(tmp_path: Path) -> None:
    """``X-RateLimit-Remaining: 0``: the next send to that channel waits for
    ``X-RateLimit-Reset-After`` instead of earning a 429 (an invalid request)."""
    with scene(tmp_path, limit=1, window=2.5) as s:
        channel = s.fake.channel()
        s.finish("t-a", {"discord_channel_id": channel.id})
        s.finish("t-b", {"discord_channel_id": channel.id})
        s.settled("t-a", JobState.DONE)
        s.settled("t-b", JobState.DONE)
    assert [r.status for r in s.fake.requests] == [200, 200]
    assert s.fake.invalid_requests == 0
    assert len(channel.messages) == 2


def test_a_global_429_holds_every_channel(tmp_path: Path) -> None:
    with scene(tmp_path) as s:
        first, second = s.fake.channel(), s.fake.channel()
        s.fake.rate_limit_next(1, retry_after=1.5, scope="global")
        s.finish("t-g1", {"discord_channel_id": first.id})
        eventually(lambda: len(s.fake.requests) == 1)
        limited_at = time.monotonic()
        s.finish("t-g2", {"discord_channel_id": second.id})
        s.settled("t-g1", JobState.DONE)
        s.settled("t-g2", JobState.DONE)
        sent_second = next(m for m in second.messages)
    assert sent_second.attachments
    assert [r.status for r in s.fake.requests] == [429, 200, 200]
    assert time.monotonic() - limited_at >= 1.3  # the other channel waited too


@pytest.mark.parametrize(
    ("visible", "can_send", "known", "expected"),
    [
        (True, True, False, "404 Not Found: Unknown Channel (code 10003)"),
        (False, True, True, "403 Forbidden: Missing Access (code 50001)"),
        (True, False, True, "403 Forbidden: Missing Permissions (code 50013)"),
    ],
)
def test_a_permanent_error_is_dead_at_once_with_discords_reason(
    tmp_path: Path, visible: bool, can_send: bool, known: bool, expected: str
) -> None:
    with scene(tmp_path) as s:
        channel = s.fake.channel(visible=visible, can_send=can_send)
        channel_id = channel.id if known else "1234567890123"
        s.finish("t-perm", {"discord_channel_id": channel_id})
        job = s.settled("t-perm", JobState.DEAD)
    assert job.attempts == 1
    assert job.last_error is not None
    assert expected in job.last_error
    assert len(s.fake.requests) == 1  # no retry storm


def test_a_wrong_bot_token_is_dead_and_says_which_setting(tmp_path: Path) -> None:
    with scene(tmp_path) as s:
        s.fake.bot_token = "another-token"
        channel = s.fake.channel()
        s.finish("t-401", {"discord_channel_id": channel.id})
        job = s.settled("t-401", JobState.DEAD)
    assert job.last_error is not None
    assert "Discord refused DISCORD_BOT_TOKEN (401 Unauthorized: 401: Unauthorized" in (
        job.last_error
    )
    assert s.fake.invalid_requests == 1


def test_an_expired_interaction_is_dead_with_that_reason(tmp_path: Path) -> None:
    with scene(tmp_path, interaction_ttl=0.2) as s:
        channel = s.fake.channel()
        interaction, hook = s.fake.interaction(channel, APP_ID)
        time.sleep(0.3)
        meta = interaction_metadata(hook, interaction)
        del meta["discord_interaction_id"]  # only Discord's answer can tell
        s.finish("t-late", meta)
        late = s.settled("t-late", JobState.DEAD)
        # With the interaction's id, a reply past its 15 minutes is not even tried.
        old = str((int(time.time() * 1000) - DISCORD_EPOCH_MS - 16 * 60 * 1000) << 22)
        s.finish("t-old", interaction_metadata(hook, old))
        too_old = s.settled("t-old", JobState.DEAD)
    assert late.last_error is not None
    assert "refused its token (401 Unauthorized: Invalid Webhook Token (code 50027))" in (
        late.last_error
    )
    assert "15 minutes" in late.last_error
    assert too_old.last_error is not None
    assert "expired 16 minutes after it was made" in too_old.last_error
    assert (late.attempts, too_old.attempts) == (1, 1)
    assert len(s.fake.requests) == 1  # only the first one asked Discord


def test_5xx_is_retried(tmp_path: Path) -> None:
    with scene(tmp_path) as s:
        channel = s.fake.channel()
        s.fake.fail_next(502, "502: Bad Gateway", 0)
        s.finish("t-502", {"discord_channel_id": channel.id})
        job = s.settled("t-502", JobState.DONE)
    assert job.attempts == 2
    assert [r.status for r in s.fake.requests] == [502, 200]


def test_an_event_for_another_platform_is_skipped(tmp_path: Path) -> None:
    with scene(tmp_path) as s:
        s.finish("t-tg", {"telegram_chat_id": 42})
        job = s.settled("t-tg", JobState.DONE)
        skipped = s.receiver.metric(
            "bfl_hooks_handler_runs_total", handler=HANDLER, outcome="skipped"
        )
    assert skipped == 1
    assert job.last_error is not None
    assert job.last_error.startswith("skipped: no discord_channel_id")
    assert s.fake.requests == []


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"discord_channel_id": ["1"]}, "discord_channel_id must be a non-empty string"),
        ({"discord_channel_id": True}, "discord_channel_id must be a string"),
        ({"discord_channel_id": "x" * 100_000}, "must be a Discord id"),
        ({"discord_application_id": APP_ID}, "go together"),
        (
            {"discord_application_id": APP_ID, "discord_interaction_token": "a/b?c"},
            "is not an interaction token",
        ),
        (
            {"discord_application_id": APP_ID, "discord_interaction_token": {"t": 1}},
            "must be a non-empty string",
        ),
    ],
)
def test_bad_metadata_is_a_clear_permanent_error(
    tmp_path: Path, metadata: dict[str, Any], expected: str
) -> None:
    with scene(tmp_path) as s:
        s.attach("t-bad", metadata)
        s.receiver.post({"id": "t-bad", "status": "Error", "error": "x"})
        job = s.settled("t-bad", JobState.DEAD)
        assert s.receiver.client.get("/healthz").status_code == 200
    assert job.attempts == 1
    assert job.last_error is not None
    assert expected in job.last_error
    assert len(job.last_error) < 300  # a huge value is not echoed
    assert s.fake.requests == []


def test_replay_after_dead_sends_again(tmp_path: Path) -> None:
    with scene(tmp_path) as s:
        channel = s.fake.channel(can_send=False)
        s.finish("t-replay", {"discord_channel_id": channel.id})
        s.settled("t-replay", JobState.DEAD)
        channel.can_send = True  # the server's admin fixed the bot's permissions
        assert read_store(s.settings, lambda st: st.replay("t-replay")) == 1
        s.settled("t-replay", JobState.DONE)
    assert [r.status for r in s.fake.requests] == [403, 200]
    assert len(channel.messages) == 1
    assert channel.messages[0].attachments[0].data == s.delivery.samples["t-replay.jpg"].body


def test_missing_bot_token_is_dead_with_the_variable_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("DISCORD_BOT_TOKEN", raising=False)
    monkeypatch.setattr(discord, "_default", DiscordSender())
    with fake_discord(BOT_TOKEN) as fake:
        monkeypatch.setenv("DISCORD_API_URL", fake.api_url)
        channel = fake.channel()
        settings = settings_for(tmp_path)
        with running_receiver(settings, {HANDLER: discord.send}) as r:
            s = Scene(fake, Delivery(), settings, r, discord._default)
            s.attach("t-cfg", {"discord_channel_id": channel.id})
            r.post({"id": "t-cfg", "status": "Error", "error": "x"})
            job = s.settled("t-cfg", JobState.DEAD)
    assert job.last_error is not None
    assert "DISCORD_BOT_TOKEN is not set" in job.last_error
    assert fake.requests == []
    monkeypatch.setenv("DISCORD_API_URL", "ftp://nope")
    with pytest.raises(discord.DiscordConfigError, match="DISCORD_API_URL"):
        load_settings()


def test_no_token_in_any_log_line_error_or_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with scene(tmp_path) as s:
        channel: Channel = s.fake.channel()
        interaction, hook = s.fake.interaction(channel, APP_ID)
        s.fake.fail_next(500, "500: Internal Server Error", 0)
        s.finish("t-ok", interaction_metadata(hook, interaction))  # a 500, then sent
        s.finish("t-chan", {"discord_channel_id": channel.id})
        wrong = interaction_metadata(hook, interaction)
        wrong["discord_interaction_token"] = hook.token[:-4] + "abcd"
        s.finish("t-wrong", wrong)  # refused: 401 50027
        s.settled("t-ok", JobState.DONE)
        s.settled("t-chan", JobState.DONE)
        dead = s.settled("t-wrong", JobState.DEAD)
        metrics = s.receiver.client.get("/metrics").text
        runs = [run for t in ("t-ok", "t-chan", "t-wrong") for run in s.runs(t)]
    monkeypatch.setenv("RECEIVER_DATABASE_URL", s.settings.database_url)
    shown = [
        CliRunner(env={"COLUMNS": "240"}).invoke(main, ["show", task, *form])
        for task in ("t-ok", "t-wrong")
        for form in (["--json"], [])
    ]
    assert all(result.exit_code == 0 for result in shown)
    assert all("discord_interaction_token" in result.output for result in shown)
    assert "50027" in (dead.last_error or "")
    assert any("/webhooks/" in m for m in caplog.messages)  # httpx logged those URLs...
    texts = [caplog.text, metrics, *(r.output for r in shown)]
    texts += [f"{run.error} {run.traceback}" for run in runs]
    tokens = (BOT_TOKEN, hook.token, wrong["discord_interaction_token"])
    for text in texts:
        for token in tokens:
            assert token not in text  # ...without their tokens


def test_the_pacing_key_and_errors_never_hold_the_token() -> None:
    target = discord.Target(application_id=APP_ID, token="secret-token-value")
    assert "secret-token-value" not in target.key
    assert "secret-token-value" not in target.where
    line = "HTTP Request: PATCH http://h/api/v10/webhooks/1/abc.DEF-_/messages/@original"
    assert discord_api.redact_webhook_tokens(line) == (
        "HTTP Request: PATCH http://h/api/v10/webhooks/1/…/messages/@original"
    )
    assert json.loads(json.dumps({"k": target.key}))  # a plain string, safe to log
