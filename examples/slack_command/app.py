"""``/imagine <prompt>`` for Slack: a slash command that hands the work to bfl-hooks.

Slack POSTs the command here (form-encoded, signed with the app's signing secret). This app:

1. checks the signature (``X-Slack-Signature``: ``v0=`` HMAC-SHA256 of
   ``v0:<X-Slack-Request-Timestamp>:<body>``, compared in constant time; timestamps more than
   five minutes off are refused, so a captured request cannot be replayed);
2. answers at once, well within Slack's 3 seconds, with an ephemeral "Generating…";
3. then, after the answer is sent: posts the request in the channel (``chat.postMessage``) and
   submits through ``submitter.BFL`` with ``metadata={"slack_channel": …, "slack_thread_ts":
   <that message's ts>, "caption": <the prompt>}``.

Nothing here waits on BFL and nothing polls: the receiver's built-in handler
(``RECEIVER_HANDLERS=receiver.integrations.slack:send``) posts the image in that message's
thread when BFL's webhook brings it. See README.md beside this file. The texts it posts are
escaped (&, <, >) as Slack's formatting asks.

Run: ``uvicorn examples.slack_command.app:app --port 3000`` (settings from the environment:
``SLACK_SIGNING_SECRET``, ``SLACK_BOT_TOKEN``, and the submitter's ``BFL_*`` / ``RECEIVER_*``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from receiver.integrations.slack import escaped
from submitter import BFL, BFLError

log = logging.getLogger("slack_command")

#: Slack's advice: refuse requests whose timestamp is more than five minutes off.
MAX_CLOCK_SKEW_SECONDS = 300
#: A slash command's form is a few hundred bytes; anything much larger is not Slack.
MAX_BODY_BYTES = 16 * 1024
#: The caption travels in the task's metadata, which the webhook URL carries (1 KB in all).
MAX_CAPTION_CHARS = 200
#: Where Slack's ``response_url`` points; nothing else is ever posted to.
RESPONSE_HOSTS = ("hooks.slack.com",)


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` Slack sends for ``body`` at ``timestamp``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verified(
    secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float
) -> bool:
    """True when the request is Slack's: a fresh timestamp and the right signature."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > MAX_CLOCK_SKEW_SECONDS:
        return False
    return hmac.compare_digest(slack_signature(secret, timestamp, body), signature)


@dataclass(frozen=True)
class Config:
    """What the app needs; ``from_env`` reads it from the environment."""

    signing_secret: str
    bot_token: str
    api_url: str = "https://slack.com/api/"
    model: str = "flux-dev"

    @classmethod
    def from_env(cls) -> Config:
        missing = [n for n in ("SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN") if not os.environ.get(n)]
        if missing:
            raise SystemExit(f"set {' and '.join(missing)} (the Slack app's Basic Information)")
        return cls(
            signing_secret=os.environ["SLACK_SIGNING_SECRET"],
            bot_token=os.environ["SLACK_BOT_TOKEN"],
            api_url=os.environ.get("SLACK_API_URL", "https://slack.com/api/"),
            model=os.environ.get("BFL_MODEL", "flux-dev"),
        )


class Imagine:
    """The command's work once Slack has its answer: announce, then submit."""

    def __init__(self, config: Config, bfl: BFL, http: httpx.AsyncClient) -> None:
        self.config = config
        self.bfl = bfl
        self.http = http

    async def slack(self, method: str, **fields: str) -> dict[str, Any]:
        url = self.config.api_url.rstrip("/") + "/" + method
        headers = {"authorization": f"Bearer {self.config.bot_token}"}
        try:
            answer: Any = (await self.http.post(url, data=fields, headers=headers)).json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"ok": False, "error": type(exc).__name__}
        return answer if isinstance(answer, dict) else {"ok": False, "error": "not JSON"}

    async def tell_user(self, response_url: str | None, text: str) -> None:
        """An ephemeral note to whoever typed the command, through Slack's response_url."""
        if not response_url or urlsplit(response_url).hostname not in RESPONSE_HOSTS:
            log.warning("not telling the user (no Slack response_url): %s", text)
            return
        with contextlib.suppress(httpx.HTTPError):
            await self.http.post(response_url, json={"response_type": "ephemeral", "text": text})

    async def run(self, channel: str, user: str, prompt: str, response_url: str | None) -> None:
        posted = await self.slack(
            "chat.postMessage", channel=channel, text=f"<@{user}> asked for: {escaped(prompt)}"
        )
        if posted.get("ok") is not True or not isinstance(posted.get("ts"), str):
            await self.tell_user(
                response_url,
                f"I cannot post in this channel ({posted.get('error')}): invite me first.",
            )
            return
        metadata = {
            "slack_channel": channel,
            "slack_thread_ts": posted["ts"],
            "caption": prompt[:MAX_CAPTION_CHARS],
        }
        try:
            task = await self.bfl.generate(self.config.model, prompt=prompt, metadata=metadata)
        except BFLError as exc:
            log.warning("submit refused: %s", exc)
            await self.slack(
                "chat.postMessage",
                channel=channel,
                thread_ts=posted["ts"],
                text=escaped(f"The image could not be started: {exc}"[:500]),
            )
            return
        log.info("task %s submitted for %s", task.id, channel)


def create_app(config: Config, bfl: BFL | None = None) -> Starlette:
    """The slash-command app; ``bfl`` is a ``submitter.BFL`` not yet entered (default:
    ``BFL()``, configured from the environment)."""
    state: dict[str, Imagine] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with bfl or BFL() as client, httpx.AsyncClient(timeout=10) as http:
            state["imagine"] = Imagine(config, client, http)
            yield

    async def command(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return PlainTextResponse("request too large", 413)
        headers = request.headers
        if not verified(
            config.signing_secret,
            headers.get("x-slack-request-timestamp"),
            headers.get("x-slack-signature"),
            body,
            time.time(),
        ):
            return PlainTextResponse("invalid or stale Slack signature", 401)
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        channel, user = form.get("channel_id", ""), form.get("user_id", "")
        # Slack sends the text with &, < and > escaped; BFL (and the caption, which the
        # receiver escapes again) wants it as typed.
        typed = form.get("text", "").replace("&lt;", "<").replace("&gt;", ">")
        prompt = " ".join(typed.replace("&amp;", "&").split())
        if not channel or not user:
            return PlainTextResponse("not a slash command (no channel_id or user_id)", 400)
        if not prompt:
            return JSONResponse(
                {"response_type": "ephemeral", "text": f"Usage: {form.get('command')} <prompt>"}
            )
        work = BackgroundTask(state["imagine"].run, channel, user, prompt, form.get("response_url"))
        answer = {"response_type": "ephemeral", "text": f"Generating “{escaped(prompt[:100])}”…"}
        return JSONResponse(answer, background=work)  # sent first; the work runs after

    return Starlette(
        routes=[Route("/slack/commands", command, methods=["POST"])], lifespan=lifespan
    )


def __getattr__(name: str) -> Any:
    # ``uvicorn examples.slack_command.app:app``: built on first use, so importing this module
    # (the tests do) needs no environment.
    if name == "app":
        return create_app(Config.from_env())
    raise AttributeError(name)
