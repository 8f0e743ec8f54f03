"""The Slack slash-command example (examples/slack_command): Slack's signature checked the way
slack_sdk computes it, an answer at once, and the whole way from ``/imagine`` to the image in
the channel's thread: the example app, the sandbox as BFL, a real receiver with the built-in
Slack handler, and the Slack fake."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from slack_sdk.signature import SignatureVerifier

import submitter
from examples.slack_command.app import Config, create_app, slack_signature, verified
from receiver.integrations.slack import SlackSender, SlackSettings
from sandbox import create_app as create_sandbox
from tests.fakes.slack import TOKEN, FakeSlack, fake_slack
from tests.servers import serve
from tests.submitter.conftest import sandbox_settings
from tests.support import SECRET, eventually, running_receiver, settings_for

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # the example secret in Slack's docs
CHANNEL = "C0CHAN"
HANDLER = "receiver.integrations.slack:send"


def command_body(text: str) -> bytes:
    return urlencode(
        {
            "token": "legacy-verification-token",
            "team_id": "T0FAKE",
            "channel_id": CHANNEL,
            "user_id": "U0HUMAN",
            "command": "/imagine",
            "text": text,
            "response_url": "https://hooks.slack.com/commands/T0FAKE/1/abc",
            "trigger_id": "1.2.3",
        }
    ).encode()


def signed(body: bytes, *, secret: str = SIGNING_SECRET, age: float = 0) -> dict[str, str]:
    """Headers as Slack sends them, signed by slack_sdk (not by the code under test)."""
    timestamp = str(int(time.time() - age))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": signature,
    }


def test_the_signature_matches_slack_sdks() -> None:
    body = command_body("a lighthouse")
    now = time.time()
    timestamp = str(int(now))
    ours = slack_signature(SIGNING_SECRET, timestamp, body)
    assert SignatureVerifier(SIGNING_SECRET).is_valid(body, timestamp, ours)
    assert verified(SIGNING_SECRET, timestamp, ours, body, now)
    assert not verified(SIGNING_SECRET, timestamp, ours, body + b"&x=1", now)
    assert not verified("another-secret", timestamp, ours, body, now)
    assert not verified(SIGNING_SECRET, timestamp, ours, body, now + 301)  # too old
    assert not verified(SIGNING_SECRET, None, ours, body, now)
    assert not verified(SIGNING_SECRET, "12abc", ours, body, now)


@contextmanager
def world(tmp_path: Path) -> Iterator[tuple[FakeSlack, str]]:
    """The sandbox (as BFL), a receiver posting to the Slack fake, and the example app; yields
    the fake and the app's command URL."""
    with serve(create_sandbox(sandbox_settings())) as api, fake_slack(CHANNEL) as fake:
        settings = settings_for(tmp_path, sample_hosts=(api.removeprefix("http://"),))
        sender = SlackSender(
            SlackSettings(_env_file=None, bot_token=SecretStr(TOKEN), api_url=fake.api_url)  # type: ignore[call-arg]
        )
        with running_receiver(settings, {HANDLER: sender.send}) as receiver:
            bfl = submitter.BFL(
                settings=submitter.Settings(  # type: ignore[call-arg]
                    _env_file=None,
                    api_url=api,
                    webhook_secret=(SecretStr(SECRET),),
                    public_url=receiver.url,
                    database_url=settings.database_url,
                )
            )
            config = Config(SIGNING_SECRET, TOKEN, api_url=fake.api_url)
            with serve(create_app(config, bfl)) as app:
                yield fake, f"{app}/slack/commands"


def test_imagine_answers_at_once_and_the_image_arrives_in_the_thread(tmp_path: Path) -> None:
    with world(tmp_path) as (fake, url):
        body = command_body("a lighthouse &amp; a boat")  # Slack escapes &, < and >
        started = time.monotonic()
        answer = httpx.post(url, content=body, headers=signed(body), timeout=10)
        assert time.monotonic() - started < 3.0  # Slack gives a command 3 seconds
        assert answer.status_code == 200
        assert answer.json() == {
            "response_type": "ephemeral",
            "text": "Generating “a lighthouse &amp; a boat”…",
        }

        def image_posted() -> bool:
            return any(m.files for m in fake.channels[CHANNEL].messages)

        eventually(image_posted, timeout=30)
    parent, shared = fake.channels[CHANNEL].messages
    # Escaped once each time, never twice: the app unescaped the prompt (the caption, and what
    # BFL got, is "a lighthouse & a boat"), the handler escaped it again.
    assert parent.text == "<@U0HUMAN> asked for: a lighthouse &amp; a boat"
    assert (shared.thread_ts, shared.text) == (parent.ts, "a lighthouse &amp; a boat")
    data = fake.uploaded(shared.files[0])
    assert data is not None
    with Image.open(io.BytesIO(data)) as image:  # the sandbox's image, as stored
        assert image.size[0] > 0


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"secret": "not-the-signing-secret"}, id="wrong secret"),
        pytest.param({"age": 600}, id="stale timestamp"),
        pytest.param({"unsigned": True}, id="no signature"),
    ],
)
def test_a_request_not_signed_by_slack_is_refused(
    tmp_path: Path, headers: dict[str, object]
) -> None:
    with world(tmp_path) as (fake, url):
        body = command_body("a lighthouse")
        if headers.get("unsigned"):
            sent = {"content-type": "application/x-www-form-urlencoded"}
        else:
            secret = str(headers.get("secret", SIGNING_SECRET))
            sent = signed(body, secret=secret, age=float(str(headers.get("age", 0))))
        answer = httpx.post(url, content=body, headers=sent, timeout=10)
        assert answer.status_code == 401
        assert "signature" in answer.text
        time.sleep(0.5)  # room for any work it might (wrongly) have started
    assert fake.calls == []
    assert fake.channels[CHANNEL].messages == []


def test_an_empty_prompt_gets_the_usage(tmp_path: Path) -> None:
    with world(tmp_path) as (fake, url):
        body = command_body("   ")
        answer = httpx.post(url, content=body, headers=signed(body), timeout=10)
    assert answer.status_code == 200
    assert answer.json()["text"] == "Usage: /imagine <prompt>"
    assert fake.calls == []
