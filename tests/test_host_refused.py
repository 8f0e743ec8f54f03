"""Issue 9, item 2: a sample refused for its host is impossible to miss.

Its log line names the host and the setting (never the URL's signed query), it has its own
metric, ``show`` says which host is not in RECEIVER_SAMPLE_HOSTS, ``events`` marks the task
refused, and ``/readyz`` carries a warning (still 200) until an allowed download succeeds.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import delivery_server, eventually, read_store, ready, running_receiver
from tests.support import settings_for as receiver_settings

SIGNATURE = "sig=SECRETSIGNATURE"


def cli(settings_url: str, *args: str) -> str:
    env = {**os.environ, "RECEIVER_DATABASE_URL": settings_url}
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_a_refused_sample_host_is_loud_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with delivery_server() as allowed, delivery_server() as unknown:
        settings = receiver_settings(tmp_path, sample_hosts=(allowed.host,))
        with running_receiver(settings) as receiver:
            url = unknown.add("x.jpg") + "?se=2099-01-01T00%3A00%3A00Z&" + SIGNATURE
            assert receiver.post(ready("refused-1", url)).status_code == 200

            def dead() -> bool:
                jobs = read_store(settings, lambda s: s.jobs_for("refused-1"))
                return bool(jobs) and jobs[0].state.value == "dead"

            eventually(dead)
            assert unknown.hits == []  # never contacted
            assert receiver.metric("bfl_hooks_downloads_total", outcome="host_refused") == 1
            readyz = receiver.client.get("/readyz")
            assert readyz.status_code == 200
            [warning] = readyz.json()["warnings"]
            assert unknown.host in warning

            line = next(r.getMessage() for r in caplog.records if "sample refused" in r.message)
            assert unknown.host in line
            assert "RECEIVER_SAMPLE_HOSTS" in line
            assert SIGNATURE not in caplog.text

            shown = cli(settings.database_url, "show", "refused-1")
            assert f"sample host '{unknown.host}' is not in RECEIVER_SAMPLE_HOSTS" in shown
            assert SIGNATURE not in shown
            listed = cli(settings.database_url, "events")
            assert "refused 1" in listed

            # The next allowed download clears the warning.
            assert receiver.post(ready("fine-1", allowed.add("y.jpg"))).status_code == 200
            eventually(lambda: "warnings" not in receiver.client.get("/readyz").json())
