"""The pieces the chat handlers share: pacing per chat, addressing, captions and texts."""

from __future__ import annotations

import asyncio
import time

import pytest

from receiver.events import Event, Status
from receiver.handlers import PermanentError, RateLimited, Skipped
from receiver.integrations.common import address, caption, cut, optional, outcome_text, utf16_len
from receiver.integrations.pacing import Pacer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def event(
    metadata: dict[str, object], status: Status = Status.READY, error: str | None = None
) -> Event:
    return Event(
        task_id="t1",
        status=status,
        image=None,
        metadata=dict(metadata),
        payload={},
        attempt=1,
        idempotency_key="t1:h",
        error=error,
    )


@pytest.mark.anyio
async def test_pacer_spaces_sends_to_one_key_but_not_across_keys() -> None:
    pacer = Pacer(0.2)
    start = time.monotonic()
    done: dict[str, list[float]] = {"a": [], "b": []}

    async def send(key: str) -> None:
        await pacer.slot(key)
        done[key].append(time.monotonic() - start)

    await asyncio.gather(*(send("a") for _ in range(3)), send("b"))
    a = sorted(done["a"])
    assert a[1] - a[0] >= 0.18
    assert a[2] - a[1] >= 0.18
    assert done["b"][0] < 0.15  # another chat is not held up


@pytest.mark.anyio
async def test_pacer_window_limit_and_hold_and_hand_back_of_long_waits() -> None:
    pacer = Pacer(0.0, per_minute=2, max_wait=5.0)
    await pacer.slot("group")
    await pacer.slot("group")
    # The third send this minute would wait ~60 s: not slept, handed to the worker.
    with pytest.raises(RateLimited) as raised:
        await pacer.slot("group")
    assert 55 < raised.value.retry_after <= 60
    pacer.hold("chat", 30)
    assert 29 < pacer.next_free("chat") <= 30
    with pytest.raises(RateLimited):
        await pacer.slot("chat")
    assert pacer.next_free("other") == 0


def test_pacer_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        Pacer(1.0, per_minute=0)


def test_address_skips_absent_and_refuses_wrong_types() -> None:
    with pytest.raises(Skipped, match="no telegram_chat_id"):
        address(event({}), "telegram_chat_id", integer=True)
    assert address(event({"telegram_chat_id": "-100123"}), "telegram_chat_id", integer=True) == (
        -100123
    )
    assert address(event({"telegram_chat_id": 42}), "telegram_chat_id", integer=True) == 42
    for bad in (True, "forty-two", 4.2, [1], {"a": 1}, "9" * 5000, "²", 2**64):
        with pytest.raises(PermanentError, match=r"must be an integer|out of range"):
            address(event({"telegram_chat_id": bad}), "telegram_chat_id", integer=True)
    assert address(event({"slack_channel": " C123 "}), "slack_channel") == "C123"
    with pytest.raises(PermanentError, match="non-empty string"):
        address(event({"slack_channel": ""}), "slack_channel")
    assert optional(event({}), "slack_thread_ts") is None


def test_cut_keeps_within_the_limit_in_code_points_or_utf16_units() -> None:
    assert cut("short", 10) == "short"
    assert cut("a" * 20, 10) == "a" * 9 + "…"
    emoji = "🎨" * 600  # 2 UTF-16 units each
    cut16 = cut(emoji, 1024, utf16=True)
    assert utf16_len(cut16) <= 1024
    assert cut16.endswith("…")
    assert "\ud83c" not in cut16  # never half a surrogate pair
    assert len(cut("e\u0301" * 1000, 2000)) <= 2000
    assert not cut("e\u0301" * 10, 6).rstrip("…").endswith("e")  # no mark left without its base


def test_caption_and_outcome_texts() -> None:
    assert caption(event({"caption": "x" * 3000}), 1024) == "x" * 1023 + "…"
    assert caption(event({"caption": 5}), 1024) == ""
    moderated = outcome_text(event({}, Status.CONTENT_MODERATED))
    assert "moderated" in moderated
    leaky = "failed at https://delivery.example/x.jpg?sig=SECRET\x1b[31m"
    text = outcome_text(event({}, Status.ERROR, leaky))
    assert "SECRET" not in text
    assert "\x1b" not in text
    assert text.startswith("The image could")
    assert outcome_text(event({}, Status.ERROR)) == "The image could not be generated."


def test_finetune_outcome_text() -> None:
    done = Event(
        task_id="ft1",
        status=Status.READY,
        image=None,
        metadata={},
        payload={},
        attempt=1,
        idempotency_key="ft1:h",
        finetune_id="ft1",
    )
    assert outcome_text(done) == "The finetune ft1 finished."
    failed = Event(
        task_id="ft2",
        status=Status.ERROR,
        image=None,
        metadata={},
        payload={},
        attempt=1,
        idempotency_key="ft2:h",
        error="not enough images",
        finetune_id="ft2",
    )
    assert outcome_text(failed) == "The finetune ft2 failed: not enough images."
