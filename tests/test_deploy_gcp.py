"""``deploy/gcp``: the manifests are valid YAML (yamllint), say what they mean (the billing mode
matches the worker setting), and name only things that exist: settings the receiver reads,
options ``bfl-receiver serve`` takes, routes it serves, and gcloud commands and flags (checked
against the installed Google Cloud CLI's own help)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import pytest
import yaml
from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES
from starlette.routing import Route
from yamllint import linter
from yamllint.config import YamlLintConfig

from receiver.app import create_app
from receiver.cli import main
from receiver.draining import check_budget
from receiver.settings import Settings
from receiver.storage.s3 import S3Settings
from tests.support import settings_for

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "gcp"
SCRIPT = DEPLOY / "deploy.sh"
MANIFESTS = {
    "instance": DEPLOY / "service.yaml",
    "request": DEPLOY / "service-request-billing.yaml",
}
#: Cloud Run sends SIGTERM, then SIGKILL 10 s later (its container runtime contract).
CLOUD_RUN_STOP_SECONDS = 10
LINT = YamlLintConfig(
    "extends: default\n"
    "rules:\n"
    "  line-length: {max: 100}\n"
    "  document-start: disable\n"  # Kubernetes-style manifests rarely open with ---
    "  comments: {min-spaces-from-content: 1}\n"
)


def manifest(mode: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MANIFESTS[mode].read_text())
    return loaded


def container(mode: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifest(mode)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(mode: str) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(mode)["env"]}


def serve_params(mode: str) -> dict[str, Any]:
    """The container's arguments as ``bfl-receiver`` itself parses them."""
    spec = container(mode)
    assert spec["command"] == ["bfl-receiver"]
    args = list(spec["args"])
    assert args[0] == "serve"
    command = main.get_command(click.Context(main), "serve")
    assert command is not None
    with click.Context(command) as ctx:
        params: dict[str, Any] = command.make_context("serve", args[1:], parent=ctx).params
    return params


def variable_exists(name: str) -> bool:
    """Whether the receiver, its S3 storage or boto3 reads ``name``."""
    if name.startswith("RECEIVER_S3_"):
        return name.removeprefix("RECEIVER_S3_").lower() in S3Settings.model_fields
    if name.startswith("RECEIVER_"):
        return name.removeprefix("RECEIVER_").lower() in Settings.model_fields
    if name.startswith("AWS_"):
        return any(spec[1] == name for spec in BOTOCORE_DEFAUT_SESSION_VARIABLES.values())
    aliases = {f.validation_alias for f in Settings.model_fields.values()}
    return name in aliases


def script_text() -> str:
    """deploy.sh with its continued lines joined."""
    return SCRIPT.read_text().replace("\\\n", " ")


def secrets_created() -> set[str]:
    found = re.search(r"for name in ([^;]+);", script_text())
    assert found, "deploy.sh creates no secrets"
    return set(found.group(1).split())


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_the_yaml_passes_yamllint(path: Path) -> None:
    problems = list(linter.run(path.read_text(), LINT, str(path)))
    assert problems == [], "\n".join(f"{p.line}:{p.column} {p.message}" for p in problems)


def test_the_lint_config_catches_what_it_should() -> None:
    # The same check, on a broken manifest: it must not pass everything.
    broken = "a: 1\na: 2\nb:   [1,2]\n" + "c: " + "x" * 120 + "\n"
    assert len(list(linter.run(broken, LINT))) >= 3


@pytest.mark.parametrize("mode", list(MANIFESTS))
def test_the_manifest_names_only_real_settings_options_and_routes(mode: str) -> None:
    doc = manifest(mode)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.knative.dev/v1", "Service")
    params = serve_params(mode)
    spec = container(mode)
    assert [p["containerPort"] for p in spec["ports"]] == [params["port"]]
    assert params["host"] == "0.0.0.0"  # Cloud Run reaches the container from outside it
    for name in env_of(mode):
        assert variable_exists(name), f"{MANIFESTS[mode].name} sets {name}, which nothing reads"
    routes = {
        (r.path, method)
        for r in create_app(settings_for(Path("/nonexistent"))).routes
        if isinstance(r, Route)
        for method in r.methods or ()
    }
    for probe in ("startupProbe", "livenessProbe"):
        if probe in spec:
            assert spec[probe]["httpGet"]["port"] == params["port"]
            assert (spec[probe]["httpGet"]["path"], "GET") in routes
    assert ("/drain", "POST") in routes
    referenced = {
        entry["valueFrom"]["secretKeyRef"]["name"]
        for entry in env_of(mode).values()
        if "valueFrom" in entry
    }
    assert referenced <= secrets_created()
    # The instance's disk dies with it: the durability guard would refuse anything else.
    assert env_of(mode)["RECEIVER_DATABASE_URL"]["valueFrom"]
    assert env_of(mode)["RECEIVER_STORAGE_URL"]["value"].startswith("s3://")
    grace = float(env_of(mode)["RECEIVER_SHUTDOWN_GRACE_SECONDS"]["value"])
    assert grace < CLOUD_RUN_STOP_SECONDS


