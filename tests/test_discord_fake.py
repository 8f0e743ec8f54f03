"""tests/fakes/discord.py is faithful: a real Discord client (PyPI ``discord-webhook``, sync on
requests and async on httpx) posts to it as it posts to Discord, and the fake answers with
Discord's documented shapes (multipart parts, limits, error bodies, 429s and their headers)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
from discord_webhook import AsyncDiscordWebhook, DiscordWebhook

from tests.fakes.discord import FILE_LIMIT, FakeDiscord, fake_discord
from tests.support import png_bytes

BOT_TOKEN = "fake-bot-token.0123456789"


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with fake_discord(BOT_TOKEN) as server:
        yield server


def test_discord_webhook_uploads_a_file_under_its_own_part_name(fake: FakeDiscord) -> None:
    channel = fake.channel()
    hook = fake.webhook(channel)
    image = png_bytes(48)
    webhook = DiscordWebhook(url=fake.webhook_url(hook), content="a lighthouse")
    webhook.add_file(file=image, filename="lighthouse.png")
    response = webhook.execute()
    assert response.status_code == 200
    sent = response.json()
    assert sent["content"] == "a lighthouse"
    assert sent["attachments"][0]["filename"] == "lighthouse.png"
    assert sent["attachments"][0]["size"] == len(image)
    [message] = channel.messages
    assert message.content == "a lighthouse"
    [attachment] = message.attachments
    assert attachment.data == image
    assert attachment.part == "_lighthouse.png"  # not files[n]: Discord takes it, so does the fake
    [request] = fake.requests
    assert request.query == {"wait": "True"}  # a boolean query string as requests spells it
    assert ("payload_json", None) in request.parts
    assert response.headers["via"]  # discord-webhook waits out a 429 only with it


def test_discord_webhook_waits_out_a_429_from_the_headers_and_body(fake: FakeDiscord) -> None:
    channel = fake.channel()
    hook = fake.webhook(channel)
    fake.rate_limit_next(1, retry_after=0.4)
    webhook = DiscordWebhook(url=fake.webhook_url(hook), content="later", rate_limit_retry=True)
    started = time.monotonic()
    response = webhook.execute()
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.4  # it slept retry_after + 0.15
    assert [r.status for r in fake.requests] == [429, 200]
    assert [m.content for m in channel.messages] == ["later"]


def test_an_exhausted_bucket_answers_429_with_discords_headers(fake: FakeDiscord) -> None:
    fake.limit, fake.window = 1, 1.0
    hook = fake.webhook(fake.channel())
    url = fake.webhook_url(hook)
    with httpx.Client() as client:
        first = client.post(url, params={"wait": "true"}, json={"content": "one"})
        second = client.post(url, params={"wait": "true"}, json={"content": "two"})
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit"] == "1"
    assert first.headers["x-ratelimit-remaining"] == "0"
    assert 0 < float(first.headers["x-ratelimit-reset-after"]) <= 1.0
    assert second.status_code == 429
    body = second.json()
    assert set(body) == {"message", "retry_after", "global"}
    assert body["global"] is False
    assert isinstance(body["retry_after"], float)
    assert second.headers["retry-after"] == "1"
    assert second.headers["x-ratelimit-scope"] == "user"
    assert second.headers["x-ratelimit-bucket"] == first.headers["x-ratelimit-bucket"]
    assert fake.invalid_requests == 1
    # Rate limited by the real bucket, discord-webhook waits and gets through.
    webhook = DiscordWebhook(url=url, content="three", rate_limit_retry=True)
    assert webhook.execute().status_code == 200


def test_a_global_429_and_a_shared_one(fake: FakeDiscord) -> None:
    hook = fake.webhook(fake.channel())
    fake.rate_limit_next(1, retry_after=64.57, scope="global")
    fake.rate_limit_next(1, retry_after=1.5, scope="shared")
    with httpx.Client() as client:
        first = client.post(fake.webhook_url(hook), json={"content": "x"})
        second = client.post(fake.webhook_url(hook), json={"content": "x"})
    assert first.json() == {
        "message": "You are being rate limited.",
        "retry_after": 64.57,
        "global": True,
    }
    assert first.headers["x-ratelimit-global"] == "true"
    assert first.headers["x-ratelimit-scope"] == "global"
    assert first.headers["retry-after"] == "65"
    assert second.json()["message"] == "The resource is being rate limited."
    assert second.headers["x-ratelimit-scope"] == "shared"
    assert fake.invalid_requests == 1  # "429 errors returned with shared scope are not counted"


def test_the_limits_and_error_bodies(fake: FakeDiscord) -> None:
    fake.limit = 100  # many requests on one webhook: its bucket is not what is tested here
    channel = fake.channel()
    hook = fake.webhook(channel)
    url = fake.webhook_url(hook)
    too_big = DiscordWebhook(url=url, content="big")
    too_big.add_file(file=b"\0" * (FILE_LIMIT + 1), filename="big.png")
    answer = too_big.execute()
    assert (answer.status_code, answer.json()) == (
        413,
        {"message": "Request entity too large", "code": 40005},
    )
    at_limit = DiscordWebhook(url=url, content="x" * 2000)
    at_limit.add_file(file=b"\0" * FILE_LIMIT, filename="ok.png")
    assert at_limit.execute().status_code == 200
    long = DiscordWebhook(url=url, content="x" * 2001).execute()
    assert long.status_code == 400
    assert long.json()["code"] == 50035
    assert long.json()["errors"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    with httpx.Client() as client:
        empty = client.post(url, json={})
        unknown = client.post(f"{fake.api_url}/webhooks/1/{hook.token}", json={"content": "x"})
        wrong = client.post(f"{fake.api_url}/webhooks/{hook.id}/nope", json={"content": "x"})
        silent = client.post(url, json={"content": "no wait"})
        bad = client.post(url, files={"payload_json": (None, "{not json")})
    assert (empty.status_code, empty.json()["code"]) == (400, 50006)
    assert unknown.status_code == 404
    assert unknown.json() == {"message": "Unknown Webhook", "code": 10015}
    assert wrong.status_code == 401
    assert wrong.json() == {"message": "Invalid Webhook Token", "code": 50027}
    assert (silent.status_code, silent.content) == (204, b"")  # wait defaults to false
    assert (bad.status_code, bad.json()["code"]) == (400, 50109)
    assert [m.content for m in channel.messages] == ["x" * 2000, "no wait"]


def test_create_message_needs_the_bot_token_and_access(fake: FakeDiscord) -> None:
    channel = fake.channel()
    hidden = fake.channel(visible=False)
    muted = fake.channel(can_send=False)
    image = png_bytes()
    bot = {"authorization": f"Bot {BOT_TOKEN}"}
    payload = {"content": "hi", "attachments": [{"id": 0, "filename": "a.png"}]}
    parts = {"files[0]": ("upload.png", image, "image/png")}
    with httpx.Client(base_url=fake.api_url) as client:

        def post(channel_id: str, headers: dict[str, str]) -> httpx.Response:
            return client.post(
                f"/channels/{channel_id}/messages",
                headers=headers,
                data={"payload_json": json.dumps(payload)},
                files=parts,
            )

        assert post(channel.id, {}).json() == {"message": "401: Unauthorized", "code": 0}
        assert post(channel.id, {"authorization": "Bot other"}).status_code == 401
        assert post("123", bot).json() == {"message": "Unknown Channel", "code": 10003}
        assert post(hidden.id, bot).json() == {"message": "Missing Access", "code": 50001}
        assert post(muted.id, bot).json() == {"message": "Missing Permissions", "code": 50013}
        ok = post(channel.id, bot)
    assert ok.status_code == 200
    assert ok.json()["attachments"][0]["filename"] == "a.png"  # named by attachments[0]
    [message] = channel.messages
    assert message.attachments[0].data == image
    assert message.attachments[0].part == "files[0]"
    assert fake.invalid_requests == 4  # the 401s and 403s, not the 404


def test_async_discord_webhook_on_httpx_too(fake: FakeDiscord) -> None:
    channel = fake.channel()
    hook = fake.webhook(channel)
    image = png_bytes(20)

    async def post() -> int:
        webhook = AsyncDiscordWebhook(url=fake.webhook_url(hook), content="async")
        webhook.add_file(file=image, filename="a.png")
        response = await webhook.execute()
        return int(response.status_code)

    assert anyio.run(post) == 200
    assert channel.messages[0].attachments[0].data == image


def test_an_interaction_reply_is_edited_and_its_token_expires() -> None:
    with fake_discord(BOT_TOKEN, interaction_ttl=0.5) as fake:
        channel = fake.channel()
        _, hook = fake.interaction(channel, "4242")
        original = f"{fake.api_url}/webhooks/4242/{hook.token}/messages/@original"
        with httpx.Client() as client:
            edited = client.patch(original, json={"content": "done"})
            assert edited.status_code == 200
            assert edited.json()["type"] == 20
            follow_up = f"{fake.api_url}/webhooks/4242/{hook.token}"
            follow = client.post(follow_up, json={"content": "f"})
            assert follow.status_code == 200  # wait is always true for follow-ups
            time.sleep(0.6)
            late = client.patch(original, json={"content": "late"})
    assert late.status_code == 401
    assert late.json()["code"] == 50027
    assert [(m.content, m.deferred) for m in channel.messages] == [("done", False), ("f", False)]
