"""The durability guard: on a function platform, a SQLite store or a local image folder is
refused by every entry point (``serve``, ``work``, ``drain``, the app under uvicorn), with one
line naming the platform and the fix; ``RECEIVER_ALLOW_EPHEMERAL_STORE=true`` lets it run with
a warning; PostgreSQL with S3 passes."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from receiver import durability
from receiver.durability import (
    PLATFORM_VARIABLES,
    EphemeralStoreRefused,
    check_durable,
    function_platform,
)
from receiver.settings import Settings
from tests.processes import ReceiverProcess
from tests.s3 import bucket_env
from tests.support import SECRET

PLATFORMS = dict(PLATFORM_VARIABLES)
PG_URL = "postgresql://bob:hunter2secret@db.internal/receiver"
S3_URL = "s3://bucket/images"
_buckets = itertools.count(1)


def settings(database_url: str, storage_url: str, **extra: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        storage_url=storage_url,
        **extra,
    )


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any platform's variable (nor a receiver setting),
    plus ``extra``: what a command started by a test sees."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in PLATFORMS and not k.startswith(("RECEIVER_", "BFL_"))
    }
    return {**env, "RECEIVER_WEBHOOK_SECRET": SECRET, **extra}


# -- detection and the message ----------------------------------------------------------------


@pytest.mark.parametrize(("variable", "name"), PLATFORM_VARIABLES)
def test_each_platform_is_recognised_and_refused_by_name(
    tmp_path: Path, variable: str, name: str
) -> None:
    environ = {variable: "something"}
    platform = function_platform(environ)
    assert platform is not None
    assert (platform.name, platform.variable) == (name, variable)
    with pytest.raises(EphemeralStoreRefused) as refused:
        check_durable(settings(f"sqlite:///{tmp_path}/r.db", f"file://{tmp_path}/s"), environ)
    message = str(refused.value)
    assert message.startswith(f"refusing to start on {name} ({variable} is set): ")
    assert f"the SQLite store {tmp_path}/r.db (RECEIVER_DATABASE_URL)" in message
    assert f"the image folder {tmp_path}/s (RECEIVER_STORAGE_URL)" in message
    for fix in (
        "RECEIVER_DATABASE_URL=postgresql://",
        "RECEIVER_STORAGE_URL=s3://",
        "RECEIVER_ALLOW_EPHEMERAL_STORE=true",
    ):
        assert fix in message
    assert "\n" not in message  # one line, as the CLI prints it


def test_cloud_run_functions_are_named_as_such() -> None:
    # Cloud Run functions set K_SERVICE too: the more specific name wins.
    platform = function_platform({"K_SERVICE": "hook", "FUNCTION_TARGET": "webhook"})
    assert platform is not None
    assert platform.name == "Cloud Run functions"


def test_no_platform_and_empty_variables_mean_no_guard(tmp_path: Path) -> None:
    local = settings(f"sqlite:///{tmp_path}/r.db", f"file://{tmp_path}/s")
    check_durable(local, {})
    check_durable(local, {variable: "" for variable in PLATFORMS})
    assert function_platform({"HOME": "/root"}) is None


@pytest.mark.parametrize("variable", list(PLATFORMS))
def test_postgres_and_s3_pass_on_every_platform(variable: str) -> None:
    check_durable(settings(PG_URL, S3_URL), {variable: "1"})


@pytest.mark.parametrize(
    ("database", "storage", "named", "not_named"),
    [
        ("sqlite", "s3", "RECEIVER_DATABASE_URL", "RECEIVER_STORAGE_URL)"),
        ("postgresql", "local", "RECEIVER_STORAGE_URL", "RECEIVER_DATABASE_URL)"),
    ],
)
def test_either_part_alone_is_refused_and_named(
    tmp_path: Path, database: str, storage: str, named: str, not_named: str
) -> None:
    database_url = f"sqlite:///{tmp_path}/r.db" if database == "sqlite" else PG_URL
    storage_url = S3_URL if storage == "s3" else str(tmp_path / "plain-path")
    with pytest.raises(EphemeralStoreRefused) as refused:
        check_durable(settings(database_url, storage_url), {"VERCEL": "1"})
    message = str(refused.value)
    assert f"({named})" in message
    assert not_named not in message
    assert "lives on the instance's own disk" in message
    assert "hunter2secret" not in message


def test_the_override_runs_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durability, "_warned", set())
    local = settings(
        f"sqlite:///{tmp_path}/r.db", f"file://{tmp_path}/s", allow_ephemeral_store=True
    )
    with caplog.at_level(logging.WARNING, logger="receiver"):
        for _ in range(3):
            check_durable(local, {"AWS_LAMBDA_FUNCTION_NAME": "hook"})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("running on AWS Lambda (AWS_LAMBDA_FUNCTION_NAME is set)")
    assert "a demo only" in warnings[0]


def test_the_override_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_ALLOW_EPHEMERAL_STORE", "true")
    assert Settings(_env_file=None).allow_ephemeral_store is True  # type: ignore[call-arg]
    monkeypatch.setenv("RECEIVER_ALLOW_EPHEMERAL_STORE", "false")
    assert Settings(_env_file=None).allow_ephemeral_store is False  # type: ignore[call-arg]


# -- every entry point, as a real process ------------------------------------------------------


def local_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_environ(
        RECEIVER_DATABASE_URL=f"sqlite:///{tmp_path}/receiver.db",
        RECEIVER_STORAGE_URL=f"file://{tmp_path}/samples",
        **extra,
    )


def receiver_cli(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``bfl-receiver ARGS`` as a process of its own; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "receiver.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        (["serve", "--port", "0"], "K_SERVICE"),
        (["serve", "--port", "0"], "FUNCTIONS_WORKER_RUNTIME"),
        (["work"], "AWS_LAMBDA_FUNCTION_NAME"),
        (["work"], "FUNCTION_TARGET"),
        (["drain", "--budget", "5"], "VERCEL"),
    ],
)
def test_commands_refuse_with_one_line_and_open_nothing(
    tmp_path: Path, command: list[str], variable: str
) -> None:
    done = receiver_cli(command, local_env(tmp_path, **{variable: "1"}), tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: refusing to start on {PLATFORMS[variable]} ")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "receiver.db").exists()  # refused before the store was created
    assert not (tmp_path / "samples").exists()


def test_the_app_under_uvicorn_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "uvicorn", "--factory", "tests.env_app:app"),
            *("--host", "127.0.0.1", "--port", "0"),
        ],
        env=local_env(tmp_path, FUNCTIONS_WORKER_RUNTIME="python", PYTHONPATH=os.getcwd()),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr  # uvicorn's "startup failed"
    assert "refusing to start on Azure Functions (FUNCTIONS_WORKER_RUNTIME is set)" in done.stderr
    assert "Application startup failed" in done.stderr
    assert not (tmp_path / "receiver.db").exists()


def test_serve_with_the_override_runs_and_warns_once(tmp_path: Path) -> None:
    env = local_env(tmp_path, K_SERVICE="hook", RECEIVER_ALLOW_EPHEMERAL_STORE="true")
    receiver = ReceiverProcess(env, tmp_path / "serve.log")
    try:
        receiver.start()
        resp = receiver.ready()
        assert resp.status_code == 200, resp.text
    finally:
        receiver.close()
    log = receiver.log().splitlines()
    warnings = [line for line in log if "running on Google Cloud Run" in line]
    assert len(warnings) == 1, receiver.log()
    assert "RECEIVER_ALLOW_EPHEMERAL_STORE=true" in warnings[0]


def test_drain_with_the_override_runs(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    migrated = receiver_cli(["migrate"], env, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    done = receiver_cli(
        ["drain", "--budget", "5", "--json"],
        {**env, "VERCEL": "1", "RECEIVER_ALLOW_EPHEMERAL_STORE": "true"},
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert '"finished": true' in done.stdout
    assert "running on Vercel (VERCEL is set)" in done.stderr


@pytest.mark.postgres
def test_postgres_and_s3_drain_on_a_platform(
    tmp_path: Path, postgres_url: str, s3_endpoint: str
) -> None:
    bucket = f"durable-{next(_buckets)}"
    env = clean_environ(
        RECEIVER_DATABASE_URL=postgres_url,
        RECEIVER_STORAGE_URL=f"s3://{bucket}/images",
        AWS_LAMBDA_FUNCTION_NAME="hook",
        **bucket_env(s3_endpoint, bucket),
    )
    for command in (["migrate"], ["drain", "--budget", "5", "--json"]):
        done = receiver_cli(command, env, tmp_path)
        assert done.returncode == 0, done.stderr
        assert "refusing" not in done.stderr
        assert "running on" not in done.stderr  # no warning either
