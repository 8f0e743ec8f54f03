"""``bfl-sandbox serve`` for real, and settings read from the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from sandbox import SandboxSettings
from sandbox.cli import main
from tests.servers import loopback_socket, wait_until


def test_serve_starts_a_working_sandbox_on_the_given_port() -> None:
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()  # the kernel picked it; the CLI binds it again right away
    env = {**os.environ, "SANDBOX_TASK_SECONDS": "0", "SANDBOX_LOG_LEVEL": "warning"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from sandbox.cli import main; main()",
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", trust_env=False).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=20, interval=0.1)
        submitted = httpx.post(
            f"{base}/v1/flux-dev", json={"prompt": "cli"}, headers={"x-key": "k"}, trust_env=False
        ).json()
        assert submitted["polling_url"].startswith(f"{base}/")
        result = httpx.get(submitted["polling_url"], trust_env=False).json()
        assert result["status"] == "Ready"
    finally:
        process.terminate()
        process.wait(timeout=20)
        assert process.stdout is not None
        process.stdout.close()


def test_help_lists_serve_and_its_flags() -> None:
    runner = CliRunner()
    assert "serve" in runner.invoke(main, ["--help"]).output
    output = runner.invoke(main, ["serve", "--help"]).output
    assert "--host" in output
    assert "--port" in output


def test_bad_settings_are_a_clear_cli_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_FAULTS", "set-on-fire")
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code != 0
    assert "unknown sandbox fault" in result.output


def test_settings_come_from_sandbox_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDBOX_TASK_SECONDS", "0.5")
    monkeypatch.setenv("SANDBOX_WEBHOOK_RETRY_DELAYS", "1, 2.5")
    monkeypatch.setenv("SANDBOX_ALLOWED_HOSTS", "127.0.0.0/8,receiver")
    monkeypatch.setenv("SANDBOX_FAULTS", "drop-webhook,delay-webhook=1.5")
    monkeypatch.setenv("SANDBOX_WEBHOOK_SHAPE", "b")
    loaded = SandboxSettings(_env_file=None)  # type: ignore[call-arg]
    assert loaded.task_seconds == 0.5
    assert loaded.webhook_retry_delays == (1.0, 2.5)
    assert loaded.allowed_hosts == ("127.0.0.0/8", "receiver")
    assert loaded.faults == ("drop-webhook", "delay-webhook=1.5")
    assert loaded.webhook_shape == "b"
    assert loaded.delivery_ttl_seconds == 600


@pytest.mark.parametrize(
    "overrides",
    [{"faults": ("nope",)}, {"webhook_retry_delays": (-1.0,)}, {"webhook_shape": "c"}],
)
def test_invalid_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SandboxSettings(_env_file=None, **overrides)  # type: ignore[call-arg, arg-type]
