"""The Discord handler's test scene: the Discord fake, a delivery server and a real receiver
whose only handler is ``receiver.integrations.discord:send`` pointed at the fake."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from receiver.integrations.discord import DiscordSender, DiscordSettings
from receiver.settings import Settings
from receiver.store.base import Job, JobRun, JobState
from tests.fakes.discord import FakeDiscord, Webhook, fake_discord
from tests.support import (
    Delivery,
    Receiver,
    Sample,
    delivery_server,
    eventually,
    read_store,
    ready,
    running_receiver,
    settings_for,
)

HANDLER = "receiver.integrations.discord:send"
BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.discord-bot-token-secret"
APP_ID = "1100000000000000042"


@dataclass
class Scene:
    fake: FakeDiscord
    delivery: Delivery
    settings: Settings
    receiver: Receiver
    sender: DiscordSender

    def attach(self, task_id: str, metadata: dict[str, Any]) -> None:
        """What the submitter records before BFL answers: the task's metadata."""
        ref = secrets.token_urlsafe(8)

        async def bind(store: Any) -> None:
            await store.prepare_submission(ref, "flux-dev", metadata)
            await store.bind_submission(ref, task_id, None)

        read_store(self.settings, bind)

    def finish(self, task_id: str, metadata: dict[str, Any], sample: Sample | None = None) -> None:
        """The task ``task_id`` with this metadata ends Ready, its image served by delivery."""
        self.attach(task_id, metadata)
        url = self.delivery.add(f"{task_id}.jpg", sample)
        assert self.receiver.post(ready(task_id, url)).status_code == 200

    def job(self, task_id: str) -> Job | None:
        jobs: list[Job] = read_store(self.settings, lambda s: s.jobs_for(task_id))
        return next((j for j in jobs if j.handler == HANDLER), None)

    def settled(self, task_id: str, state: JobState, timeout: float = 30) -> Job:
        def reached() -> Job | None:
            job = self.job(task_id)
            return job if job is not None and job.state is state else None

        eventually(lambda: reached() is not None, timeout=timeout)
        job = reached()
        assert job is not None
        return job

    def runs(self, task_id: str) -> list[JobRun]:
        return list(read_store(self.settings, lambda s: s.runs_for(task_id)))


@contextmanager
def scene(tmp_path: Path, *, max_attempts: int = 5, **fake_options: Any) -> Iterator[Scene]:
    with fake_discord(BOT_TOKEN, **fake_options) as fake, delivery_server() as delivery:
        settings = settings_for(
            tmp_path, sample_hosts=(delivery.host,), handler_max_attempts=max_attempts
        )
        values: dict[str, Any] = {"bot_token": BOT_TOKEN, "api_url": fake.api_url}
        sender = DiscordSender(DiscordSettings(_env_file=None, **values))  # type: ignore[call-arg]
        with running_receiver(settings, {HANDLER: sender.send}) as r:
            yield Scene(fake, delivery, settings, r, sender)


def interaction_metadata(hook: Webhook, interaction_id: str, **more: Any) -> dict[str, Any]:
    return {
        "discord_application_id": hook.id,
        "discord_interaction_token": hook.token,
        "discord_interaction_id": interaction_id,
        **more,
    }


def big_png(at_least: int) -> bytes:
    """A real PNG (noise does not compress) of at least ``at_least`` bytes."""
    side = int((at_least / 3) ** 0.5) + 16
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    assert len(out.getvalue()) > at_least
    return out.getvalue()
