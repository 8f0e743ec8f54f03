"""A bot as users run one: its own process, its own folder and ``.env``, sharing with the
receiver (another process) only its URL, or only a PostgreSQL store. The sandbox plays BFL.

Every handler run is written by tests/metadata_handler.py to a file, read here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from receiver.store import opened_store
from sandbox import create_app
from tests.servers import base_url, loopback_socket, serve
from tests.submitter.conftest import sandbox_settings
from tests.support import SECRET, eventually

REPO = Path(__file__).resolve().parent.parent
HANDLER = "tests.metadata_handler:record"

#: The bot: submits each (prompt, metadata) pair with the settings its folder's .env gives,
#: prints the task ids as JSON.
BOT = textwrap.dedent(
    """
    import asyncio, json, sys
    import submitter

    async def main() -> None:
        ids = []
        async with submitter.BFL() as bfl:
            for prompt, metadata in json.loads(sys.argv[1]):
                ids.append((await bfl.generate("flux-dev", prompt, metadata=metadata)).id)
        print(json.dumps(ids))

    asyncio.run(main())
    """
)


class ReceiverProcess:
    """``bfl-receiver serve`` in a process of its own, on a socket this test holds, so that it
    can be stopped and started again at the same URL."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.sock = loopback_socket()
        self.url = base_url(self.sock)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.folder / f"receiver-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--fd", str(self.sock.fileno())],
            cwd=self.folder,
            env=self.env,
            pass_fds=(self.sock.fileno(),),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        eventually(self._healthy, timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the receiver exited with {self.proc.returncode}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@contextmanager
def receiver_process(
    folder: Path, sandbox: str, database_url: str, seen: Path
) -> Iterator[ReceiverProcess]:
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "PYTHONPATH": str(REPO),  # for tests.metadata_handler
        "RECEIVER_WEBHOOK_SECRET": SECRET,
        "RECEIVER_DATABASE_URL": database_url,
        "RECEIVER_STORAGE_URL": f"file://{folder}/samples",
        "RECEIVER_SAMPLE_HOSTS": sandbox.removeprefix("http://"),
        "RECEIVER_HANDLERS": HANDLER,
        "RECEIVER_POLL_INTERVAL_SECONDS": "0.1",
        "RECEIVER_RECONCILE_AFTER": "1",
        "BFL_API_KEY": "reconciler",
        "BFL_API_URL": sandbox,
        "RECEIVER_LOG_LEVEL": "warning",
        "BFL_TEST_METADATA": str(seen),
    }
    receiver = ReceiverProcess(folder, env)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
        receiver.sock.close()


def run_bot(folder: Path, dotenv: dict[str, str], jobs: list[tuple[str, Any]]) -> Any:
    """Run the bot in ``folder`` with that ``.env`` (and nothing of this process's
    environment); returns its task ids and its stderr."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bot.py").write_text(BOT)
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    done = subprocess.run(
        [sys.executable, "bot.py", json.dumps(jobs)],
        cwd=folder,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(folder)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout), done.stderr.decode()


def handled(seen: Path) -> dict[str, dict[str, Any]]:
    """What the handler was given, by task id."""
    if not seen.exists():
        return {}
    lines = [json.loads(line) for line in seen.read_text().splitlines() if line]
    return {line["task_id"]: line for line in lines}


@contextmanager
def sandbox_api() -> Iterator[str]:
    # Retries spread over 15 s: a webhook that finds the receiver restarting lands later.
    settings = sandbox_settings(webhook_retry_delays=(1.0, 2.0, 4.0, 8.0))
    with serve(create_app(settings)) as url:
        yield url


def test_a_bot_in_another_folder_sharing_only_the_url_gets_its_metadata(tmp_path: Path) -> None:
    seen = tmp_path / "seen.jsonl"
    bot = tmp_path / "elsewhere" / "bot"
    with sandbox_api() as api:
        database = f"sqlite:///{tmp_path / 'receiver' / 'data' / 'receiver.db'}"
        with receiver_process(tmp_path / "receiver", api, database, seen) as receiver:
            dotenv = {
                "BFL_API_URL": api,
                "BFL_API_KEY": "bot-key",
                "RECEIVER_PUBLIC_URL": receiver.url,
                "RECEIVER_WEBHOOK_SECRET": SECRET,
                # No RECEIVER_DATABASE_URL: the default ./data/receiver.db is not there.
            }
            jobs = [
                ("plain", {"chat_id": 42}),
                ("shy [sandbox:early-webhook=1]", {"chat_id": 43, "name": "Zoë"}),
                ("later [sandbox:delay-webhook=8]", {"chat_id": 44}),
            ]
            started = time.monotonic()
            (plain, early, later), stderr = run_bot(bot, dotenv, jobs)
            eventually(lambda: {plain, early} <= handled(seen).keys(), timeout=30)
            # Restart the receiver before the last webhook leaves: it must not matter.
            assert time.monotonic() - started < 8, "the bot was too slow for this test"
            assert later not in handled(seen)
            receiver.stop()
            receiver.start()
            eventually(lambda: later in handled(seen), timeout=40)
            assert receiver.metric("bfl_hooks_webhooks_uncorrelated_total") == 0
    got = handled(seen)
    assert got[plain]["meta"] == {"chat_id": 42}
    assert got[early]["meta"] == {"chat_id": 43, "name": "Zoë"}
    assert got[later]["meta"] == {"chat_id": 44}
    assert all(got[t]["status"] == "ready" for t in (plain, early, later))
    # The bot made no store of its own, and said once why it registered nowhere.
    assert not (bot / "data" / "receiver.db").exists()
    warnings = [line for line in stderr.splitlines() if "cannot register" in line]
    assert len(warnings) == 1, stderr
    assert "data/receiver.db (it does not exist)" in warnings[0]
    assert "metadata still travels in the webhook URL" in warnings[0]
    assert SECRET not in stderr


@pytest.mark.postgres
def test_a_bot_sharing_only_postgresql_gets_metadata_and_reconciliation(
    tmp_path: Path, postgres_url: str
) -> None:
    seen = tmp_path / "seen.jsonl"
    with sandbox_api() as api, receiver_process(tmp_path / "rx", api, postgres_url, seen) as rx:
        dotenv = {
            "BFL_API_URL": api,
            "BFL_API_KEY": "pg-bot-key",
            "RECEIVER_PUBLIC_URL": rx.url,
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DATABASE_URL": postgres_url,
        }
        jobs = [("plain", {"order": "A-1"}), ("lost [sandbox:drop-webhook]", {"order": "A-2"})]
        (plain, dropped), stderr = run_bot(tmp_path / "bot", dotenv, jobs)
        eventually(lambda: {plain, dropped} <= handled(seen).keys(), timeout=60)
        assert rx.metric('bfl_hooks_reconcile_polls_total{outcome="recovered"}') >= 1
    got = handled(seen)
    assert got[plain]["meta"] == {"order": "A-1"}
    assert got[dropped]["meta"] == {"order": "A-2"}  # from the store: no webhook came
    assert "cannot register" not in stderr

    async def registered() -> list[Any]:
        async with opened_store(postgres_url) as store:
            return [await store.get_submission(task_id=t) for t in (plain, dropped)]

    subs = anyio.run(registered)
    assert [s.metadata if s else None for s in subs] == [{"order": "A-1"}, {"order": "A-2"}]
