"""A receiver slower than the sandbox's delivery timeout gets the webhook again (BFL's webhook
guide: a 2xx within 30 s, else a retry), and the duplicate is harmless: the handler runs once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from receiver import create_app as create_receiver
from sandbox import create_app
from tests.sandbox.conftest import KEY, settings
from tests.servers import serve
from tests.support import SECRET, Recorder, as_handler, eventually, settings_for

ASGIApp = Any


def answers_late(app: ASGIApp, delay: float, times: int) -> ASGIApp:
    """The receiver itself, whose first ``times`` webhook answers leave ``delay`` seconds
    after it has recorded the webhook (as a receiver on a slow disk or network would)."""
    late = [times]

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/webhooks/bfl" or late[0] <= 0:
            await app(scope, receive, send)
            return
        late[0] -= 1

        async def send_late(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                await anyio.sleep(delay)
            await send(message)

        await app(scope, receive, send_late)

    return wrapped


def test_a_receiver_slower_than_the_timeout_gets_a_harmless_duplicate(tmp_path: Path) -> None:
    rec = Recorder()
    sandbox = settings(webhook_timeout_seconds=0.5, webhook_retry_delays=(0.2, 0.2))
    with serve(create_app(sandbox)) as api:
        receiver_settings = settings_for(tmp_path, sample_hosts=(api.removeprefix("http://"),))
        app = create_receiver(receiver_settings, handlers={"rec": as_handler(rec)})
        with serve(answers_late(app, delay=1.5, times=1)) as url, httpx.Client() as client:
            answer = client.post(
                f"{api}/v1/flux-dev",
                headers=KEY,
                json={
                    "prompt": "a slow receiver",
                    "webhook_url": f"{url}/webhooks/bfl",
                    "webhook_secret": SECRET,
                },
            )
            assert answer.status_code == 200, answer.text

            def metric(name: str) -> float:
                for line in client.get(f"{url}/metrics").text.splitlines():
                    if line.startswith(name + " "):
                        return float(line.split()[-1])
                return 0.0

            # The first delivery was recorded but answered too late: the sandbox sent it again.
            eventually(lambda: metric("bfl_hooks_webhook_duplicates_total") == 1, timeout=20)
            eventually(lambda: len(rec.events) == 1)
            time.sleep(0.5)  # time for a wrong second run to show up
            assert rec.task_ids() == [answer.json()["id"]]
            assert rec.images[0] is not None  # one download, one image, one handler run
