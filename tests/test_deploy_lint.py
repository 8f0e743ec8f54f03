"""Every artefact under deploy/ is checked by its own platform's validator, offline.

- compose.yaml against the Compose Specification's schema (check-jsonschema's vendored copy);
- every Kubernetes manifest with ``kubernetes-validate --strict`` (bundled schemas);
- all YAML with yamllint (deploy/.yamllint);
- the systemd units with ``systemd-analyze verify`` (which exits 0 on unknown keys, so any
  output fails) and ``systemd-analyze security --offline=true --threshold=25``;
- the Prometheus rules with ``promtool check rules`` and ``promtool test rules``, and the
  Grafana dashboard's queries with promtool's parser.

Each check is also shown to fail on a broken copy, so none of them can pass by doing nothing.
None is skipped: a missing tool fails the test and says how to get it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "bfl-hooks.json"
#: The dev extra's commands, next to the interpreter running the tests.
VENV_BIN = Path(sys.executable).parent
#: Where the units expect the project's venv (their install comment says so).
UNIT_EXEC = "/opt/bfl-hooks/bin/bfl-receiver"
#: systemd-analyze's --threshold is the exposure score times ten: 25 means 2.5.
EXPOSURE_THRESHOLD = 25


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def tool(name: str) -> Path:
    path = VENV_BIN / name
    assert path.exists(), f"{name} is missing: make install (it is in the dev extra)"
    return path


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def units() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer"))


# --- compose --------------------------------------------------------------------------------


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", path)


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_compose(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_rejects_a_typo(tmp_path: Path) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    assert "condition: service_healthy" in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace("condition: service_healthy", "condition: healthy", 1))
    result = check_compose(broken)
    assert result.returncode != 0
    assert "healthy" in result.stdout + result.stderr


# --- Kubernetes -----------------------------------------------------------------------------


def validate_k8s(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("kubernetes-validate"), "--strict", *paths)


def test_every_kubernetes_manifest_validates_strictly() -> None:
    manifests = k8s_manifests()
    assert len(manifests) >= 8
    result = validate_k8s(*manifests)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for path in manifests:  # each one was checked against a schema, not passed over
        assert re.search(rf"{re.escape(str(path))} passed for resource", output), output
    assert "WARN" not in output, output
    assert "ERROR" not in output, output


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    broken = tmp_path / "pdb.yaml"
    broken.write_text((K8S / "pdb.yaml").read_text().replace("minAvailable", "minAvailabel"))
    result = validate_k8s(broken)
    assert result.returncode != 0
    assert "minAvailabel" in result.stdout + result.stderr


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    """A new manifest cannot be forgotten; the example Secret is never applied over the real."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    expected = sorted(p.name for p in k8s_manifests() if p.name != "secret.example.yaml")
    assert listed == expected
    assert kustomization["namespace"] == "bfl-hooks"
    assert [i["name"] for i in kustomization["images"]] == ["bfl-hooks"]


