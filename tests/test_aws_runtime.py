"""``receiver.serverless.aws.handler`` under the real Lambda runtime client, frozen between calls.

``python -m awslambdaric receiver.serverless.aws.handler`` runs as its own process against a
loopback stand-in for the Lambda Runtime API (``tests/lambda_runtime.py``), which SIGSTOPs it
between invocations as Lambda freezes an execution environment. The receiver's store is a real
PostgreSQL, its images go to a real S3-compatible server (moto), samples come from a loopback
delivery server, and ``tests.lambda_handler:run`` logs every run with the invocation it ran in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.store import JobState
from tests import aws_events, lambda_handler
from tests.lambda_runtime import Invocation, RuntimeAPI, runtime_api
from tests.s3 import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, client
from tests.support import SECRET, delivery_server, eventually, read_store, ready, settings_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
SECRET_HEADERS = {"x-webhook-secret": SECRET}
#: The slow task's first run: longer than the inline budget its invocation allows (3 s), and
#: shorter than the freeze that follows, so a run left behind would end in a later invocation.
SLOW_SECONDS = 5.0


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"lambda-{os.getpid()}-{time.monotonic_ns()}"
    s3 = client(s3_endpoint)
    s3.create_bucket(Bucket=name)
    s3.close()
    return name


def _function(
    api: RuntimeAPI, env: dict[str, str], log: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", "receiver.serverless.aws.handler"],
            env={
                "PATH": os.environ.get("PATH", ""),
                "PYTHONPATH": str(ROOT),  # tests.lambda_handler, as a deployment package has it
                "AWS_LAMBDA_RUNTIME_API": api.address,
                "AWS_LAMBDA_FUNCTION_NAME": "bfl-hooks",
                **env,
            },
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api.pid = process.pid
    return process


@pytest.fixture
def function_env(
    tmp_path: Path, postgres_url: str, s3_endpoint: str, bucket: str
) -> Iterator[dict[str, str]]:
    with delivery_server() as delivery:
        yield {
            "RECEIVER_DATABASE_URL": postgres_url,
            "RECEIVER_STORAGE_URL": f"s3://{bucket}/images",
            "RECEIVER_S3_ENDPOINT_URL": s3_endpoint,
            "RECEIVER_S3_REGION": REGION,
            "RECEIVER_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "RECEIVER_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "RECEIVER_S3_ADDRESSING_STYLE": "path",
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_HANDLERS": "tests.lambda_handler:run",
            "RECEIVER_SAMPLE_HOSTS": delivery.host,
            "BFL_TEST_EFFECTS": str(tmp_path / "effects.db"),
            "BFL_TEST_SLEEP": str(SLOW_SECONDS),
            "DELIVERY_URL": delivery.url,  # read by the test only
            "_SAMPLE_1": delivery.add("fast-1.jpg"),
        }


def _stop(process: subprocess.Popen[bytes], api: RuntimeAPI) -> None:
    api.thaw()
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _frozen_for(api: RuntimeAPI, seconds: float) -> None:
    """Wait until the function asked for its next event and was frozen, then let time pass."""
    eventually(lambda: api.frozen, timeout=30)
    # Stopped: nothing of it can run (SIGSTOP takes effect a moment after kill() returns).
    eventually(lambda: api.process_state() == "T", timeout=5)
    time.sleep(seconds)


def _body(invocation: Invocation) -> Any:
    assert invocation.outcome == "response", invocation.result
    assert invocation.result["statusCode"] == 200, invocation.result
    return json.loads(invocation.result["body"])


def test_every_acknowledged_webhook_is_handled_and_cut_work_is_finished_by_a_later_drain(
    tmp_path: Path, function_env: dict[str, str]
) -> None:
    env = {k: v for k, v in function_env.items() if not k.startswith(("_", "DELIVERY"))}
    effects = env["BFL_TEST_EFFECTS"]
    log = tmp_path / "function.log"
    with runtime_api() as api:
        process = _function(api, env, log, tmp_path)
        try:
            # 1. A Function URL webhook: recorded, downloaded to S3 and handled in its own call.
            first = api.invoke(
                aws_events.function_url(ready("fast-1", function_env["_SAMPLE_1"]), SECRET_HEADERS)
            )
            inline = _body(first)["inline"]
            assert (inline["done"], inline["finished"]) == (2, True)
            _frozen_for(api, 0.5)

            # 2. A REST API webhook, base64 and HMAC-signed over its bytes, with 4 s to run:
            # its handler takes 5 s, so inline stops at 3 s, hands the job back, answers 200.
            raw = b'{"id": "slow-1", "status": "Error",  "error": "boom"}'
            signed = {"X-BFL-Signature": aws_events.signature(raw, SECRET)}
            second = api.invoke(aws_events.rest_api(raw, signed, base64_body=True), timeout=4)
            inline = _body(second)["inline"]
            assert (inline["handed_back"], inline["finished"]) == (1, False)
            assert second.answered_in is not None
            assert second.answered_in < 4  # within the function's timeout
            # Frozen longer than what was left of the cut run: had it been left running, it
            # would end inside the next invocation.
            _frozen_for(api, SLOW_SECONDS)

            # 3. An HTTP API webhook for another task: only its own job runs inline.
            payload = {"id": "fast-2", "status": "Error", "error": "x"}
            third = api.invoke(aws_events.http_api(payload, SECRET_HEADERS))
            assert _body(third)["inline"]["done"] == 1
            _frozen_for(api, 0.5)

            # 4. The EventBridge schedule: a drain, bounded by the remaining time.
            drained = api.invoke(aws_events.scheduled(), timeout=20)
            assert drained.outcome == "response", drained.result
            summary = drained.result
            assert (summary["done"], summary["queued"], summary["finished"]) == (1, 0, True)
            _frozen_for(api, 0.2)

            # 5. Bad input answers 400, as a result, not a crash of the function.
            unknown = api.invoke(aws_events.sqs())
            assert unknown.outcome == "response"
            assert unknown.result["statusCode"] == 400
            bad = aws_events.function_url(b"{}", SECRET_HEADERS)
            bad.update(body="%%% not base64", isBase64Encoded=True)
            refused = api.invoke(bad)
            assert refused.result["statusCode"] == 400
            assert "base64" in refused.result["body"]
        finally:
            _stop(process, api)
        assert api.init_errors == []
        assert api.freezes >= 5

    traces = {
        first.trace_id: "webhook 1",
        second.trace_id: "webhook 2",
        third.trace_id: "webhook 3",
        drained.trace_id: "drain",
    }
    steps = [
        (task, phase, traces.get(trace, trace))
        for task, phase, trace in lambda_handler.runs(effects)
    ]
    assert steps == [
        ("fast-1", "start", "webhook 1"),
        ("fast-1", "end", "webhook 1"),
        ("slow-1", "start", "webhook 2"),  # cut at the budget, handed back: no end
        ("fast-2", "start", "webhook 3"),
        ("fast-2", "end", "webhook 3"),  # nothing of slow-1 woke up in here
        ("slow-1", "start", "drain"),
        ("slow-1", "end", "drain"),
    ]
    settings = settings_for(tmp_path, database_url=env["RECEIVER_DATABASE_URL"])
    for task in ("fast-1", "slow-1", "fast-2"):  # every acknowledged webhook is handled
        jobs = read_store(settings, lambda s, t=task: s.jobs_for(t))
        assert jobs
        assert {j.state for j in jobs} == {JobState.DONE}, (task, jobs)
    event = read_store(settings, lambda s: s.get_event("fast-1"))
    assert event.image is not None
    assert event.image.location.startswith(f"s3://{env['RECEIVER_STORAGE_URL'][5:]}")
    text = log.read_text()
    assert "Traceback" not in text
    assert SECRET not in text


def test_an_environment_killed_mid_job_loses_nothing_and_a_new_ones_drain_finishes_it(
    tmp_path: Path, function_env: dict[str, str]
) -> None:
    """Lambda ends an environment that times out or crashes: kill -9 in the middle of inline
    work. The webhook was recorded before the job ran; the job's lease expires, and the drain
    of the next environment (a cold start) takes it back and finishes it."""
    env = {k: v for k, v in function_env.items() if not k.startswith(("_", "DELIVERY"))}
    env.update(RECEIVER_JOB_LEASE_SECONDS="2", BFL_TEST_SLEEP="60")
    effects = env["BFL_TEST_EFFECTS"]
    log = tmp_path / "function.log"
    with runtime_api() as api:
        process = _function(api, env, log, tmp_path)
        replacement: subprocess.Popen[bytes] | None = None
        try:
            payload = {"id": "slow-k", "status": "Error", "error": "x"}
            cut = api.submit(aws_events.function_url(payload, SECRET_HEADERS), timeout=30)
            eventually(
                lambda: ("slow-k", "start", cut.trace_id) in lambda_handler.runs(effects),
                timeout=30,
            )
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            assert cut.outcome is None  # never answered: BFL would deliver it again

            replacement = _function(api, env, log, tmp_path)
            api.replaced(replacement.pid)
            time.sleep(2.5)  # the killed run's lease (2 s) runs out
            drained = api.invoke(aws_events.scheduled(), timeout=20)
            assert drained.outcome == "response", drained.result
            assert (drained.result["done"], drained.result["queued"]) == (1, 0)
        finally:
            _stop(process, api)
            if replacement is not None:
                _stop(replacement, api)
    steps = lambda_handler.runs(effects)
    assert steps == [
        ("slow-k", "start", cut.trace_id),  # killed mid-run
        ("slow-k", "start", drained.trace_id),
        ("slow-k", "end", drained.trace_id),
    ]
    settings = settings_for(tmp_path, database_url=env["RECEIVER_DATABASE_URL"])
    [job] = read_store(settings, lambda s: s.jobs_for("slow-k"))
    assert (job.state, job.attempts) == (JobState.DONE, 2)  # the interrupted run counted
