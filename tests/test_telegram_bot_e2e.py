"""The example bot (examples/telegram_bot/bot.py) as users run it: its own process, long
polling the Telegram fake, submitting to the sandbox (real webhooks), with a real receiver
sending the photo back to the fake chat. Between the bot and the sandbox, a loopback proxy can
hold the submit's answer until the photo is in the chat: the webhook then arrives (and is
handled) before the submit returns, and it must not matter."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.correlation import MAX_METADATA_BYTES, metadata_bytes
from receiver.integrations.telegram import Telegram, TelegramSettings
from sandbox import create_app
from tests.fakes.telegram import Chat, FakeTelegram, fake_telegram
from tests.servers import serve
from tests.submitter.conftest import sandbox_settings
from tests.support import SECRET, eventually, running_receiver, settings_for

REPO = Path(__file__).resolve().parent.parent
BOT = REPO / "examples" / "telegram_bot" / "bot.py"
HANDLER = "receiver.integrations.telegram:send"
CHAT = 8080


@dataclass
class HoldingProxy:
    """Passes the bot's requests on to the sandbox; while ``hold`` is set, a generation's
    answer is kept back until ``until()`` is true (bounded), and what it saw is recorded."""

    upstream: str
    until: Any = None
    hold: bool = False
    held: list[bool] = field(default_factory=list)
    """Per held submit: True when ``until()`` came true before the answer was given."""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._pass, methods=["GET", "POST"])])

    async def _pass(self, request: Request) -> Response:
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as client:
            answer = await client.request(
                request.method,
                request.url.path,
                params=request.query_params,
                content=await request.body(),
                headers=headers,
            )
        if self.hold and request.method == "POST" and request.url.path.startswith("/v1/flux"):
            deadline = time.monotonic() + 30
            # Polled: the condition is the fake's state, changed on another thread.
            while True:
                if self.until() or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.02)
            self.held.append(bool(self.until()))
        keep = {"content-type": answer.headers.get("content-type", "application/json")}
        return Response(answer.content, status_code=answer.status_code, headers=keep)


@contextmanager
def bot_process(folder: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "bot.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(BOT)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def photos(chat: Chat) -> list[Any]:
    return [m for m in chat.visible() if m.kind == "photo"]


def bot_texts(chat: Chat) -> list[str]:
    return [m.text for m in chat.visible() if m.from_bot and m.text is not None]


def imagine(fake: FakeTelegram, prompt: str, photos_before: int) -> tuple[Any, Any]:
    """The user's ``/imagine``; waits for the photo. Returns the command and the photo."""
    chat = fake.chats[CHAT]
    command = fake.user_says(CHAT, f"/imagine {prompt}")
    eventually(lambda: len(photos(chat)) > photos_before, timeout=60)
    photo = photos(chat)[-1]
    return command, photo


def test_imagine_reaches_a_photo_that_replaces_the_progress_message(tmp_path: Path) -> None:
    with (
        fake_telegram() as fake,
        serve(create_app(sandbox_settings(task_seconds=0.3))) as sandbox,
    ):
        chat = fake.add_chat(CHAT)
        proxy = HoldingProxy(sandbox)
        settings = settings_for(tmp_path, sample_hosts=(sandbox.removeprefix("http://"),))
        values: dict[str, Any] = {"bot_token": fake.token, "api_url": fake.url}
        handler = Telegram(TelegramSettings(_env_file=None, **values))  # type: ignore[call-arg]
        with serve(proxy.app()) as bfl, running_receiver(settings, {HANDLER: handler.send}) as r:
            env = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(tmp_path),
                "TELEGRAM_BOT_TOKEN": fake.token,
                "TELEGRAM_API_URL": fake.url,
                "BFL_API_URL": bfl,
                "BFL_API_KEY": "bot-key",
                "RECEIVER_PUBLIC_URL": r.url,
                "RECEIVER_WEBHOOK_SECRET": SECRET,
            }
            with bot_process(tmp_path / "bot", env) as proc:
                # Bad input first: a helpful reply each, and the bot carries on.
                fake.user_says(CHAT, "/imagine")
                fake.user_says(CHAT, "/imagine " + "x" * 3000)
                eventually(lambda: len(bot_texts(chat)) == 2, timeout=60)
                usage, too_long = bot_texts(chat)
                assert usage.startswith("Send /imagine followed by what to draw")
                assert "3000 characters long" in too_long

                command, photo = imagine(fake, "a red fox", photos_before=0)
                # The webhook before the submit's answer: the proxy holds that answer until the
                # photo is in the chat.
                proxy.until = lambda: len(photos(chat)) >= 2
                proxy.hold = True
                raced, raced_photo = imagine(fake, "a blue whale", photos_before=1)
                eventually(lambda: len(proxy.held) == 1, timeout=30)
                assert proc.poll() is None, "the bot exited"
                metrics = r.client.get("/metrics").text
            log = (tmp_path / "bot" / "bot.log").read_text()
    stored = [p.read_bytes() for p in (tmp_path / "samples").rglob("*") if p.is_file()]
    assert proxy.held == [True]  # the photo was in the chat before the submit returned
    for sent, asked, caption in (
        (photo, command, "a red fox"),
        (raced_photo, raced, "a blue whale"),
    ):
        assert sent.caption == caption
        assert sent.reply_to == asked.message_id
        assert sent.photo is not None
        assert sent.photo.data in stored  # the receiver's stored bytes, exactly
    # Every "Generating…" is gone: only the two usage replies and the photos are left.
    assert [m.kind for m in chat.visible() if m.from_bot] == ["text", "text", "photo", "photo"]
    progress = [m for m in chat.messages if m.text == "Generating…"]
    assert len(progress) == 2
    assert all(m.deleted for m in progress)
    assert "bfl_hooks_webhooks_uncorrelated_total 0.0" in metrics
    assert "Traceback" not in log
    assert fake.token.split(":", 1)[1] not in log
    assert "submitted task" in log


def test_the_bots_caption_is_cut_so_the_metadata_fits_in_the_webhook_url() -> None:
    spec = importlib.util.spec_from_file_location("telegram_bot", BOT)
    assert spec is not None
    assert spec.loader is not None
    bot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bot)
    prompt = "ж" * bot.MAX_PROMPT_CHARS  # two bytes each: 2000 bytes, over the 1 KiB
    meta = bot.metadata_for(-1001234567890, 41, 40, prompt)
    assert len(metadata_bytes(meta)) <= MAX_METADATA_BYTES
    assert meta["caption"].endswith("…")
    assert prompt.startswith(meta["caption"][:-1])
    assert len(meta["caption"]) > 400  # cut to fit, not cut away
    short = bot.metadata_for(1, 2, 3, "a fox")
    assert short == {
        "telegram_chat_id": 1,
        "telegram_message_id": 2,
        "telegram_reply_to": 3,
        "caption": "a fox",
    }
