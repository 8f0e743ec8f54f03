"""``receiver.serverless.gcp:webhook`` under the real Functions Framework (``functions-framework
--asgi``, gunicorn with uvicorn workers, as Cloud Run functions run it), on loopback, recording
into PostgreSQL and storing images in S3 (moto): a signed webhook is recorded, its image stored
and its handler run by ``POST /drain``; the HMAC sees the exact bytes sent; bad input gets 4xx;
the store is opened once per instance; the durability guard stops a SQLite function."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from receiver.settings import Settings
from receiver.verify import sign
from tests import fault_handler
from tests.pg import PostgresCluster
from tests.s3 import bucket_env, client
from tests.support import SECRET, Delivery, delivery_server, jpeg_bytes, read_store, ready
from tests.test_durability import clean_environ

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK = Path(sys.executable).parent / "functions-framework"  # installed beside python
#: The function's source as deployed (deploy/gcp/deploy.sh).
SOURCE = ROOT / "deploy" / "gcp" / "function" / "main.py"
TOKEN = "admin-token-0123456789"
BEARER = {"authorization": f"Bearer {TOKEN}"}
START_TIMEOUT = 60.0
_buckets = itertools.count(1)


@dataclass
class Function:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    database_url: str
    bucket: str
    s3_endpoint: str
    effects: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def framework_command() -> list[str]:
    return [
        *(str(FRAMEWORK), "--asgi", "--target", "webhook", "--source", str(SOURCE)),
        *("--host", "127.0.0.1", "--port", "0"),
    ]


def start_function(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """The framework on a port the kernel picks; gunicorn names it in its log."""
    log_path = tmp_path / "function.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            framework_command(),
            # gunicorn's control socket goes there, not to ~/.gunicorn shared by every run.
            env={**env, "XDG_RUNTIME_DIR": str(tmp_path)},
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc, log_path


def wait_for_url(proc: subprocess.Popen[bytes], log_path: Path, *, healthy: bool = True) -> str:
    """The function's URL once it answers ``/healthz`` (with 200 if ``healthy``)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log_path.read_text())
        if found:
            url = found.group(1)
            try:  # gunicorn listens before its worker has booted: wait for an answer
                status = httpx.get(url + "/healthz", timeout=2).status_code
                if status == 200 or not healthy:
                    return url
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"the function did not start:\n{log_path.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def delivery() -> Iterator[Delivery]:
    with delivery_server() as server:
        yield server


@pytest.fixture
def function(
    tmp_path: Path, postgres_url: str, s3_endpoint: str, delivery: Delivery
) -> Iterator[Function]:
    bucket = f"gcp-{next(_buckets)}"
    effects = tmp_path / "effects.db"
    env = clean_environ(
        RECEIVER_DATABASE_URL=postgres_url,
        RECEIVER_STORAGE_URL=f"s3://{bucket}/images",
        RECEIVER_ADMIN_TOKEN=TOKEN,
        RECEIVER_SAMPLE_HOSTS=delivery.host,
        RECEIVER_HANDLERS="tests.fault_handler:slow",
        RECEIVER_POLL_INTERVAL_SECONDS="0.05",
        RECEIVER_LOG_LEVEL="warning",
        BFL_TEST_EFFECTS=str(effects),
        BFL_TEST_SLEEP="0",
        GUNICORN_LOG_LEVEL="info",  # for the "Listening at" line
        PYTHONPATH=str(ROOT),  # tests.fault_handler
        **bucket_env(s3_endpoint, bucket),
    )
    proc, log_path = start_function(env, tmp_path)
    try:
        url = wait_for_url(proc, log_path)
        yield Function(url, proc, log_path, postgres_url, bucket, s3_endpoint, effects)
    finally:
        stop(proc)


def post_webhook(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    sent = {"content-type": "application/json", **headers}
    return httpx.post(url + "/webhooks/bfl", content=body, headers=sent, timeout=30)


def signed(body: bytes) -> dict[str, str]:
    return {"x-bfl-signature": sign(body, SECRET)}


def stored_keys(function: Function) -> list[str]:
    s3 = client(function.s3_endpoint)
    try:
        listing = s3.list_objects_v2(Bucket=function.bucket)
        return [item["Key"] for item in listing.get("Contents", [])]
    finally:
        s3.close()


def backend_pids(cluster: PostgresCluster, database_url: str) -> set[int]:
    """The PostgreSQL backends connected to the function's database (psql uses another)."""
    name = urlsplit(database_url).path.lstrip("/")
    out = cluster.sql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}'")
    return {int(line) for line in out.split()}


