"""Chat latency: from the sandbox's Ready to the photo arriving in the (fake) Telegram chat.

Processes on loopback: the sandbox (BFL, real webhooks), the receiver (``bfl-receiver serve``
with ``RECEIVER_HANDLERS=receiver.integrations.telegram:send``), and this one, which serves the
Telegram fake (tests/fakes/telegram.py) on a thread and submits with ``submitter.BFL`` as a
bot does: each task names its own chat (so Telegram's one-message-a-second pace per chat does
not enter the figures) and a "Generating…" message to replace.

For each task: Ready is the sandbox's ``end_time`` (the instant get_result turns Ready and the
webhook leaves); the photo's arrival is when the fake received the ``sendPhoto`` request, and
the progress message's end when it received the ``deleteMessage``. The path in between: the
webhook, the receiver's record, the image's download and storage, the job, the upload.

    .venv/bin/python bench/chat_latency.py            # 100 tasks
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import submitter
from bench.e2e import pipeline
from tests.fakes.telegram import FakeTelegram, fake_telegram

SIZE = 256
FIRST_CHAT = 10_000


async def submit_all(
    settings: submitter.Settings, fake: FakeTelegram, arrivals: list[float], label: str
) -> dict[int, str]:
    """Submit one task per chat at its arrival time; the task's polling URL by chat."""
    async with submitter.BFL(settings=settings) as bfl:

        async def one(i: int) -> tuple[int, str]:
            await asyncio.sleep(arrivals[i])
            chat = FIRST_CHAT + len(fake.chats)
            fake.add_chat(chat)
            progress = fake.post_as_bot(chat, "Generating…")
            meta = {
                "telegram_chat_id": chat,
                "telegram_message_id": progress.message_id,
                "caption": f"{label} {i}",
            }
            task = await bfl.generate(
                "flux-dev", f"{label} {i}", width=SIZE, height=SIZE, metadata=meta
            )
            assert task.polling_url is not None
            return chat, task.polling_url

        return dict(await asyncio.gather(*(one(i) for i in range(len(arrivals)))))


def wait_for_photos(fake: FakeTelegram, chats: dict[int, str], give_up: float) -> None:
    deadline = time.monotonic() + give_up
    while True:
        done = {int(c.fields["chat_id"]) for c in fake.calls_to("deleteMessage")}
        if set(chats) <= done:
            return
        if time.monotonic() > deadline:
            raise click.ClickException(f"only {len(done & set(chats))}/{len(chats)} in time")
        time.sleep(0.5)


def ready_times(key: str, chats: dict[int, str]) -> dict[int, float]:
    """The sandbox's end_time of each chat's task (read after the run, not during it)."""
    times = {}
    with httpx.Client(headers={"x-key": key}, timeout=10) as client:
        for chat, polling_url in chats.items():
            result = client.get(polling_url).json()
            times[chat] = float(result["result"]["end_time"])
    return times


def arrival_by_chat(fake: FakeTelegram, method: str) -> dict[int, float]:
    return {int(c.fields["chat_id"]): c.at for c in fake.calls_to(method)}


def quantiles(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=100)[98]


@click.command()
@click.option("--count", default=100, show_default=True, help="Tasks measured.")
@click.option("--task-seconds", default=1.0, show_default=True, help="Sandbox task duration.")
@click.option("--spread", default=10.0, show_default=True, help="Seconds submissions span.")
@click.option("--warmup", default=5, show_default=True, help="Tasks run first, not measured.")
@click.option("--timeout", default=120.0, show_default=True, help="Give up after this long.")
def main(count: int, task_seconds: float, spread: float, warmup: int, timeout: float) -> None:
    """Ready → photo in the chat, median and p99, through sandbox, receiver and fake."""
    schedule = random.Random(0)
    arrivals = sorted(schedule.uniform(0, spread) for _ in range(count))
    telegram = {"RECEIVER_HANDLERS": "receiver.integrations.telegram:send"}
    with tempfile.TemporaryDirectory() as tmp, fake_telegram() as fake:
        telegram |= {"TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_URL": fake.url}
        database_url = f"sqlite:///{tmp}/receiver.db"
        with pipeline(tmp, database_url, task_seconds, "bench-chat", telegram) as (_, settings):
            warm = asyncio.run(
                submit_all(settings, fake, [i * 0.05 for i in range(warmup)], "warm")
            )
            wait_for_photos(fake, warm, timeout)
            chats = asyncio.run(submit_all(settings, fake, arrivals, "measured"))
            wait_for_photos(fake, chats, timeout)
            ready = ready_times("bench-chat", chats)
        photo = arrival_by_chat(fake, "sendPhoto")
        deleted = arrival_by_chat(fake, "deleteMessage")
        wrong = [c for c in chats if [m.kind for m in fake.chats[c].visible()] != ["photo"]]
    if wrong:
        raise click.ClickException(f"{len(wrong)} chats do not hold just the photo")
    to_photo = quantiles([photo[c] - ready[c] for c in chats])
    to_delete = quantiles([deleted[c] - ready[c] for c in chats])
    print(f"tasks      {count}: flux-dev {SIZE}x{SIZE}, {task_seconds:g} s each, one chat each,")
    print(f"           submitted over {spread:g} s, after {warmup} warm-up tasks")
    print("                                median        p99")
    for name, (median, p99) in (("photo in the chat", to_photo), ("progress deleted", to_delete)):
        print(f"  Ready → {name:<18} {median * 1000:8.1f} ms {p99 * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
