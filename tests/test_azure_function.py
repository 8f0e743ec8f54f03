"""``receiver.serverless.azure`` through the real ``azure-functions`` library (its
``AsgiFunctionApp`` and request objects, driven by ``tests.azure_driver`` in a process of its
own), recording into PostgreSQL and storing images in S3 (moto): a signed webhook is recorded,
the timer function's drain stores its image and runs its handler, the signature sees the exact
bytes, bad input gets 4xx, the services are opened once; on SQLite the app does not load."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from receiver.verify import sign
from tests import fault_handler
from tests.s3 import bucket_env, client
from tests.support import SECRET, Delivery, delivery_server, jpeg_bytes, ready
from tests.test_durability import clean_environ

ROOT = Path(__file__).resolve().parents[1]
HOST = "http://localhost:7071"  # where the Functions host listens; routePrefix "" (host.json)
_buckets = itertools.count(1)


def http(method: str, path: str, body: bytes = b"", **headers: str) -> dict[str, Any]:
    sent = {
        "content-type": "application/json",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    return {
        "http": {
            "method": method,
            "url": HOST + path,
            "headers": sent,
            "body_b64": base64.b64encode(body).decode(),
        }
    }


def run_driver(
    env: dict[str, str], steps: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.azure_driver"],
        input="".join(json.dumps(step) + "\n" for step in steps),
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.postgres
def test_the_function_app_records_drains_and_checks_bytes(
    tmp_path: Path, postgres_url: str, s3_endpoint: str
) -> None:
    bucket = f"azure-{next(_buckets)}"
    effects = tmp_path / "effects.db"
    image = jpeg_bytes(40)
    with delivery_server() as delivery:
        delivery.add("a1.jpg")
        delivery.samples["a1.jpg"].body = image
        env = _env(postgres_url, s3_endpoint, bucket, delivery, effects)
        body = json.dumps(ready("a1", f"{delivery.url}/a1.jpg")).encode()
        odd = b'{ "status":"Error" ,\n "id" : "a\\u00e9-2"}  '  # any re-encoding breaks the HMAC
        steps = [
            http("GET", "/healthz"),
            http("POST", "/webhooks/bfl", body, x_bfl_signature=sign(body, SECRET)),
            http("POST", "/webhooks/bfl", odd, x_bfl_signature=sign(odd, SECRET)),
            http(
                "POST",
                "/webhooks/bfl",
                odd,
                x_bfl_signature=sign(json.dumps(json.loads(odd)).encode(), SECRET),
            ),
            http("POST", "/webhooks/bfl", body, x_webhook_secret="wrong"),
            http("POST", "/webhooks/bfl", b'{"id": "a3", "status"', x_webhook_secret=SECRET),
            http("POST", "/nowhere"),
            {"timer": True},
            http("POST", "/webhooks/bfl", body, x_webhook_secret=SECRET),
        ]
        done = run_driver(env, steps)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == len(steps) + 1, done.stdout
    health, new, odd_ok, tampered, wrong, malformed, nowhere, _, duplicate, opened = out
    assert health["status"] == 200
    assert (new["status"], json.loads(new["body"])) == (200, {"task_id": "a1", "outcome": "new"})
    assert odd_ok["status"] == 200, odd_ok
    assert json.loads(odd_ok["body"])["task_id"] == "a\u00e9-2"
    assert [tampered["status"], wrong["status"], malformed["status"]] == [401, 401, 400]
    assert nowhere["status"] == 404
    assert json.loads(duplicate["body"])["outcome"] == "duplicate"
    assert opened == {"opened": 1}  # one lifespan for every request of the instance
    # The timer's drain ran the download (into S3) and the handlers of a1 and the Error task.
    assert len(fault_handler.runs(str(effects))) == 2
    s3 = client(s3_endpoint)
    try:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    finally:
        s3.close()
    assert any(hashlib.sha256(image).hexdigest() in key for key in keys), keys
    assert "Traceback" not in done.stderr


def _env(
    postgres_url: str, s3_endpoint: str, bucket: str, delivery: Delivery, effects: Path
) -> dict[str, str]:
    return clean_environ(
        FUNCTIONS_WORKER_RUNTIME="python",
        RECEIVER_DATABASE_URL=postgres_url,
        RECEIVER_STORAGE_URL=f"s3://{bucket}/images",
        RECEIVER_SAMPLE_HOSTS=delivery.host,
        RECEIVER_HANDLERS="tests.fault_handler:slow",
        RECEIVER_LOG_LEVEL="warning",
        BFL_TEST_EFFECTS=str(effects),
        BFL_TEST_SLEEP="0",
        **bucket_env(s3_endpoint, bucket),
    )


def test_on_sqlite_the_function_app_does_not_load(tmp_path: Path) -> None:
    env = clean_environ(
        FUNCTIONS_WORKER_RUNTIME="python",
        RECEIVER_DATABASE_URL=f"sqlite:///{tmp_path}/receiver.db",
        RECEIVER_STORAGE_URL=f"file://{tmp_path}/samples",
    )
    done = run_driver(env, [http("GET", "/healthz")])
    assert done.returncode != 0
    assert (
        "FunctionMisconfigured: refusing to start on Azure Functions "
        "(FUNCTIONS_WORKER_RUNTIME is set)" in done.stderr
    )
    assert done.stdout == ""  # not a single request answered
    assert not (tmp_path / "receiver.db").exists()


def test_host_json_keeps_the_webhook_at_its_path() -> None:
    host = json.loads((ROOT / "deploy" / "azure" / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""
