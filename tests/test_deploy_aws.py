"""``deploy/aws/template.yaml``: valid CloudFormation (cfn-lint, the real linter) that matches
the code it deploys (the handler, the settings it sets, the inline cap)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from receiver.inline import INLINE_CAP_SECONDS
from receiver.settings import Settings

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "aws" / "template.yaml"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"


class _CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (``!Ref``, ``!Sub``...) kept as plain values."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_CloudFormationLoader.add_multi_constructor("!", _tagged)


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CFN_LINT), "--regions", "us-east-1", "eu-west-1", "--", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_template_passes_cfn_lint() -> None:
    result = _lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_would_catch_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    text = TEMPLATE.read_text()
    assert "Runtime: python3.12" in text
    broken.write_text(text.replace("Runtime: python3.12", "Runtime: python2.9"))
    result = _lint(broken)
    assert result.returncode != 0
    assert "python2.9" in result.stdout


def _template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CloudFormationLoader)
    return loaded


def test_the_template_deploys_the_real_handler_with_settings_the_receiver_reads() -> None:
    template = _template()
    function = template["Resources"]["ReceiverFunction"]["Properties"]
    module, _, name = function["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    known = {f"RECEIVER_{field}".upper() for field in Settings.model_fields}
    known |= {str(f.validation_alias) for f in Settings.model_fields.values() if f.validation_alias}
    variables = function["Environment"]["Variables"]
    assert set(variables) <= known, set(variables) - known
    assert variables["RECEIVER_STORAGE_URL"]["Sub"].startswith("s3://")  # not a local disk
    # The function's timeout leaves room for a full inline budget and the answer.
    assert function["Timeout"] > INLINE_CAP_SECONDS + 5
    budget = template["Parameters"]["InlineBudgetSeconds"]
    assert budget["MaxValue"] == INLINE_CAP_SECONDS


def test_secrets_are_noecho_parameters_and_the_drain_runs_on_a_schedule() -> None:
    template = _template()
    parameters = template["Parameters"]
    for secret in ("DatabaseUrl", "WebhookSecret", "BflApiKey"):
        assert parameters[secret]["NoEcho"] is True
    rule = template["Resources"]["DrainRule"]
    assert rule["Type"] == "AWS::Events::Rule"  # its events carry "source": "aws.events"
    assert rule["Properties"]["ScheduleExpression"] == {"Ref": "DrainScheduleExpression"}
    assert rule["Properties"]["Targets"][0]["Arn"] == {"GetAtt": "ReceiverFunction.Arn"}
    url = template["Resources"]["ReceiverUrl"]["Properties"]
    assert url["AuthType"] == "NONE"  # BFL cannot sign AWS requests; the secret authenticates
