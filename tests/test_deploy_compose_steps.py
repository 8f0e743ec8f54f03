"""The one-shot steps compose.yaml runs in the image, run here for real.

- deploy/compose-secrets.py: random secrets once, each file 0600 and owned by its reader,
  never overwritten, never printed; the generated ``.env`` is what the receiver reads from
  its working folder.
- deploy/compose-s3-bucket.py: the bucket ``RECEIVER_STORAGE_URL`` names, created on a real
  S3-compatible server (moto on loopback), idempotent; bad settings are one line, exit 2.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests import s3

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SECRETS_STEP = DEPLOY / "compose-secrets.py"
BUCKET_STEP = DEPLOY / "compose-s3-bucket.py"
#: The owners compose.yaml's readers run as; a non-root test can only give files to itself.
APP_UID, POSTGRES_UID = (10001, 999) if os.geteuid() == 0 else (os.getuid(), os.getuid())


def make_secrets(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, str(SECRETS_STEP), str(folder)),
            *("--app-uid", str(APP_UID), "--postgres-uid", str(POSTGRES_UID)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_secrets_are_made_once_private_to_their_reader(tmp_path: Path) -> None:
    result = make_secrets(tmp_path)
    assert result.returncode == 0, result.stderr
    files = contents(tmp_path)
    assert set(files) == {".env", "pgpass", "postgres-password"}
    for name, owner in (
        (".env", APP_UID),
        ("pgpass", APP_UID),
        ("postgres-password", POSTGRES_UID),
    ):
        info = (tmp_path / name).stat()
        assert stat.S_IMODE(info.st_mode) == 0o600, name  # libpq and asyncpg insist on it
        assert info.st_uid == owner, name
    secret = dotenv_values(tmp_path / ".env")["RECEIVER_WEBHOOK_SECRET"]
    assert secret is not None
    assert len(secret) >= 40
    password = files["postgres-password"]
    assert len(password) >= 30
    assert files["pgpass"] == f"postgres:5432:bfl_hooks:bfl_hooks:{password}\n"
    for value in (secret, password):
        assert value not in result.stdout + result.stderr

    again = make_secrets(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing created" in again.stdout
    assert contents(tmp_path) == files  # PostgreSQL keeps the password it was started with


def test_a_half_made_set_keeps_its_password(tmp_path: Path) -> None:
    assert make_secrets(tmp_path).returncode == 0
    password = (tmp_path / "postgres-password").read_text()
    (tmp_path / "pgpass").unlink()
    assert make_secrets(tmp_path).returncode == 0
    assert (tmp_path / "pgpass").read_text().endswith(f":{password}\n")
    (tmp_path / "postgres-password").unlink()
    assert make_secrets(tmp_path).returncode == 0
    assert (tmp_path / "postgres-password").read_text() == password


def test_the_receiver_reads_the_generated_secret_from_its_working_folder(tmp_path: Path) -> None:
    assert make_secrets(tmp_path).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "BFL_"))}
    probe = (
        "from receiver.settings import Settings; s = Settings(); "
        "print(len(s.webhook_secret), s.env_file)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(DEPLOY.parent)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", str(tmp_path / ".env")]


def test_secrets_step_refuses_a_missing_folder(tmp_path: Path) -> None:
    result = make_secrets(tmp_path / "absent")
    assert result.returncode == 2
    assert "is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def make_bucket(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "AWS_"))}
    return subprocess.run(
        [sys.executable, str(BUCKET_STEP)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def bucket_env(s3_endpoint: str) -> dict[str, str]:
    return {
        "RECEIVER_STORAGE_URL": "s3://bfl-compose-test/images",
        "RECEIVER_S3_ENDPOINT_URL": s3_endpoint,
        "RECEIVER_S3_REGION": s3.REGION,
        "RECEIVER_S3_ADDRESSING_STYLE": "path",
        "RECEIVER_S3_ACCESS_KEY_ID": s3.ACCESS_KEY_ID,
        "RECEIVER_S3_SECRET_ACCESS_KEY": s3.SECRET_ACCESS_KEY,
    }


def test_bucket_step_creates_the_bucket_once(bucket_env: dict[str, str], s3_endpoint: str) -> None:
    first = make_bucket(bucket_env)
    assert first.returncode == 0, first.stderr
    assert "bfl-compose-test created" in first.stdout
    names = [b["Name"] for b in s3.client(s3_endpoint).list_buckets()["Buckets"]]
    assert "bfl-compose-test" in names
    again = make_bucket(bucket_env)
    assert again.returncode == 0, again.stderr
    assert "bfl-compose-test exists" in again.stdout
    assert s3.SECRET_ACCESS_KEY not in first.stdout + first.stderr + again.stdout


@pytest.mark.parametrize(
    "change",
    [
        {"RECEIVER_STORAGE_URL": "file:///data/samples"},
        {"RECEIVER_S3_ACCESS_KEY_ID": ""},
        {"RECEIVER_STORAGE_URL": "s3:///no-bucket"},
    ],
)
def test_bucket_step_says_what_is_missing(
    bucket_env: dict[str, str], change: dict[str, str]
) -> None:
    result = make_bucket({**bucket_env, **change})
    assert result.returncode == 2
    assert "set RECEIVER_STORAGE_URL=s3://BUCKET/PREFIX" in result.stderr
    assert "Traceback" not in result.stderr