def test_kustomize_renders_valid_manifests(tmp_path: Path) -> None:
    """``kubectl kustomize`` (offline) when kubectl is installed; the files alone otherwise."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # the manifests themselves were validated above
        print("kubectl not installed: kustomize rendering not checked (manifests are)")
        return
    result = run(kubectl, "kustomize", K8S)
    assert result.returncode == 0, result.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(result.stdout)
    checked = validate_k8s(rendered)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "registry.example.com/bfl-hooks:0.1.0" in result.stdout
    assert "namespace: bfl-hooks" in result.stdout


# --- YAML style -----------------------------------------------------------------------------


def test_yamllint_passes_on_everything_under_deploy() -> None:
    config = DEPLOY / ".yamllint"
    listed = run(tool("yamllint"), "-c", config, "--list-files", DEPLOY)
    files = listed.stdout.split()
    assert any(f.endswith("compose.yaml") for f in files), listed.stdout
    assert any(f.endswith("alerts.yaml") for f in files), listed.stdout
    assert sum("/k8s/" in f for f in files) >= 9, listed.stdout
    result = run(tool("yamllint"), "--strict", "-c", config, DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_fails_on_a_badly_indented_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a:\n    b: 1\n  c: 2\n")
    result = run(tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint", bad)
    assert result.returncode != 0


# --- systemd --------------------------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path is not None, "systemd-analyze is missing: apt-get install systemd"
    return path


def verifiable_copies(folder: Path, mutate: dict[str, str] | None = None) -> list[Path]:
    """The units with ExecStart pointed at this venv's bfl-receiver.

    ``systemd-analyze verify`` checks that the command exists; the units name where the
    install comment puts it (/opt/bfl-hooks), which is not on a test machine. Only that path
    changes; ``mutate`` replaces more text (for the checks that must fail).
    """
    bfl_receiver = tool("bfl-receiver")
    copies = []
    for unit in units():
        text = unit.read_text().replace(UNIT_EXEC, str(bfl_receiver))
        for old, new in (mutate or {}).items():
            text = text.replace(old, new)
        copy = folder / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


def test_units_name_the_installed_command() -> None:
    for unit in units():
        if unit.suffix == ".service":
            assert f"ExecStart={UNIT_EXEC} " in unit.read_text(), unit.name


def test_systemd_units_verify_without_a_word(tmp_path: Path) -> None:
    copies = verifiable_copies(tmp_path)
    assert {c.name for c in copies} >= {
        "bfl-receiver.service",
        "bfl-receiver-work.service",
        "bfl-receiver-drain.service",
        "bfl-receiver-drain.timer",
    }
    result = run(systemd_analyze(), "verify", *copies)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # "Unknown key ..., ignoring" still exits 0


def test_systemd_verify_speaks_up_on_an_unknown_key(tmp_path: Path) -> None:
    copies = verifiable_copies(tmp_path, {"ProtectHome=yes": "ProtectHme=yes"})
    result = run(systemd_analyze(), "verify", *copies)
    assert "ProtectHme" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "name", ["bfl-receiver.service", "bfl-receiver-work.service", "bfl-receiver-drain.service"]
)
def test_service_exposure_is_at_most_2_5(tmp_path: Path, name: str) -> None:
    unit = next(c for c in verifiable_copies(tmp_path) if c.name == name)
    result = run(
        systemd_analyze(),
        "security",
        "--offline=true",
        f"--threshold={EXPOSURE_THRESHOLD}",
        unit,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout
    print(f"{name}: exposure {found.group(1)}")
    assert float(found.group(1)) <= EXPOSURE_THRESHOLD / 10


def test_the_exposure_threshold_fails_an_unhardened_unit(tmp_path: Path) -> None:
    plain = tmp_path / "plain.service"
    plain.write_text(f"[Service]\nExecStart={tool('bfl-receiver')} serve\n")
    result = run(
        systemd_analyze(), "security", "--offline=true", f"--threshold={EXPOSURE_THRESHOLD}", plain
    )
    assert result.returncode != 0


# --- Prometheus and Grafana -----------------------------------------------------------------


def promtool() -> str:
    result = run(ROOT / "scripts" / "promtool.sh")
    assert result.returncode == 0, f"scripts/promtool.sh failed:\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


def test_alert_rules_pass_promtool_check() -> None:
    result = run(promtool(), "check", "rules", PROMETHEUS / "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", result.stdout), result.stdout


def test_alerts_fire_on_their_unit_test_series() -> None:
    result = run(promtool(), "test", "rules", "alerts.test.yaml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    rules = tmp_path / "broken.yaml"
    text = (PROMETHEUS / "alerts.yaml").read_text().replace("max by (job) (", "max by (job (", 1)
    rules.write_text(text)
    assert run(promtool(), "check", "rules", rules).returncode != 0


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_is_grafana_json_with_a_prometheus_query_per_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "bfl-hooks"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "job"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule promtool parses."""
    rules = [
        {
            "record": f"bfl_hooks_dashboard:query{n}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".+"),
        }
        for n, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool(), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
