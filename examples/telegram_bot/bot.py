"""A Telegram bot that draws with FLUX: ``/imagine <prompt>``.

It answers "Generating…", submits the prompt through ``submitter.BFL`` with the chat and that
message's id in the metadata, and returns. Nothing here waits for BFL: the receiver
(``RECEIVER_HANDLERS=receiver.integrations.telegram:send``) gets BFL's webhook, keeps the
image, and replaces "Generating…" with the photo (or says why there is none).

Updates come by long polling (``getUpdates``), so the bot runs anywhere, behind any NAT.

Settings (environment, or the ``.env`` found from the current folder upward):

    TELEGRAM_BOT_TOKEN       the bot's token, from @BotFather (the receiver uses it too)
    TELEGRAM_API_URL         the Bot API (default https://api.telegram.org; a local one, a test)
    BFL_API_KEY, BFL_API_URL BFL (neither set: the local sandbox on http://127.0.0.1:8001)
    RECEIVER_PUBLIC_URL      where BFL reaches the receiver (default http://127.0.0.1:8000)
    RECEIVER_WEBHOOK_SECRET  the receiver's webhook secret (it signs each task's webhook)
    BOT_MODEL                the model (default flux-dev)

Run: ``python examples/telegram_bot/bot.py`` (see README.md beside this file).
"""

from __future__ import annotations

import logging
import os
import sys

from dotenv import find_dotenv, load_dotenv
from telegram import ReplyParameters, Update
from telegram.constants import ChatAction
from telegram.ext import Application, CommandHandler, ContextTypes

import submitter
from receiver import redact
from receiver.correlation import MAX_METADATA_BYTES, metadata_bytes

log = logging.getLogger("telegram_bot")

DEFAULT_API_URL = "https://api.telegram.org"
#: Longer prompts get a reply asking for a shorter one: FLUX reads only so much of a prompt,
#: and a reply that says so beats a task that silently ignores the end.
MAX_PROMPT_CHARS = 1000
USAGE = "Send /imagine followed by what to draw, e.g. /imagine a lighthouse at dawn"
GENERATING = "Generating…"

#: Where the BFL client lives between updates (opened once, in post_init).
BFL_KEY = "bfl"


def metadata_for(chat_id: int, progress_id: int, reply_to: int, prompt: str) -> dict[str, object]:
    """What the receiver's Telegram handler needs, with the prompt as the caption, cut so the
    whole fits in the webhook URL (``MAX_METADATA_BYTES``): the handler then needs no store."""
    meta: dict[str, object] = {
        "telegram_chat_id": chat_id,
        "telegram_message_id": progress_id,
        "telegram_reply_to": reply_to,
        "caption": prompt,
    }
    caption = prompt
    while caption and len(metadata_bytes(meta)) > MAX_METADATA_BYTES:
        caption = caption[: max(0, len(caption) - 16)]
        meta["caption"] = caption.rstrip() + "…"
    return meta


async def imagine(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """``/imagine <prompt>``: say "Generating…", submit, return."""
    message = update.effective_message
    if message is None or message.text is None:
        return
    prompt = message.text.partition(" ")[2].strip()
    if not prompt:
        await message.reply_text(USAGE)
        return
    if len(prompt) > MAX_PROMPT_CHARS:
        await message.reply_text(
            f"That prompt is {len(prompt)} characters long; please keep it under "
            f"{MAX_PROMPT_CHARS}."
        )
        return
    progress = await message.reply_text(GENERATING)
    await message.chat.send_action(ChatAction.UPLOAD_PHOTO)
    bfl: submitter.BFL = context.application.bot_data[BFL_KEY]
    meta = metadata_for(message.chat.id, progress.message_id, message.message_id, prompt)
    model = os.environ.get("BOT_MODEL", "flux-dev")
    try:
        task = await bfl.generate(model, prompt, metadata=meta)
    except submitter.ValidationError as exc:
        await progress.edit_text(f"BFL did not take that prompt: {exc}")
        return
    except submitter.OutOfCredits:
        await progress.edit_text("The bot is out of BFL credits; please try again later.")
        return
    except submitter.BFLError as exc:
        log.warning("chat %s: submit failed: %s", message.chat.id, exc)
        await progress.edit_text("BFL could not be reached just now; please try again.")
        return
    log.info("chat %s: submitted task %s", message.chat.id, task.id)


async def open_bfl(application: Application) -> None:  # type: ignore[type-arg]
    bfl = submitter.BFL()
    await bfl.__aenter__()
    application.bot_data[BFL_KEY] = bfl  # its notes (sandbox, no store...) are logged


async def close_bfl(application: Application) -> None:  # type: ignore[type-arg]
    bfl = application.bot_data.pop(BFL_KEY, None)
    if bfl is not None:
        await bfl.aclose()


def build(token: str, api_url: str = DEFAULT_API_URL) -> Application:  # type: ignore[type-arg]
    """The bot's Application: ``/imagine`` and ``/start``, with the BFL client's lifetime."""
    application = (
        Application.builder()
        .token(token)
        .base_url(f"{api_url.rstrip('/')}/bot")
        .concurrent_updates(True)  # one slow submit must not hold up the other chats
        .post_init(open_bfl)
        .post_shutdown(close_bfl)
        .build()
    )
    application.add_handler(CommandHandler("imagine", imagine))
    application.add_handler(CommandHandler(["start", "help"], usage))
    return application


async def usage(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    if message is not None:
        await message.reply_text(USAGE, reply_parameters=ReplyParameters(message.message_id))


def main() -> int:
    load_dotenv(find_dotenv(usecwd=True))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact.install()  # httpx logs each request URL, and the token is in its path
    for handler in logging.getLogger().handlers:  # and any other logger that prints one
        handler.addFilter(redact.RedactURLs())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per long poll otherwise
    token = os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    if not token:
        print("telegram_bot: set TELEGRAM_BOT_TOKEN (from @BotFather)", file=sys.stderr)
        return 2
    application = build(token, os.environ.get("TELEGRAM_API_URL") or DEFAULT_API_URL)
    application.run_polling(allowed_updates=[Update.MESSAGE], poll_interval=0.0, timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