def test_instance_billing_runs_the_worker_and_keeps_an_instance() -> None:
    annotations = manifest("instance")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1  # the reconciler's home
    assert serve_params("instance")["no_worker"] is None
    assert "RECEIVER_RUN_WORKER" not in env_of("instance")


def test_request_billing_runs_no_worker_and_is_drained_in_time() -> None:
    doc = manifest("request")
    annotations = doc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "true"
    assert serve_params("request")["no_worker"] is True
    assert "RECEIVER_ADMIN_TOKEN" in env_of("request")  # /drain answers 404 without it
    text = script_text()
    budget = float(re.search(r'DRAIN_BUDGET="\$\{DRAIN_BUDGET:-(\d+)\}"', text).group(1))  # type: ignore[union-attr]
    assert check_budget(budget) == budget
    deadline = float(re.search(r"--attempt-deadline=(\d+)s", text).group(1))  # type: ignore[union-attr]
    assert budget < deadline < doc["spec"]["template"]["spec"]["timeoutSeconds"]
    uri = re.search(r'--uri="\$1(/drain\?budget=\$DRAIN_BUDGET)"', text)
    assert uri is not None
    parts = urlsplit(uri.group(1))
    assert parts.path == "/drain"
    assert parse_qs(parts.query) == {"budget": ["$DRAIN_BUDGET"]}
    assert '--headers="Authorization=Bearer $(cat ' in text
    assert "--http-method=POST" in text


def test_the_function_deploy_names_real_settings_and_the_entry_point() -> None:
    text = script_text()
    for flag in ("--set-secrets", "--set-env-vars"):
        found = re.search(flag + r'="([^"]+)"', text)
        assert found, flag
        for pair in found.group(1).split(","):
            name, _, value = pair.partition("=")
            assert variable_exists(name), name
            if flag == "--set-secrets":
                assert value.removesuffix(":latest") in secrets_created()
    assert "--entry-point=webhook" in text
    source = re.search(r"--source=(\S+)", text)
    assert source is not None
    main_py = Path(__file__).resolve().parents[1] / source.group(1) / "main.py"
    assert "from receiver.serverless.gcp import webhook" in main_py.read_text()


def test_the_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    usage = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PROJECT": "p"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2
    assert "usage:" in usage.stderr


def gcloud_commands() -> list[tuple[list[str], list[str]]]:
    """Each gcloud invocation in deploy.sh: its command words and the flags it passes.

    Command words run until the first flag, variable, path or resource name (``bfl-…``)."""
    found = []
    for line in script_text().splitlines():
        at = line.find("gcloud ")
        if at < 0 or line.lstrip().startswith("#"):
            continue
        rest = line[at + len("gcloud ") :]
        if line[:at].endswith("$("):  # drain_job "$(gcloud ...)"
            rest = rest.rstrip().removesuffix(')"')
        words = shlex.split(rest)
        command = []
        for word in words:
            if word.startswith(("-", "$", "bfl")) or "/" in word:
                break
            command.append(word)
        flags = [w.split("=")[0] for w in words if w.startswith("--")]
        found.append((command, flags))
    return found


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_every_gcloud_command_and_flag_exists(tmp_path: Path) -> None:
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    commands = gcloud_commands()
    assert len(commands) >= 6
    for command, flags in commands:
        shown = subprocess.run(
            ["gcloud", *command, "--help"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shown.returncode == 0, f"gcloud {' '.join(command)}: {shown.stderr}"
        text = re.sub(r"\x1b\[[0-9;]*m", "", shown.stdout)
        known = set(re.findall(r"--[a-z][a-z0-9-]*", text))
        known |= {f"--{name}" for name in re.findall(r"--\[no-\]([a-z][a-z0-9-]*)", text)}
        for flag in flags:
            assert flag in known, f"gcloud {' '.join(command)} has no {flag}"
