"""``receiver.integrations.discord:send`` when Discord says no: 429s waited out without using
an attempt, permanent errors dead at once with Discord's reason, expired interactions, bad
metadata, replay after dead, and tokens kept out of every log line, error and ``show``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.integrations import discord, discord_api
from receiver.integrations.discord import DiscordSender, load_settings
from receiver.integrations.discord_target import Target
from receiver.store.base import JobState
from tests.discord_scene import APP_ID, BOT_TOKEN, HANDLER, Scene, interaction_metadata, scene
from tests.fakes.discord import DISCORD_EPOCH_MS, Channel, fake_discord
from tests.support import Delivery, eventually, read_store, running_receiver, settings_for


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
        s.finish("t-g2", {"discord_channel_id": second.id})
        s.settled("t-g1", JobState.DONE)
        s.settled("t-g2", JobState.DONE)
    limited, *after = s.fake.requests
    assert [r.status for r in (limited, *after)] == [429, 200, 200]
    assert {r.path for r in after} == {
        f"/api/v10/channels/{c.id}/messages" for c in (first, second)
    }
    assert all(r.at - limited.at >= 1.4 for r in after)  # the other channel waited too
    assert first.messages[0].attachments
    assert second.messages[0].attachments


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


def test_what_discord_refused_for_good_is_not_asked_again(tmp_path: Path) -> None:
    """No retry storm across jobs either: a refused bot token, and an unknown channel, cost one
    request each, however many events follow."""
    with scene(tmp_path) as s:
        for n in range(3):
            s.finish(f"t-gone-{n}", {"discord_channel_id": "1234567890123"})
        jobs = [s.settled(f"t-gone-{n}", JobState.DEAD) for n in range(3)]
        assert len(s.fake.requests) == 1
        s.fake.bot_token = "rotated-elsewhere"
        channels = [s.fake.channel() for _ in range(3)]
        for n, channel in enumerate(channels):
            s.finish(f"t-bot-{n}", {"discord_channel_id": channel.id})
        refused = [s.settled(f"t-bot-{n}", JobState.DEAD) for n in range(3)]
    assert [r.status for r in s.fake.requests] == [404, 401]
    assert s.fake.invalid_requests == 1
    for job in jobs + refused:
        assert job.attempts == 1
        assert job.last_error is not None
    assert all("Unknown Channel (code 10003)" in (j.last_error or "") for j in jobs)
    assert all("DISCORD_BOT_TOKEN" in (j.last_error or "") for j in refused)
    assert sum("not asked again" in (j.last_error or "") for j in jobs + refused) == 4


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
    target = Target(application_id=APP_ID, token="secret-token-value")
    assert "secret-token-value" not in target.key
    assert "secret-token-value" not in target.where
    line = "HTTP Request: PATCH http://h/api/v10/webhooks/1/abc.DEF-_/messages/@original"
    assert discord_api.redact_webhook_tokens(line) == (
        "HTTP Request: PATCH http://h/api/v10/webhooks/1/…/messages/@original"
    )
    assert json.loads(json.dumps({"k": target.key}))  # a plain string, safe to log
