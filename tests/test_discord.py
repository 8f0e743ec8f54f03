"""``receiver.integrations.discord:send`` end to end: a real receiver downloads the image, stores
it, and its Discord handler posts the stored bytes to the loopback fake of Discord's API, to a
channel (as the bot) and to a slash command's deferred reply (by its interaction token).
Rate limits, errors and tokens: tests/test_discord_errors.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.store.base import JobState
from tests.discord_scene import APP_ID, BOT_TOKEN, big_png, interaction_metadata, scene
from tests.fakes.discord import FILE_LIMIT
from tests.support import Sample, jpeg_bytes


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
