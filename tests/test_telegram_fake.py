"""The Telegram fake is faithful: python-telegram-bot, the official-docs client most bots use,
runs against it unchanged (``Bot(token, base_url=…)``) and sees what it would see on Telegram:
its results parsed into its own types, its own exceptions raised from the fake's errors."""

from __future__ import annotations

import datetime as dtm
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from telegram import Bot, ReplyParameters
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, RetryAfter

from tests.fakes.telegram import FakeTelegram, fake_telegram
from tests.support import jpeg_bytes, png_bytes

CHAT = 4242
GROUP = -1001234


@pytest.fixture(autouse=True)
def timedelta_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-telegram-bot 22's opt-in to its next major's ``RetryAfter.retry_after`` type
    (without it, reading the attribute warns, and warnings fail the suite)."""
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with fake_telegram() as server:
        server.add_chat(CHAT)
        server.add_chat(GROUP)
        yield server


def bot_for(fake: FakeTelegram, token: str | None = None) -> Bot:
    return Bot(token or fake.token, base_url=f"{fake.url}/bot")


@pytest.mark.anyio
async def test_get_me_and_photos_documents_edits_deletes(fake: FakeTelegram) -> None:
    photo, document = jpeg_bytes(64), png_bytes(40)
    async with bot_for(fake) as bot:  # initialize() calls getMe
        assert bot.username == "fake_bot"
        assert bot.id == fake.bot_id
        progress = await bot.send_message(CHAT, "Generating…")
        sent = await bot.send_photo(
            CHAT,
            io.BytesIO(photo),
            caption="a lighthouse",
            reply_parameters=ReplyParameters(progress.message_id),
        )
        assert sent.caption == "a lighthouse"
        assert (sent.photo[-1].width, sent.photo[-1].height) == (64, 64)
        assert sent.photo[-1].file_size == len(photo)
        assert sent.reply_to_message is not None
        assert sent.reply_to_message.message_id == progress.message_id
        doc = await bot.send_document(GROUP, io.BytesIO(document), filename="big.png")
        assert doc.document is not None
        assert doc.document.file_name == "big.png"
        edited = await bot.edit_message_text("Done", chat_id=CHAT, message_id=progress.message_id)
        assert not isinstance(edited, bool)
        assert edited.text == "Done"
        assert await bot.delete_message(CHAT, progress.message_id) is True
        assert await bot.send_chat_action(CHAT, "upload_photo") is True
    chat = fake.chats[CHAT]
    assert [m.kind for m in chat.visible()] == ["photo"]
    stored = chat.visible()[0].photo
    assert stored is not None
    assert stored.data == photo  # the exact bytes
    (upload,) = fake.calls_to("sendPhoto")
    assert upload.content_type.startswith("multipart/form-data")
    assert upload.files["photo"].data == photo
    stored_document = fake.chats[GROUP].visible()[0].document
    assert stored_document is not None
    assert stored_document.data == document


@pytest.mark.anyio
async def test_get_updates_delivers_a_command_with_its_entity(fake: FakeTelegram) -> None:
    fake.user_says(CHAT, "/imagine a red fox")
    async with bot_for(fake) as bot:
        (update,) = await bot.get_updates(timeout=1)
        message = update.message
        assert message is not None
        assert message.text == "/imagine a red fox"
        assert message.parse_entities() == {message.entities[0]: "/imagine"}
        assert message.chat.id == CHAT
        assert message.from_user is not None
        assert not message.from_user.is_bot
        # Confirmed by the next offset: gone; an empty long poll returns in its timeout.
        assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()


@pytest.mark.anyio
async def test_errors_raise_the_clients_own_exceptions(fake: FakeTelegram) -> None:
    fake.chats[GROUP].migrated_to = -100999
    blocked = fake.add_chat(31337)
    blocked.blocked = True
    async with bot_for(fake) as bot:
        with pytest.raises(BadRequest, match=r"^Chat not found$"):
            await bot.send_message(1, "hi")
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await bot.send_message(31337, "hi")
        with pytest.raises(ChatMigrated) as migrated:
            await bot.send_message(GROUP, "hi")
        assert migrated.value.new_chat_id == -100999
        with pytest.raises(BadRequest, match=r"^Message caption is too long$"):
            await bot.send_photo(CHAT, jpeg_bytes(), caption="x" * 1025)
        await bot.send_photo(CHAT, jpeg_bytes(), caption="😀" * 512)  # 1024 UTF-16 units
        with pytest.raises(BadRequest, match=r"^Message to delete not found$"):
            await bot.delete_message(CHAT, 999)
        with pytest.raises(BadRequest, match=r"^Message to edit not found$"):
            await bot.edit_message_text("x", chat_id=CHAT, message_id=999)
        fake.rate_limit_next(1, retry_after=3, method="sendMessage")
        with pytest.raises(RetryAfter) as limited:
            await bot.send_message(CHAT, "hi")
        assert limited.value.retry_after == dtm.timedelta(seconds=3)
        assert "Flood control exceeded" in str(limited.value)
        await bot.send_message(CHAT, "hi")  # the script is used up
    with pytest.raises(InvalidToken):
        async with bot_for(fake, token="999:not-this-bot"):
            pass


@pytest.mark.anyio
async def test_photo_limits_are_the_documented_ones(fake: FakeTelegram) -> None:
    out = io.BytesIO()
    Image.new("RGB", (2100, 100), "green").save(out, "PNG")  # ratio 21
    wide = out.getvalue()
    async with bot_for(fake) as bot:
        with pytest.raises(BadRequest, match=r"^Photo_invalid_dimensions$"):
            await bot.send_photo(CHAT, wide)
        sent = await bot.send_document(CHAT, wide, filename="wide.png")
        assert sent.document is not None
        assert sent.document.file_size == len(wide)
    # Over 10 MB as a photo: the documented refusal (the bytes need not be an image for it).
    big = b"\xff\xd8" + bytes(10_000_001)
    async with httpx.AsyncClient(base_url=f"{fake.url}/bot{fake.token}") as client:
        answer = await client.post(
            "/sendPhoto", data={"chat_id": str(CHAT)}, files={"photo": ("a.jpg", big)}
        )
        assert answer.status_code == 400
        assert answer.json() == {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: file is too big",
        }
        # JSON and urlencoded bodies are taken as well as multipart.
        as_json = await client.post("/sendMessage", json={"chat_id": CHAT, "text": "j"})
        as_form = await client.post("/sendMessage", data={"chat_id": str(CHAT), "text": "f"})
        assert as_json.json()["result"]["text"] == "j"
        assert as_form.json()["result"]["text"] == "f"
        unknown = await client.post("/sendTelepathy", json={})
        assert (unknown.status_code, unknown.json()["description"]) == (404, "Not Found")
