"""``/imagine <prompt>`` as a Discord slash command, served as an interactions endpoint.

Discord POSTs each interaction here, signed with Ed25519 (``X-Signature-Ed25519`` over
``X-Signature-Timestamp`` + the body, with the application's public key). This app:

1. refuses anything not signed by ``DISCORD_PUBLIC_KEY`` (401, as Discord requires);
2. answers PING with PONG (Discord's check when you save the endpoint's URL);
3. answers ``/imagine`` at once with a deferred reply (type 5: the user sees "thinking…"),
   then submits the prompt through ``submitter.BFL`` with the interaction in the metadata.

The receiver's built-in handler (``RECEIVER_HANDLERS=receiver.integrations.discord:send``)
replaces that "thinking…" reply with the image when BFL's webhook comes. Nothing here waits on
BFL, and nothing polls. Run it: ``python -m examples.discord_command.bot`` (see README.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import submitter
from receiver import redact
from receiver.correlation import MAX_METADATA_BYTES, metadata_bytes
from receiver.integrations.common import cut

log = logging.getLogger("discord_command")

PING, APPLICATION_COMMAND = 1, 2  # interaction types
PONG, DEFERRED_CHANNEL_MESSAGE = 1, 5  # interaction callback types
COMMAND = "imagine"
MODEL = "flux-dev"
#: An interaction is a few kilobytes; anything much larger is not Discord.
MAX_BODY_BYTES = 64 * 1024
#: A signed request older (or newer) than this is refused: a replayed capture, not Discord.
MAX_SKEW_SECONDS = 300
DISCORD_API_URL = "https://discord.com/api/v10"


def verifier(public_key_hex: str) -> Callable[[bytes, str, str], bool]:
    """A check of Discord's signature with the application's public key (hex, as the
    Developer Portal shows it)."""
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))

    def verify(body: bytes, signature: str, timestamp: str) -> bool:
        try:
            key.verify(bytes.fromhex(signature), timestamp.encode() + body)
        except (InvalidSignature, ValueError):
            return False
        return timestamp.isdigit() and abs(time.time() - int(timestamp)) <= MAX_SKEW_SECONDS

    return verify


def prompt_of(interaction: dict[str, Any]) -> str:
    data = interaction.get("data") or {}
    for option in data.get("options") or []:
        if isinstance(option, dict) and option.get("name") == "prompt":
            return str(option.get("value") or "").strip()
    return ""


def metadata_for(interaction: dict[str, Any], prompt: str) -> dict[str, Any]:
    """What the receiver's Discord handler needs, with the prompt as the caption, shortened
    until it fits the webhook URL's metadata (``receiver.correlation``: 1024 bytes)."""
    metadata = {
        "discord_application_id": str(interaction["application_id"]),
        "discord_interaction_token": str(interaction["token"]),
        "discord_interaction_id": str(interaction["id"]),  # when its 15 minutes began
        "caption": cut(prompt, 2000),
    }
    limit = len(metadata["caption"])
    while len(metadata_bytes(metadata)) > MAX_METADATA_BYTES and limit > 0:
        limit = max(0, limit - 50)
        metadata["caption"] = cut(prompt, limit) if limit else ""
    return metadata


def create_app(
    public_key_hex: str,
    settings: submitter.Settings | None = None,
    *,
    discord_api_url: str = DISCORD_API_URL,
    model: str = MODEL,
) -> Starlette:
    """The interactions endpoint (``POST /interactions``); ``settings`` for ``submitter.BFL``
    (read from the environment when None)."""
    verify = verifier(public_key_hex)
    clients: dict[str, Any] = {}
    redact.install()  # httpx logs URLs; an interaction's path holds its token

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One BFL client and one HTTP client for the process, not one per command.
        async with submitter.BFL(settings=settings) as bfl, httpx.AsyncClient(timeout=15) as http:
            if bfl.webhook is None:
                log.warning(
                    "no RECEIVER_WEBHOOK_SECRET: BFL will not call the receiver, so no reply "
                    "will ever replace the deferred one; set the receiver's secret"
                )
            clients.update(bfl=bfl, http=http)
            yield

    async def tell(interaction: dict[str, Any], text: str) -> None:
        """Replace the deferred reply with ``text`` (when the submit itself failed)."""
        url = (
            f"{discord_api_url}/webhooks/{interaction['application_id']}/"
            f"{interaction['token']}/messages/@original"
        )
        try:
            await clients["http"].patch(url, json={"content": cut(text, 2000)})
        except httpx.HTTPError as exc:
            log.warning("could not tell Discord the submit failed: %s", type(exc).__name__)

    async def submit(interaction: dict[str, Any], prompt: str) -> None:
        bfl: submitter.BFL = clients["bfl"]
        try:
            task = await bfl.generate(model, prompt, metadata=metadata_for(interaction, prompt))
        except submitter.BFLError as exc:
            await tell(interaction, f"Could not start the image: {exc}")
            return
        log.info("interaction %s: task %s submitted", interaction["id"], task.id)

    async def interactions(request: Request) -> Response:
        body = await request.body()
        signature = request.headers.get("x-signature-ed25519", "")
        timestamp = request.headers.get("x-signature-timestamp", "")
        if len(body) > MAX_BODY_BYTES or not verify(body, signature, timestamp):
            return PlainTextResponse("invalid request signature", status_code=401)
        try:
            interaction = json.loads(body)
        except ValueError:
            return PlainTextResponse("the body is not JSON", status_code=400)
        kind = interaction.get("type") if isinstance(interaction, dict) else None
        if kind == PING:
            return JSONResponse({"type": PONG})
        name = (
            (interaction.get("data") or {}).get("name") if isinstance(interaction, dict) else None
        )
        if kind != APPLICATION_COMMAND or name != COMMAND:
            return PlainTextResponse(f"only /{COMMAND} is handled here", status_code=400)
        prompt = prompt_of(interaction)
        if not prompt:
            return JSONResponse({"type": 4, "data": {"content": "Say what to draw.", "flags": 64}})
        # Discord wants an answer within 3 seconds: defer now, submit after answering.
        return JSONResponse(
            {"type": DEFERRED_CHANNEL_MESSAGE},
            background=BackgroundTask(submit, interaction, prompt),
        )

    return Starlette(routes=[Route("/interactions", interactions, methods=["POST"])],
                     lifespan=lifespan)  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    app = create_app(
        os.environ["DISCORD_PUBLIC_KEY"],
        discord_api_url=os.environ.get("DISCORD_API_URL", DISCORD_API_URL),
    )
    port = int(os.environ.get("PORT", "8080"))
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=port)


if __name__ == "__main__":
    main()