def test_a_signed_webhook_is_recorded_stored_and_handled_by_a_drain(
    function: Function, delivery: Delivery, postgres_cluster: PostgresCluster
) -> None:
    image = jpeg_bytes(48)
    delivery.add("t1.jpg")
    delivery.samples["t1.jpg"].body = image
    body = json.dumps(ready("t1", f"{delivery.url}/t1.jpg")).encode()
    resp = post_webhook(function.url, body, signed(body))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"task_id": "t1", "outcome": "new"}
    pids = backend_pids(postgres_cluster, function.database_url)
    assert pids  # the instance holds its store open between requests

    time.sleep(1.0)  # no worker in a function: nothing runs until a drain
    assert fault_handler.runs(str(function.effects)) == []
    assert stored_keys(function) == []

    drained = httpx.post(function.url + "/drain?budget=20", headers=BEARER, timeout=60)
    assert drained.status_code == 200, drained.text
    summary = drained.json()
    assert (summary["done"], summary["queued"], summary["finished"]) == (2, 0, True)
    assert len(fault_handler.runs(str(function.effects))) == 1
    digest = hashlib.sha256(image).hexdigest()
    assert [key for key in stored_keys(function) if digest in key], stored_keys(function)

    settings = Settings(_env_file=None, database_url=function.database_url)  # type: ignore[call-arg]
    event = read_store(settings, lambda store: store.get_event("t1"))
    assert event is not None
    assert event.image is not None
    assert event.image.sha256 == digest

    # A duplicate, the readiness probe and the metrics go through the same instance.
    again = post_webhook(function.url, body, {"x-webhook-secret": SECRET})
    assert again.json()["outcome"] == "duplicate"
    assert httpx.get(function.url + "/readyz", timeout=10).json() == {"ok": True}
    metrics = httpx.get(function.url + "/metrics", timeout=10).text
    assert 'bfl_hooks_webhooks_total{outcome="duplicate"} 1.0' in metrics
    # Opened once per instance: the backends of the first request are still the ones serving.
    assert pids <= backend_pids(postgres_cluster, function.database_url)


def test_the_signature_is_checked_over_the_exact_bytes_sent(function: Function) -> None:
    # Odd spacing, key order and escapes: any re-encoding on the way would break the HMAC.
    body = b'{ "status":"Error" ,\n "id" : "t\\u00e9-2",  "error":"caf\\u00e9 \\ud83d\\ude00"}  '
    resp = post_webhook(function.url, body, signed(body))
    assert resp.status_code == 200, resp.text
    assert resp.json()["task_id"] == "t\u00e9-2"
    reencoded = json.dumps(json.loads(body)).encode()
    assert reencoded != body
    tampered = post_webhook(function.url, body, signed(reencoded))
    assert tampered.status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/webhooks/bfl", b'{"id": "t3", "status": "Error"}', {"x-webhook-secret": "nope"}, 401),
        ("/webhooks/bfl", b'{"id": "t3", "status": "Error"}', {}, 401),
        ("/webhooks/bfl", b'{"id": "t3", "status"', {"x-webhook-secret": SECRET}, 400),
        ("/webhooks/bfl", b'{"status": "Ready"}', {"x-webhook-secret": SECRET}, 400),
        ("/webhooks/bfl", b"x" * (300 * 1024), {"x-webhook-secret": SECRET}, 413),
        ("/drain?budget=5", b"", {"authorization": "Bearer wrong"}, 401),
        ("/drain?budget=soon", b"", BEARER, 400),
        ("/nowhere", b"", {}, 404),
    ],
)
def test_bad_input_gets_a_4xx(
    function: Function, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    resp = httpx.post(function.url + path, content=body, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    assert "Traceback" not in function.log()


def test_a_function_on_sqlite_refuses_to_start(tmp_path: Path) -> None:
    env = clean_environ(
        RECEIVER_DATABASE_URL=f"sqlite:///{tmp_path}/receiver.db",
        RECEIVER_STORAGE_URL=f"file://{tmp_path}/samples",
    )
    proc, log_path = start_function(env, tmp_path)
    try:
        code = proc.wait(START_TIMEOUT)
    finally:
        stop(proc)
    log = log_path.read_text()
    assert code != 0, log
    # FUNCTION_TARGET is set by the framework itself, as on the platform.
    assert "refusing to start on Cloud Run functions (FUNCTION_TARGET is set)" in log
    assert "RECEIVER_DATABASE_URL=postgresql://" in log
    assert "Traceback" not in log
    assert not (tmp_path / "receiver.db").exists()


def test_a_store_that_cannot_be_opened_gets_503_and_is_tried_again(tmp_path: Path) -> None:
    env = clean_environ(
        # Port 1 on loopback: nothing listens, the connection is refused at once.
        RECEIVER_DATABASE_URL="postgresql://bob:hunter2secret@127.0.0.1:1/receiver",
        RECEIVER_STORAGE_URL="s3://bucket/images",
        GUNICORN_LOG_LEVEL="info",
    )
    proc, log_path = start_function(env, tmp_path)
    try:
        url = wait_for_url(proc, log_path, healthy=False)
        # Each request tries to open it again, and says so.
        answers = [
            httpx.get(url + "/healthz", timeout=30),
            post_webhook(url, b'{"id": "t9", "status": "Error"}', {"x-webhook-secret": SECRET}),
        ]
        for resp in answers:
            assert resp.status_code == 503, resp.text
            assert resp.headers["retry-after"] == "5"
    finally:
        stop(proc)
    log = log_path.read_text()
    assert log.count("cannot open the receiver's store or storage: ") >= 3
    assert "hunter2secret" not in log
    assert "Traceback" not in log
