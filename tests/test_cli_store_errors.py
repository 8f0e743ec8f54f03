"""Commands never create a store, and say in one line, with no credential, what is wrong:
a mistyped or deleted SQLite file, an empty PostgreSQL database, a PostgreSQL server that does
not answer, a password-bearing URL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner, Result

from receiver.cli import main
from receiver.dsn import dsn_target, redact_dsn, redact_text, split_connect_timeout
from tests.pg import PostgresCluster, free_port
from tests.support import SECRET, running_receiver, settings_for

PASSWORD = "hunter2-Sup3r"
READ_COMMANDS = [
    ("events",),
    ("events", "--dead"),
    ("show", "t1"),
    ("dead",),
    ("replay", "--dead"),
    ("prune", "--older-than", "1d"),
]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke(main, list(args))


def assert_one_line_error(out: Result) -> str:
    assert out.exit_code == 1, out.output
    assert "Traceback" not in out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1, out.output
    return lines[0]


@pytest.fixture
def in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no .env, no ./data
    return tmp_path


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_a_mistyped_sqlite_path_is_an_error_naming_the_absolute_path(
    in_empty_folder: Path, command: tuple[str, ...]
) -> None:
    out = run(*command, env={"RECEIVER_DATABASE_URL": "sqlite:///./nope/dir/receiver.db"})
    line = assert_one_line_error(out)
    assert f"no store at {in_empty_folder / 'nope' / 'dir' / 'receiver.db'}" in line
    assert "RECEIVER_DATABASE_URL" in line
    assert not (in_empty_folder / "nope").exists()  # nothing created


def test_the_default_store_from_another_folder_is_not_created(in_empty_folder: Path) -> None:
    line = assert_one_line_error(run("events"))
    assert str(in_empty_folder / "data" / "receiver.db") in line
    assert not (in_empty_folder / "data").exists()


def test_a_deleted_sqlite_file_is_an_error_not_a_new_empty_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = settings_for(tmp_path)
    monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
    with running_receiver(settings) as r:
        assert r.post({"id": "t1", "status": "Error", "error": "x"}).status_code == 200
    assert "t1" in run("events").output
    for leftover in tmp_path.glob("receiver.db*"):
        leftover.unlink()
    line = assert_one_line_error(run("events"))
    assert f"no store at {tmp_path / 'receiver.db'}" in line
    assert not (tmp_path / "receiver.db").exists()


def test_the_real_command_exits_with_one_line_on_stderr(in_empty_folder: Path) -> None:
    env = {**os.environ, "RECEIVER_DATABASE_URL": "sqlite:///./nope/receiver.db"}
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "events"],
        capture_output=True,
        text=True,
        env=env,
        cwd=in_empty_folder,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"Error: no store at {in_empty_folder / 'nope' / 'receiver.db'} "
        f"(RECEIVER_DATABASE_URL=sqlite:///{in_empty_folder / 'nope' / 'receiver.db'}): "
        "run this where the receiver "
        "runs, or set RECEIVER_DATABASE_URL to its store (bfl-receiver serve creates one)"
    )


@pytest.mark.postgres
def test_an_empty_postgres_database_is_not_made_a_store(
    in_empty_folder: Path, postgres_url: str
) -> None:
    line = assert_one_line_error(run("events", env={"RECEIVER_DATABASE_URL": postgres_url}))
    assert "no store at database" in line
    assert "it has no receiver schema" in line

    async def schema() -> object:
        conn = await asyncpg.connect(postgres_url)
        try:
            return await conn.fetchval("SELECT to_regclass('schema_version')")
        finally:
            await conn.close()

    assert asyncio.run(schema()) is None  # not migrated by a read command


@pytest.mark.parametrize("command", [*READ_COMMANDS, ("serve",)])
def test_unreachable_postgres_is_one_line_with_the_host_and_no_password(
    in_empty_folder: Path, command: tuple[str, ...]
) -> None:
    port = free_port()  # nothing listens there: connection refused
    url = f"postgresql://bfl:{PASSWORD}@127.0.0.1:{port}/bflhooks"
    out = run(*command, env={"RECEIVER_DATABASE_URL": url, "RECEIVER_WEBHOOK_SECRET": SECRET})
    line = assert_one_line_error(out)
    assert f"cannot reach PostgreSQL at database 'bflhooks' on 127.0.0.1:{port}" in line
    assert "Connect" in line or "refused" in line  # the cause
    assert PASSWORD not in out.output
    assert SECRET not in out.output


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung host, the wrong service)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.1)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    accepted.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()


def test_a_postgres_port_that_never_answers_is_reported_after_connect_timeout(
    in_empty_folder: Path,
) -> None:
    with silent_server() as port:
        url = f"postgresql://bfl:{PASSWORD}@127.0.0.1:{port}/bflhooks?connect_timeout=1"
        started = time.monotonic()
        out = run("migrate", env={"RECEIVER_DATABASE_URL": url})
        took = time.monotonic() - started
    line = assert_one_line_error(out)
    assert f"cannot reach PostgreSQL at database 'bflhooks' on 127.0.0.1:{port}" in line
    assert "no answer within 1 s" in line
    assert "connect_timeout=SECONDS" in line  # how to change the wait
    assert took < 8  # the URL's second (the default would be 10 s)
    assert PASSWORD not in out.output


@pytest.mark.parametrize("value", ["abc", "-1", "inf", ""])
def test_a_bad_connect_timeout_is_one_line_without_the_url(
    in_empty_folder: Path, value: str
) -> None:
    url = f"postgresql://bfl:{PASSWORD}@127.0.0.1:1/bflhooks?connect_timeout={value}"
    line = assert_one_line_error(run("events", env={"RECEIVER_DATABASE_URL": url}))
    assert "connect_timeout in RECEIVER_DATABASE_URL must be a number of seconds" in line
    assert PASSWORD not in line


def test_split_connect_timeout_keeps_the_rest_of_the_url() -> None:
    url = "postgresql://u:p@h:5432/db?sslmode=require&connect_timeout=2.5&application_name=x"
    assert split_connect_timeout(url) == (
        "postgresql://u:p@h:5432/db?sslmode=require&application_name=x",
        2.5,
    )
    assert split_connect_timeout("postgresql://h/db") == ("postgresql://h/db", 10.0)
    assert split_connect_timeout("postgresql://h/db?connect_timeout=0") == (
        "postgresql://h/db",
        86400.0,  # libpq's 0, no limit: a day
    )


@pytest.mark.postgres
def test_a_real_server_accepts_a_url_with_libpqs_connect_timeout(
    in_empty_folder: Path, postgres_cluster: PostgresCluster
) -> None:
    # asyncpg alone would send connect_timeout to the server as a setting, which it refuses.
    url = postgres_cluster.create_database("with_timeout") + "?connect_timeout=5"
    assert run("migrate", env={"RECEIVER_DATABASE_URL": url}).exit_code == 0
    out = run("events", env={"RECEIVER_DATABASE_URL": url})
    assert out.exit_code == 0, out.output


@pytest.mark.postgres
def test_a_postgres_refusal_names_the_cause_without_the_password(
    in_empty_folder: Path, postgres_cluster: PostgresCluster
) -> None:
    # A real server, a real password in the URL, a database that does not exist.
    url = postgres_cluster.database_url("no_such_database")
    user, rest = url.removeprefix("postgresql://").split("@", 1)
    url = f"postgresql://{user.split(':')[0]}:{PASSWORD}@{rest}"
    out = run("events", env={"RECEIVER_DATABASE_URL": url})
    line = assert_one_line_error(out)
    assert "database 'no_such_database'" in line
    assert "does not exist" in line
    assert PASSWORD not in out.output


def test_bad_settings_never_echo_the_value(in_empty_folder: Path) -> None:
    out = run("events", env={"RECEIVER_JOB_LEASE_SECONDS": PASSWORD})
    line = assert_one_line_error(out)
    assert line.startswith("Error: bad settings: RECEIVER_JOB_LEASE_SECONDS:")
    assert PASSWORD not in out.output


def test_unsupported_url_does_not_echo_it(in_empty_folder: Path) -> None:
    out = run("events", env={"RECEIVER_DATABASE_URL": f"mysql://root:{PASSWORD}@db/x"})
    line = assert_one_line_error(out)
    assert "unsupported database URL (scheme 'mysql')" in line
    assert PASSWORD not in out.output


def test_redact_dsn_masks_passwords_and_secret_parameters() -> None:
    url = f"postgresql://bob:{PASSWORD}@db.example:5432,db2:5433/hooks?sslmode=require&password=x"
    assert redact_dsn(url) == (
        "postgresql://bob:***@db.example:5432,db2:5433/hooks?sslmode=require&password=***"
    )
    assert redact_dsn("postgresql:///hooks?host=/run/pg") == "postgresql:///hooks?host=/run/pg"
    assert redact_dsn("sqlite:///./data/receiver.db") == "sqlite:///./data/receiver.db"
    assert redact_dsn("postgresql://u:p@[::1/db") == "postgresql://u:***@[::1/db"
    assert dsn_target(url) == "database 'hooks' on db.example:5432,db2:5433"
    quoted = f"failed for postgresql://bob:{PASSWORD}@h/db ({PASSWORD})"
    assert PASSWORD not in redact_text(quoted, url)
