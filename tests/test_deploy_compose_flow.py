"""compose.yaml's sandbox profile, run without a container engine: its own commands and
environment, as real processes on loopback, lead from one submit to a stored image.

What compose would do, step by step: `secrets` (deploy/compose-secrets.py into a folder that
stands for the volume, which is also the working folder), `migrate`, two `receiver` replicas
(`serve --no-worker`, here on one shared listening socket as behind one service name), the
`worker` (`work`), the `sandbox`, then `submit` (`bfl-submit generate`). Each command and
variable is read from compose.yaml; only what a container network gives differs: service
names become 127.0.0.1 and ports the kernel picks, PostgreSQL is the test cluster (no
password, so no PGPASSFILE), and images go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.pg import free_port
from tests.servers import base_url, loopback_socket
from tests.support import eventually

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
BIN = Path(sys.executable).parent
_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")
GRACEFUL = (0, -signal.SIGTERM)


def service(name: str) -> dict[str, Any]:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    found: dict[str, Any] = services[name]
    return found


def environment(name: str, names: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The service's environment with ``${VAR:-default}`` at its default (no deploy/.env) and
    service names replaced by where the processes listen."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "BFL_", "SANDBOX_"))
    }
    for key, given in service(name).get("environment", {}).items():
        value = _DEFAULT.sub(lambda m: m.group(2), str(given))
        for old, new in names.items():
            value = value.replace(old, new)
        env[key] = value
    env.pop("PGPASSFILE", None)
    return env | overrides


class Processes:
    """The processes started, stopped with SIGTERM (and waited for) at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, label: str, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with (self.logs / f"{label}.log").open("wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.started[label] = proc
        return proc

    def log(self, label: str) -> str:
        return (self.logs / f"{label}.log").read_text(errors="replace")

    def stop(self) -> dict[str, int]:
        for proc in self.started.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for label, proc in self.started.items():
            try:
                codes[label] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[label] = proc.wait()
        return codes


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
@pytest.mark.postgres
def test_sandbox_profile_goes_from_a_submit_to_a_stored_image(
    tmp_path: Path, postgres_url: str
) -> None:
    workdir, samples, logs = tmp_path / "run-bfl-hooks", tmp_path / "samples", tmp_path / "logs"
    for folder in (workdir, logs):
        folder.mkdir()
    secrets = service("secrets")
    assert secrets["command"] == ["/run/bfl-hooks"]
    made = subprocess.run(
        [
            *(sys.executable, str(DEPLOY / "compose-secrets.py"), str(workdir)),
            *("--app-uid", str(os.getuid()), "--postgres-uid", str(os.getuid())),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr

    sock = loopback_socket()  # both receiver replicas accept on it: one service name
    sandbox_port = free_port()
    receiver_url = base_url(sock)
    names = {"http://receiver:8000": receiver_url, "sandbox:8001": f"127.0.0.1:{sandbox_port}"}
    store = {
        "RECEIVER_DATABASE_URL": postgres_url,
        "RECEIVER_STORAGE_URL": f"file://{samples}",
        "RECEIVER_POLL_INTERVAL_SECONDS": "0.2",
    }
    procs = Processes(logs)
    try:
        migrate = subprocess.run(
            [str(BIN / "bfl-receiver"), *service("migrate")["command"]],
            env=environment("migrate", names, store),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr  # compose: service_completed_successfully

        serve = service("receiver")["command"]
        assert service("receiver")["deploy"]["replicas"] == 2
        for replica in (1, 2):
            procs.start(
                f"receiver-{replica}",
                [str(BIN / "bfl-receiver"), *serve, "--fd", str(sock.fileno())],
                env=environment("receiver", names, store),
                cwd=workdir,
                pass_fds=(sock.fileno(),),
            )
        worker_port = free_port()
        work = [a.replace("0.0.0.0", "127.0.0.1") for a in service("worker")["command"]]
        work[work.index("--port") + 1] = str(worker_port)
        procs.start(
            "worker",
            [str(BIN / "bfl-receiver"), *work],
            env=environment("worker", names, store),
            cwd=workdir,
        )
        sandbox = service("sandbox")
        command = [a.replace("0.0.0.0", "127.0.0.1") for a in sandbox["command"]]
        command[command.index("--port") + 1] = str(sandbox_port)
        procs.start(
            "sandbox",
            [str(BIN / sandbox["entrypoint"][0]), *command],
            env=environment("sandbox", names, {"SANDBOX_ALLOWED_HOSTS": "127.0.0.1"}),
        )
        # compose: submit waits for the receivers' and the sandbox's health checks
        eventually(lambda: answers(f"{receiver_url}/readyz"), timeout=60)
        eventually(lambda: answers(f"http://127.0.0.1:{sandbox_port}/healthz"), timeout=60)
        eventually(lambda: answers(f"http://127.0.0.1:{worker_port}/readyz"), timeout=60)
        # ...and those checks, run as compose runs them, with the ports these processes have
        listening = {
            "receiver": (8000, receiver_url),
            "sandbox": (8001, f"http://127.0.0.1:{sandbox_port}"),
            "worker": (9000, f"http://127.0.0.1:{worker_port}"),
        }
        for name, (port, url) in listening.items():
            check = service(name)["healthcheck"]["test"]  # ["CMD", "python3", "-c", CODE]
            assert check[:3] == ["CMD", "python3", "-c"], name
            code = check[3].replace(f"http://127.0.0.1:{port}", url)
            assert code != check[3], name
            ran = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
            assert ran.returncode == 0, f"{name}'s health check failed"

        submit = service("submit")
        submitted = subprocess.run(
            [str(BIN / submit["entrypoint"][0]), *submit["command"], "--json"],
            env=environment("submit", names, store | {"BFL_SUBMIT_DATA_DIR": str(tmp_path)}),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        task = json.loads(submitted.stdout)["task"]
        assert task["webhook"] is True  # the generated secret was found in the working folder
        task_id = task["id"]

        def stored() -> bool:
            return any(p.is_file() for p in samples.rglob("*")) if samples.exists() else False

        eventually(stored, timeout=60)
        events = subprocess.run(
            [str(BIN / "bfl-receiver"), "events", "--json"],
            env=environment("worker", names, store),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert events.returncode == 0, events.stderr
        (event,) = [json.loads(line) for line in events.stdout.splitlines()]
        assert event["task_id"] == task_id
        assert event["status"] == "ready"
        replicas = procs.log("receiver-1") + procs.log("receiver-2")
        assert '"POST /webhooks/bfl' in replicas  # by webhook, not the reconciler's polling
    finally:
        codes = procs.stop()
        sock.close()
    # Stopped as compose stops them: uvicorn shuts down, then re-raises the SIGTERM it caught.
    assert all(code in GRACEFUL for code in codes.values()), {k: procs.log(k) for k in codes}
    for label in ("receiver-1", "receiver-2"):
        assert "Application shutdown complete" in procs.log(label)
