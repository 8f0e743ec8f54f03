"""Conformance: schemathesis against the sandbox with BFL's official OpenAPI spec.

Every operation of the spec gets positive and negative examples; every response must be no
server error and conform to the spec (status code, content type, schema), and invalid
requests must be rejected. Kept bounded: a few examples per operation, no shrinking.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from sandbox import create_app
from tests.sandbox.conftest import settings
from tests.servers import serve

#: ../shared/bfl beside the repository (CI lays it there too).
SPEC = Path(__file__).resolve().parents[3] / "shared" / "bfl" / "openapi-2026-04-29.json"
if not SPEC.exists():
    pytest.skip(f"the BFL spec is not at {SPEC}", allow_module_level=True)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=30,
    no_shrink=True,
    with_security_parameters=False,  # the key is ours to send, below
    database="none",  # no .hypothesis directory in the work tree
)


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    """A sandbox that cannot run out of credits or task slots under the fuzzer."""
    app = create_app(
        settings(
            task_seconds=0.01, credits=1e9, max_active_tasks=10_000, max_active_kontext_max=10_000
        )
    )
    with serve(app) as url:
        yield url


@schema.parametrize()
@hypothesis.settings(deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_sandbox_conforms_to_the_official_spec(api: str, case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(base_url=api, headers={"x-key": "schemathesis"}, checks=CHECKS)
