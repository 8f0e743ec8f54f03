"""What deploy/'s artefacts say agrees with the code: metric names, shutdown grace, wiring.

The validators (tests/test_deploy_lint.py) check each file's form; these check its meaning:
every metric the alerts and the dashboard name exists in receiver/metrics.py and is exported
by a running receiver; each stop timeout outlasts the shutdown it waits for; the compose
sandbox profile is wired end to end; the Kubernetes pods are restricted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from receiver.metrics import Metrics
from tests.support import (
    Recorder,
    Sample,
    as_handler,
    delivery_server,
    eventually,
    ready,
    running_receiver,
    settings_for,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
#: Labels Prometheus adds to every scraped series: not the receiver's to export.
TARGET_LABELS = {"job", "instance"}
_SELECTOR = re.compile(r"\b(bfl_hooks_[a-z0-9_]+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def alert_queries() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "bfl-hooks.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def selectors(queries: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``(series name, {label: value})`` for every bfl_hooks_ selector, equality matchers only
    in the dict (others are checked for their label name)."""
    found = []
    for query in queries:
        for name, body in _SELECTOR.findall(query):
            labels = {k: v for k, op, v in _MATCHER.findall(body or "")}
            found.append((name, labels))
    return found


def defined_series() -> dict[str, set[str]]:
    """Every series name receiver/metrics.py exports, with the label names it carries."""
    series: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        kind = str(metric._type)  # "counter", "gauge" or "histogram"
        for suffix in _SUFFIXES[kind]:
            series[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def unknown_names(queries: list[str]) -> list[str]:
    """What the queries name that receiver/metrics.py does not define (series or label)."""
    series = defined_series()
    problems = []
    for name, labels in selectors(queries):
        if name not in series:
            problems.append(name)
            continue
        problems += [f"{name}{{{k}}}" for k in set(labels) - series[name] - TARGET_LABELS]
    return problems


def test_every_metric_the_alerts_and_dashboard_name_is_defined() -> None:
    assert len(selectors(alert_queries())) >= 6
    assert len(selectors(dashboard_queries())) >= 14
    assert unknown_names(alert_queries()) == []
    assert unknown_names(dashboard_queries()) == []


def test_a_renamed_metric_or_label_is_caught() -> None:
    assert unknown_names(["max(bfl_hooks_dead_job)"]) == ["bfl_hooks_dead_job"]
    assert unknown_names(['rate(bfl_hooks_webhooks_total{result="new"}[5m])']) == [
        "bfl_hooks_webhooks_total{result}"
    ]
    assert unknown_names(["bfl_hooks_queue_depth_total"]) == ["bfl_hooks_queue_depth_total"]


def test_alerts_name_series_a_running_receiver_exports(tmp_path: Path) -> None:
    """Served for real: one stored image, one dead download (403: the URL expired), one
    webhook with a wrong secret; then every series the alerts select is in /metrics, with
    the label values they match (``le="60.0"`` is how the client writes the 60 s bucket)."""
    recorder = Recorder()
    with delivery_server() as delivery:
        good = delivery.add("good.jpg")
        expired = delivery.add("expired.jpg", Sample(status=403))
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,))
        with running_receiver(settings, {"rec": as_handler(recorder)}) as receiver:
            assert receiver.post(ready("task-good", good)).status_code == 200
            assert receiver.post(ready("task-expired", expired)).status_code == 200
            assert receiver.post(ready("task-x", good), secret="wrong").status_code == 401
            eventually(lambda: receiver.metric("bfl_hooks_downloads_total", outcome="dead") >= 1)
            eventually(lambda: "task-good" in recorder.task_ids())
            text = receiver.client.get("/metrics").text
    exported = [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    # A webhook the store refused is answered 503: the one label value not provoked here
    # (tests/test_faults_store.py does), so it is checked against the code that emits it.
    not_provoked = {("outcome", "store_error")}
    app_source = (ROOT / "receiver" / "app.py").read_text()
    for name, labels in selectors(alert_queries()):
        wanted = {k: v for k, v in labels.items() if k not in TARGET_LABELS}
        for key, value in list(wanted.items()):
            if (key, value) in not_provoked:
                assert f'labels("{value}")' in app_source
                del wanted[key]
        assert any(
            sample == name and wanted.items() <= sample_labels.items()
            for sample, sample_labels in exported
        ), f"{name}{wanted} is not in /metrics"


# --- shutdown grace -------------------------------------------------------------------------


def uvicorn_drain_seconds() -> int:
    """How long ``serve`` lets open requests finish after SIGTERM (receiver/cli.py)."""
    found = re.search(r"timeout_graceful_shutdown=(\d+)", (ROOT / "receiver/cli.py").read_text())
    assert found is not None
    return int(found.group(1))


def seconds(text: str) -> float:
    found = re.fullmatch(r"(\d+)(s|min)?", text.strip())
    assert found is not None, text
    return int(found.group(1)) * (60 if found.group(2) == "min" else 1)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_stop_grace_outlasts_the_shutdown() -> None:
    services = compose()["services"]
    for name in ("receiver", "worker"):
        service = services[name]
        grace = float(service["environment"]["RECEIVER_SHUTDOWN_GRACE_SECONDS"])
        assert seconds(service["stop_grace_period"]) > uvicorn_drain_seconds() + grace, name


def test_kubernetes_termination_grace_outlasts_the_shutdown() -> None:
    config = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    grace = float(config["data"]["RECEIVER_SHUTDOWN_GRACE_SECONDS"])
    receiver = pod_spec("receiver.yaml")
    pre_stop = receiver["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    args = receiver["containers"][0]["args"]
    assert args == ["serve", "--no-worker"]  # no jobs: the job grace does not apply
    assert receiver["terminationGracePeriodSeconds"] > pre_stop + uvicorn_drain_seconds()
    worker = pod_spec("worker.yaml")
    assert worker["containers"][0]["args"] == ["work", "--host", "0.0.0.0", "--port", "9000"]
    assert worker["terminationGracePeriodSeconds"] > grace


def unit_setting(unit: str, key: str) -> str:
    found = re.findall(rf"^{key}=(.*)$", (DEPLOY / "systemd" / unit).read_text(), re.M)
    assert found, f"{unit}: no {key}="
    value: str = found[-1]
    return value


def test_systemd_stop_timeouts_outlast_the_shutdown() -> None:
    for unit, http in (("bfl-receiver.service", True), ("bfl-receiver-work.service", False)):
        grace = float(re.findall(r"RECEIVER_SHUTDOWN_GRACE_SECONDS=(\d+)", read_unit(unit))[0])
        needed = grace + (uvicorn_drain_seconds() if http else 0)
        assert seconds(unit_setting(unit, "TimeoutStopSec")) > needed, unit


def read_unit(name: str) -> str:
    return (DEPLOY / "systemd" / name).read_text()


def test_units_are_hardened_as_documented() -> None:
    for unit in ("bfl-receiver.service", "bfl-receiver-work.service", "bfl-receiver-drain.service"):
        text = read_unit(unit)
        for line in (
            "DynamicUser=yes",
            "User=bfl-hooks",  # one uid for every unit: they share the state directory
            "StateDirectory=bfl-hooks",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "SystemCallFilter=@system-service",
            "CapabilityBoundingSet=",
            "EnvironmentFile=/etc/bfl-hooks/bfl-hooks.env",
        ):
            assert re.search(rf"^{re.escape(line)}$", text, re.M), f"{unit}: {line}"
    assert unit_setting("bfl-receiver-drain.service", "SuccessExitStatus") == "3"
    assert "drain --budget" in unit_setting("bfl-receiver-drain.service", "ExecStart")


# --- compose wiring -------------------------------------------------------------------------


def test_compose_starts_in_order_and_runs_each_role() -> None:
    services = compose()["services"]
    postgres = services["postgres"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["receiver"]["command"] == ["serve", "--no-worker"]
    assert services["receiver"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"] == ["work", "--host", "0.0.0.0", "--port", "9000"]
    for name in ("receiver", "worker"):
        migrate = services[name]["depends_on"]["migrate"]
        assert migrate["condition"] == "service_completed_successfully", name
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]
    assert services["seaweedfs"]["profiles"] == ["s3"]
    assert services["s3-bucket"]["profiles"] == ["s3"]
    assert services["sandbox"]["profiles"] == ["sandbox"]
    assert services["submit"]["profiles"] == ["sandbox"]
    assert set(compose()["volumes"]) == {"secrets", "postgres", "samples", "objects"}


def test_compose_sandbox_profile_is_wired_from_submit_to_storage() -> None:
    """The names must agree for `--profile sandbox up` to store an image with no other step:
    the submit goes to the sandbox, whose webhook goes to the receivers, whose worker may
    download from the sandbox's delivery URLs."""
    services = compose()["services"]
    sandbox, submit, worker = services["sandbox"], services["submit"], services["worker"]
    sandbox_url = sandbox["environment"]["SANDBOX_PUBLIC_URL"]
    assert submit["environment"]["BFL_API_URL"] == sandbox_url
    assert sandbox["command"][-1] == sandbox_url.rsplit(":", 1)[1]  # the port it serves
    public = worker["environment"]["RECEIVER_PUBLIC_URL"]  # ${VAR:-default}: the default
    receiver_url = re.fullmatch(r"\$\{RECEIVER_PUBLIC_URL:-(.+)\}", public)
    assert receiver_url is not None
    assert receiver_url.group(1) == "http://receiver:8000"
    assert sandbox["environment"]["SANDBOX_ALLOWED_HOSTS"] == "receiver"
    hosts = worker["environment"]["RECEIVER_SAMPLE_HOSTS"]
    assert "sandbox:8001" in hosts.split(",")[-1]
    assert submit["depends_on"]["receiver"]["condition"] == "service_healthy"
    assert submit["entrypoint"] == ["bfl-submit"]
    assert submit["command"][0] == "generate"


# --- Kubernetes pods ------------------------------------------------------------------------


def pod_spec(manifest: str) -> dict[str, Any]:
    resource = yaml.safe_load((DEPLOY / "k8s" / manifest).read_text())
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def test_kubernetes_pods_run_restricted() -> None:
    for manifest in ("receiver.yaml", "worker.yaml", "migrate-job.yaml"):
        spec = pod_spec(manifest)
        assert spec["securityContext"]["runAsNonRoot"] is True, manifest
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        mounted = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, manifest
            assert context["readOnlyRootFilesystem"] is True, manifest
            assert context["capabilities"] == {"drop": ["ALL"]}, manifest
            assert {"requests", "limits"} <= set(container["resources"]), manifest
            assert "memory" in container["resources"]["limits"], manifest
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp, manifest
            assert tmp[0]["name"] in mounted, manifest  # a writable /tmp on a read-only root


def test_receiver_probes_gate_traffic_on_readiness() -> None:
    container = pod_spec("receiver.yaml")["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # /readyz waits up to 5 s for the store (receiver/app.py READY_TIMEOUT)
    from receiver.app import READY_TIMEOUT  # noqa: PLC0415

    assert container["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT


def test_compose_steps_run_the_committed_scripts_and_find_the_generated_env() -> None:
    """The one-shot steps run deploy/'s scripts (mounted as configs), and every bfl-hooks
    command starts in the folder the `secrets` volume is mounted at, where its .env is."""
    loaded = compose()
    services = loaded["services"]
    for name, config in (("secrets", "secrets-script"), ("s3-bucket", "s3-bucket-script")):
        (mounted,) = services[name]["configs"]
        assert mounted["source"] == config
        assert services[name]["entrypoint"] == ["python3", mounted["target"]], name
        assert (DEPLOY / loaded["configs"][config]["file"]).is_file(), name
    folder = services["secrets"]["command"][0]
    assert services["secrets"]["volumes"] == [f"secrets:{folder}"]
    for name in ("migrate", "receiver", "worker", "submit", "s3-bucket"):
        assert services[name]["working_dir"] == folder, name
        assert f"secrets:{folder}:ro" in services[name]["volumes"], name
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == f"{folder}/postgres-password"
    assert services["worker"]["environment"]["PGPASSFILE"] == f"{folder}/pgpass"
