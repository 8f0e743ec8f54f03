"""examples/discord_command end to end: interactions signed with a real Ed25519 key pair reach
the example's endpoint; ``/imagine`` is deferred at once and submitted to the sandbox (as BFL),
whose webhook reaches a real receiver, whose Discord handler replaces the deferred reply in the
Discord fake with the image. Wrongly signed interactions are refused with 401."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import submitter
from examples.discord_command.bot import create_app, metadata_for
from receiver.correlation import MAX_METADATA_BYTES, metadata_bytes
from receiver.integrations.discord import DiscordSender, DiscordSettings
from sandbox import create_app as create_sandbox
from tests.fakes.discord import FakeDiscord, fake_discord
from tests.servers import serve
from tests.submitter.conftest import sandbox_settings
from tests.support import SECRET, eventually, running_receiver, settings_for

BOT_TOKEN = "example-bot-token.0123456789"
APP_ID = "1200000000000000077"


def signed(key: Ed25519PrivateKey, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    """The headers Discord sends: the signature of timestamp + body, in hex."""
    stamp = timestamp or str(int(time.time()))
    return {
        "content-type": "application/json",
        "x-signature-ed25519": key.sign(stamp.encode() + body).hex(),
        "x-signature-timestamp": stamp,
    }


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@dataclass
class World:
    fake: FakeDiscord
    endpoint: str
    key: Ed25519PrivateKey

    def post(self, interaction: dict[str, Any], key: Ed25519PrivateKey | None = None,
             **headers: str) -> httpx.Response:  # fmt: skip
        body = json.dumps(interaction).encode()
        sent = {**signed(key or self.key, body), **headers}
        return httpx.post(self.endpoint, content=body, headers=sent, timeout=10)


@contextmanager
def world(tmp_path: Path) -> Iterator[World]:
    key = Ed25519PrivateKey.generate()
    with (
        fake_discord(BOT_TOKEN) as fake,
        serve(create_sandbox(sandbox_settings())) as api,
    ):
        receiver_settings = settings_for(tmp_path, sample_hosts=(api.removeprefix("http://"),))
        values: dict[str, Any] = {"bot_token": BOT_TOKEN, "api_url": fake.api_url}
        sender = DiscordSender(DiscordSettings(_env_file=None, **values))  # type: ignore[call-arg]
        handlers = {"receiver.integrations.discord:send": sender.send}
        with running_receiver(receiver_settings, handlers) as receiver:
            bot_values: dict[str, Any] = {
                "api_key": "example-key",
                "api_url": api,
                "public_url": receiver.url,
                "webhook_secret": SECRET,
                "database_url": receiver_settings.database_url,
                "data_dir": tmp_path / "bot",
            }
            bot_settings = submitter.Settings(_env_file=None, **bot_values)  # type: ignore[call-arg]
            app = create_app(public_hex(key), bot_settings, discord_api_url=fake.api_url)
            with serve(app) as url:
                yield World(fake, f"{url}/interactions", key)


def command(interaction_id: str, token: str, prompt: str) -> dict[str, Any]:
    return {
        "type": 2,
        "id": interaction_id,
        "application_id": APP_ID,
        "token": token,
        "data": {
            "name": "imagine",
            "type": 1,
            "options": [{"name": "prompt", "type": 3, "value": prompt}],
        },
    }


def test_imagine_is_deferred_then_the_reply_becomes_the_image(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        channel = w.fake.channel()
        interaction_id, hook = w.fake.interaction(channel, APP_ID)
        assert w.post({"type": 1}).json() == {"type": 1}  # PING → PONG
        started = time.monotonic()
        answer = w.post(command(interaction_id, hook.token, "a red fox in the snow"))
        assert answer.status_code == 200
        assert answer.json() == {"type": 5}
        assert time.monotonic() - started < 3  # Discord's deadline for the first answer
        assert hook.original is not None
        eventually(lambda: hook.original is not None and not hook.original.deferred, timeout=30)
    reply = hook.original
    assert reply.content == "a red fox in the snow"
    [image] = reply.attachments
    assert image.data[:3] == b"\xff\xd8\xff"  # the sandbox's JPEG, uploaded as bytes
    [edit] = [r for r in w.fake.requests if r.method == "PATCH"]
    assert edit.path.endswith("/messages/@original")


@pytest.mark.parametrize(
    "forgery",
    ["unsigned", "other key", "tampered body", "stale timestamp", "not hex"],
)
def test_wrongly_signed_interactions_are_refused_with_401(tmp_path: Path, forgery: str) -> None:
    with world(tmp_path) as w:
        body = json.dumps({"type": 1}).encode()
        headers = signed(w.key, body)
        if forgery == "unsigned":
            headers = {"content-type": "application/json"}
        elif forgery == "other key":
            headers = signed(Ed25519PrivateKey.generate(), body)
        elif forgery == "tampered body":
            body = json.dumps({"type": 1, "x": 1}).encode()
        elif forgery == "stale timestamp":
            headers = signed(w.key, body, str(int(time.time()) - 3600))
        else:
            headers["x-signature-ed25519"] = "zz" * 64
        answer = httpx.post(w.endpoint, content=body, headers=headers, timeout=10)
        assert answer.status_code == 401
        assert answer.text == "invalid request signature"
        assert w.fake.requests == []


def test_the_metadata_fits_the_webhook_url_whatever_the_prompt() -> None:
    interaction = {"id": "1" * 19, "application_id": APP_ID, "token": "t" * 250}
    for prompt in ("short", "é" * 3000, "a lighthouse " * 500):
        metadata = metadata_for(interaction, prompt)
        assert len(metadata_bytes(metadata)) <= MAX_METADATA_BYTES
        assert metadata["discord_interaction_token"] == "t" * 250
        assert metadata["caption"]
        assert prompt.startswith(metadata["caption"].rstrip("…").rstrip())
